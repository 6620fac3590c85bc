"""Small helpers shared across the package, one job each.

- ``IMAGE_SUFFIXES``: the still-image file types every command reads (OpenCV decodes all of them).
- ``package_version``: an installed distribution's version, or a default when it is not installed.
- ``quiet``: silence the chatty converters (progress bars on stdout, warnings, log records).
- ``run_fixed_batch``: run a fixed-batch model on any number of inputs (chunks, the last one padded).

Files are written by :mod:`farl_edge.fileio`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def package_version(dist: str, default: str | None = None) -> str | None:
    """``importlib.metadata.version(dist)``, or ``default`` when ``dist`` is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return default


@contextlib.contextmanager
def quiet(logger: str | None = None, *, stderr: bool = False) -> Iterator[None]:
    """Hide stdout (and ``stderr`` when asked), warnings, and records below ERROR of ``logger``
    (the root logger when None) for the duration of the block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def run_fixed_batch(run: Callable[[np.ndarray], dict[str, np.ndarray]], batch: np.ndarray,
                    fixed: int) -> dict[str, np.ndarray]:
    """``run`` takes exactly ``fixed`` inputs: call it on chunks of ``batch``, the last one padded with
    zeros, and return the outputs of the real inputs only, in order."""
    n = batch.shape[0]
    if n == fixed:
        return run(batch)
    parts: dict[str, list] = {}
    for start in range(0, n, fixed):
        chunk = batch[start:start + fixed]
        m = chunk.shape[0]
        if m < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - m, *chunk.shape[1:]), chunk.dtype)])
        for k, v in run(chunk).items():
            parts.setdefault(k, []).append(v[:m])
    return {k: np.concatenate(v) for k, v in parts.items()}
