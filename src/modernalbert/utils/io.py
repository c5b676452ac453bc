"""Atomic writes: a file or folder appears under its final name complete, or not at all.

Everything is written under a temporary name in the destination's own folder (same file system, so the final
``os.replace`` is atomic) and renamed into place only when complete; on any error the temporary is removed and an
earlier version stays untouched. Temporaries are created with plain ``open`` / ``mkdir``, so what ends up in place
has the permissions ``save_pretrained``'s files have (0644 files, 0755 folders under the usual umask 022), not the
owner-only 0600 / 0700 of ``tempfile.mkstemp`` / ``mkdtemp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _temporary_name(path: Path) -> Path:
    # Hidden, unique per process and call, and recognisable: ".model.safetensors.1234.9f3a1c2e.tmp".
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``safetensors.save_file``,
    ``Figure.savefig``, ``torch.save``); renamed to ``path`` when the block ends without error.

    Args:
        path: The destination file (its folder is created).
        fsync: Flush the file to disk before the rename (for caches other processes may read at once).

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """An open file that replaces ``path`` when the block ends without error.

    Args:
        path: The destination file (its folder is created).
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: Text encoding (ignored for binary modes).

    Yields:
        The open file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}.")
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else encoding) as fh:
        yield fh


@contextlib.contextmanager
def staging_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh, empty folder beside ``path`` (same file system: what is moved out of it moves atomically), removed
    with whatever is left in it when the block ends.

    Yields:
        The staging folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """An empty staging folder that replaces the folder ``path`` when the block ends without error.

    An existing folder at ``path`` is removed just before the rename (so readers see the old or the new folder,
    and for an instant none); the staging folder is removed on error.

    Yields:
        The staging folder to fill.
    """
    path = Path(path)
    with staging_folder(path) as tmp:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NumPy and torch scalars as floats); returns the path."""
    return write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


__all__ = ["atomic_folder", "atomic_path", "atomic_write", "staging_folder", "write_json", "write_text"]
