"""Writing files the way every command should: atomically, with the user's umask, and cleaned up.

- ``atomic_write``: temp file beside the destination, renamed over it when complete; the temp file
  is removed on any error or interrupt. Published files get ``0666 & ~umask`` (``mkstemp`` would
  leave them 0600, unreadable to a service account).
- ``publish_modes``: the same for a folder tree made with ``mkdtemp`` (0700).
- Temporary names carry the creating process id (``pid_prefix``), so a later run can tell a
  leftover of a dead process (``sweep_stale``) from one that another live run is still writing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from farl_edge.errors import UserError

_PID_TAG = re.compile(r"\.p(\d+)-")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def publish_modes(root: str | Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``mkdir``/``open`` would have."""
    root = Path(root)
    fmode, dmode = file_mode(), dir_mode()
    if root.is_file():
        os.chmod(root, fmode)
        return
    os.chmod(root, dmode)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, dmode if path.is_dir() else fmode)


def pid_prefix(name: str, kind: str = "partial") -> str:
    """Prefix of a temporary sibling of ``name`` owned by this process: ``.NAME.KIND.pPID-``."""
    return f".{name}.{kind}.p{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: str | Path, name: str, kinds: tuple[str, ...] = ("partial", "old")) -> list[Path]:
    """Remove temporary siblings of ``name`` in ``folder`` whose owning process is gone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for kind in kinds:
        for path in folder.glob(f".{glob_escape(name)}.{kind}.p*-*"):
            m = _PID_TAG.match(path.name[len(f".{name}.{kind}"):])
            if m and not _alive(int(m.group(1))):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def atomic_write_with(path: str | Path, write: Callable[[str], object]) -> Path:
    """Let ``write(tmp)`` fill a temporary sibling of ``path`` (``torch.save``, ``safetensors``' ``save_file``
    …), then rename it over ``path``; nothing half-written is ever at ``path``, and the temporary file is
    removed on any error or interrupt."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=pid_prefix(path.name))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling; nothing half-written is ever at ``path``."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data))


def atomic_write_json(path: str | Path, obj, **dump_kwargs) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return atomic_write(path, json.dumps(obj, **dump_kwargs) + "\n")


def creatable_in(path: str | Path, what: str) -> Path:
    """The nearest existing folder above ``path``, where it would be created; a one-line UserError
    (``what``: how the message names ``path``) when that is a file or not writable."""
    probe = Path(path).parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what}: {probe} is not a folder: it is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {probe} is not writable")
    return probe


def check_output_file(path: str | Path, flag: str = "--json", *, force: bool = True) -> Path:
    """One-line UserError when ``path`` cannot be a file we write (checked before long work); with
    ``force`` False, also when it already exists."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'result.json'}")
    if not force and path.exists():
        raise UserError(f"{flag} {path} exists; pass --force to overwrite it, or choose another file")
    creatable_in(path, f"{flag} {path}")
    return path
