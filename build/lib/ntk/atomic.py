"""Atomic file writes: a file is either its old content or its whole new content, never torn.

Every writer here goes through :func:`replacing`: the new content is written to a temporary
file in the same directory (a unique hidden name, so concurrent writers never share it),
flushed and ``fsync``-ed, renamed onto the target with ``os.replace`` (atomic on POSIX), and
the directory is ``fsync``-ed so that the rename itself survives a power loss. Filesystems
that cannot ``fsync`` a directory are tolerated (the rename is still atomic). If the writer
raises, the temporary file is removed and the target is untouched.

``exclusive=True`` publishes with ``link(2)`` instead of ``os.replace``: the write fails with
``FileExistsError`` if the target exists, so of several concurrent creators exactly one wins.

Example:
  >>> import json, pathlib, tempfile
  >>> from ntk import atomic
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.json"
  >>> atomic.write_json(path, {"epoch": 3})
  >>> json.loads(path.read_text())
  {'epoch': 3}
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "fsync_dir",
    "replacing",
    "save_npy",
    "save_npz",
    "write_bytes",
    "write_json",
    "write_text",
    "write_with",
]

PathLike = str | os.PathLike


def _fsync(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """``fsync`` of the directory ``path`` (makes a rename in it durable); a filesystem that
    does not support it is ignored."""
    with contextlib.suppress(OSError):
        _fsync(path)


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def replacing(path: PathLike, *, exclusive: bool = False) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; fill it in the ``with`` body.

    On a clean exit the temporary file is ``fsync``-ed and renamed onto ``path`` (with
    ``exclusive``: linked, raising ``FileExistsError`` if ``path`` exists), then the
    directory is ``fsync``-ed. On an exception the temporary file is removed.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        if exclusive:
            os.link(tmp, path)  # atomic, and fails if another creator got there first
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_with(
    path: PathLike, write: Callable[[IO], Any], *, binary: bool = True, exclusive: bool = False
) -> None:
    """Atomically replaces ``path`` with what ``write(f)`` writes to the open file ``f``
    (binary, or UTF-8 text with ``binary=False``)."""
    with replacing(path, exclusive=exclusive) as tmp:
        mode = "xb" if binary else "x"
        with open(tmp, mode, **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)


def write_bytes(path: PathLike, data: bytes, *, exclusive: bool = False) -> None:
    """Atomically replaces ``path`` with ``data``."""
    write_with(path, lambda f: f.write(data), exclusive=exclusive)


def write_text(path: PathLike, text: str, *, exclusive: bool = False) -> None:
    """Atomically replaces ``path`` with ``text`` (UTF-8)."""
    write_with(path, lambda f: f.write(text), binary=False, exclusive=exclusive)


def write_json(
    path: PathLike,
    obj: Any,
    *,
    indent: int | None = 1,
    sort_keys: bool = False,
    exclusive: bool = False,
) -> None:
    """Atomically replaces ``path`` with ``obj`` as JSON (``json.dump`` with ``indent`` and
    ``sort_keys``)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    write_text(path, text, exclusive=exclusive)


def save_npy(path: PathLike, array: Any) -> None:
    """Atomically replaces ``path`` with ``array`` in ``.npy`` format (no pickle)."""
    write_with(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def save_npz(path: PathLike, arrays: Mapping[str, Any], *, compressed: bool = False) -> None:
    """Atomically replaces ``path`` with the named ``arrays`` as an ``.npz`` (no pickle;
    ``np.savez_compressed`` with ``compressed``). The name is used as given (NumPy's own
    savers would append ``.npz``)."""
    save = np.savez_compressed if compressed else np.savez
    chosen = {k: np.asarray(v) for k, v in arrays.items()}
    write_with(path, lambda f: save(f, allow_pickle=False, **chosen))
