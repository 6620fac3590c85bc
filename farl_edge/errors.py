"""The errors farl-edge raises on purpose.

Every command turns a :class:`FarlEdgeError` into one line on stderr and exit status 2; anything
else is a bug and keeps its traceback. The subclasses also derive from ``ValueError`` (as they did
before this base existed), so ``except ValueError`` in callers keeps working.
"""
from __future__ import annotations


class FarlEdgeError(Exception):
    """Base of the errors that describe a problem with what was asked, not a bug."""


class UserError(FarlEdgeError, ValueError):
    """What the user asked for cannot be done as asked: a flag, a path, an input, a config."""
