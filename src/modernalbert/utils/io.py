"""Atomic writes: a file or folder appears under its final name complete, or not at all; and UTF-8 reads that name
the file, line and byte of any byte that is not UTF-8.

Everything is written under a temporary name in the destination's own folder (same file system, so the final
``os.replace`` is atomic) and renamed into place only when complete; on any error the temporary is removed and an
earlier version stays untouched. What lands in place has the permissions a plain ``open`` / ``mkdir`` gives (0644
files, 0755 folders under the usual umask 022: another user or a serving process can read it), never the owner-only
0600 / 0700 of a temporary file: temporaries are created with plain ``open`` / ``mkdir``, and whatever a writer left
owner-only is given the usual permissions before the rename (:func:`usual_permissions`). The latter matters because
``safetensors`` (0.8) writes every file through a private temporary (0600), so ``save_pretrained``'s own
``model.safetensors`` is 0600 (safetensors/safetensors#782).

Every reader of text data (GLUE TSV, SQuAD JSON, BEIR JSON Lines and qrels, the Rotten Tomatoes CSV, calibration and
corpus text) decodes through :func:`read_lines`, :func:`read_text` or :func:`decode_utf8`, so a file that is not
UTF-8 fails with ``<file>, line <n> (byte <offset>): not UTF-8 ...`` and the fix, never with a bare
``UnicodeDecodeError`` or a silently replaced character. A leading byte-order mark is dropped (MRPC's files have one).

Around the writes: :func:`reporting_disk_full` turns a full disk into one message that names the folder (whatever
the writer's own wording, e.g. torch's or safetensors'), and :func:`hash_file` / :func:`fsync_folder` checksum and
flush what must survive a crash once declared complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# A full disk or an exhausted quota, as the OS reports it (Python's OSError.errno) and as native writers word it
# (safetensors' Rust writer: "No space left on device (os error 28)").
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXTS = tuple(text for n in sorted(_DISK_FULL_ERRNOS) for text in (f"(os error {n})", os.strerror(n)))


def _umask() -> int:
    # Read without changing it where the kernel tells (Linux >= 4.7), so no other thread ever sees umask 0.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything below it) the permissions a plain ``open`` / ``mkdir``
    gives under the process's umask: ``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders.

    Args:
        path: What a writer just wrote (before it is renamed into place).
    """
    path, mask = Path(path), _umask()
    targets = [path, *path.rglob("*")] if path.is_dir() else [path]
    for target in targets:
        if not target.is_symlink():
            target.chmod((0o777 if target.is_dir() else 0o666) & ~mask)


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
        usual_permissions(tmp)
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
        usual_permissions(tmp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)


def _not_utf8(path: str | os.PathLike, line: int, offset: int, err: UnicodeDecodeError) -> ValueError:
    byte = err.object[err.start:err.start + 1].hex()
    return ValueError(f"{path}, line {line} (byte {offset}): not UTF-8 text ({err.reason}: byte 0x{byte}); save the "
                      "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE`) or fix that line.")


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """``data`` (the whole content of ``path``) as text, a leading byte-order mark dropped.

    Raises:
        ValueError: A byte that is not UTF-8, with the file, its line and its byte offset.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, data.count(b"\n", 0, err.start) + 1, err.start, err) from None
    return text.removeprefix("\ufeff")


def read_text(path: str | os.PathLike) -> str:
    """The content of a UTF-8 text file (see :func:`decode_utf8`)."""
    return decode_utf8(Path(path).read_bytes(), path)


def read_lines(path: str | os.PathLike, stream: IO[bytes] | None = None) -> Iterator[str]:
    """The lines of a UTF-8 text file, one at a time, line ends kept and a leading byte-order mark dropped (for
    ``csv.reader`` and files too large to hold twice).

    Args:
        path: The file (named in errors).
        stream: An open binary stream of it (e.g. ``bz2.open(path, "rb")``); default: the file itself.

    Raises:
        ValueError: A byte that is not UTF-8, with the file, its line and its byte offset.
    """
    with (open(path, "rb") if stream is None else contextlib.nullcontext(stream)) as fh:
        offset = 0
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, number, offset + err.start, err) from None
            offset += len(raw)
            yield line.removeprefix("\ufeff") if number == 1 else line
def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a full disk or an exhausted quota.

    Python reports these as ``OSError`` with ``errno.ENOSPC`` / ``errno.EDQUOT``; native writers (safetensors)
    raise their own error types with the OS's text, and PyTorch DCP gathers every process's error into one.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(err) for text in _DISK_FULL_TEXTS):
            return True
        todo += [err.__cause__, err.__context__]
        todo += [failure[0] for failure in getattr(err, "failures", {}).values()]  # DCP: {rank: (error, trace)}
    return False


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space (bytes) on the file system of ``folder`` (or of its nearest existing parent); None if unknown."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextlib.contextmanager
def reporting_disk_full(folder: str | os.PathLike, what: str, advice: str = "") -> Iterator[None]:
    """Turn a full disk while writing ``what`` into ``folder`` into one ``OSError(ENOSPC)`` that says so.

    Args:
        folder: Where the data was being written (named in the message, with its free space).
        what: What was being written ("checkpoint step-0000100").
        advice: What else the reader should know (appended to the message).

    Raises:
        OSError: ``errno.ENOSPC``, from the original error, when the block failed for a full disk or quota; any other
            error passes unchanged.
    """
    try:
        yield
    except BaseException as err:  # DCP's CheckpointException derives from BaseException
        if not is_disk_full(err):
            raise
        free = free_bytes(folder)
        room = f"{free:,} bytes free" if free is not None else "free space unknown"
        raise OSError(errno.ENOSPC, f"Disk full: {what} could not be written to {folder} ({room}). Free space "
                      f"there or write elsewhere. {advice}".rstrip()) from err


def hash_file(path: str | os.PathLike, digest: Any = None, *, fsync: bool = False) -> Any:
    """Feed a file's bytes into ``digest`` (a new SHA-256 when None) in 1 MiB chunks and return it.

    Args:
        path: The file.
        digest: A ``hashlib`` object to update.
        fsync: Also flush the file to disk (a checkpoint must survive a power loss once declared complete).
    """
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (new and renamed names) to disk (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NumPy and torch scalars as floats); returns the path."""
    return write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


__all__ = ["atomic_folder", "atomic_path", "atomic_write", "decode_utf8", "read_lines", "read_text", "staging_folder",
           "usual_permissions", "write_json", "write_text"]
__all__ = ["atomic_folder", "atomic_path", "atomic_write", "free_bytes", "fsync_folder", "hash_file", "is_disk_full",
           "reporting_disk_full", "staging_folder", "write_json", "write_text"]
