"""Export FaRL models to edge formats, with validation against PyTorch.

``export(ExportRequest(model=..., target=..., precision=...))`` (see :mod:`farl_edge.export.pipeline`
and :mod:`farl_edge.export.request`); formats in
:data:`farl_edge.export.formats.FORMATS`. Heavy libraries load only when an export runs.
"""
from __future__ import annotations

from farl_edge.export.formats import FORMATS, Format, get_format, register_format

__all__ = ["export", "ExportRequest", "ParityError", "FORMATS", "Format", "get_format", "register_format"]


def __getattr__(name):
    if name == "export":
        from farl_edge.export.pipeline import export

        return export
    if name == "ExportRequest":
        from farl_edge.export.request import ExportRequest

        return ExportRequest
    if name == "ParityError":
        from farl_edge.export.validate import ParityError

        return ParityError
    raise AttributeError(name)
