"""Exclusive locks on folders that a process works in for a long time (a training run's output folder, a cache entry
being fetched), with a record that names the holder.

The lock itself is :class:`filelock.FileLock`: ``flock`` where the file system supports it, so the kernel releases it
when the holder dies, however it dies (filelock falls back to its own marker file, which peers on the same host
reclaim from a dead holder, where ``flock`` is missing). Beside the lock file the holder keeps a small JSON record
(pid, host, start time, command line): whoever finds the folder locked learns who holds it, and whoever takes over a
lock left by a process that died learns whose it was. The record is removed before the lock is released, so a record
found by a new holder was left by a process that did not finish.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .io import write_json


class FolderLockedError(RuntimeError):
    """The folder is locked by another live process (the message names it)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: process id, host name, when it took the lock (ISO 8601, local time) and its command."""

    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def this_process(cls) -> LockHolder:
        return cls(os.getpid(), socket.gethostname(), datetime.now().astimezone().isoformat(timespec="seconds"),
                   " ".join(sys.argv)[:300])

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started} ({self.command})"


class FolderLock:
    """An exclusive lock on a folder, held by one process at a time.

    Args:
        folder: The folder (created when missing); the lock file and the holder record are written into it.
        name: The lock file's name (the record is ``name + ".json"``).
        purpose: What holds it, for messages ("pretraining run", "fetch of kjv").

    Use as a context manager, or :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, folder: str | os.PathLike, *, name: str = ".lock", purpose: str = "process") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.record = self.folder / f"{name}.json"
        self.purpose = purpose
        self._lock: Any = None

    def holder(self) -> LockHolder | None:
        """The record of the process that holds (or last held, if it died) the lock; None when there is none."""
        try:
            return LockHolder(**json.loads(self.record.read_text()))
        except (OSError, ValueError, TypeError):  # absent, being written, or not ours
            return None

    def acquire(self, *, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> LockHolder | None:
        """Take the lock.

        Args:
            wait: Wait for the holder to finish instead of failing at once.
            on_wait: Called once with a message naming the holder before waiting.

        Returns:
            The record left by a process that died while holding the lock (now taken over), or None.

        Raises:
            FolderLockedError: The lock is held and ``wait`` is False; the message names the holder and the way out.
        """
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            message = self._held_message()
            if not wait:
                raise FolderLockedError(message) from None
            if on_wait is not None:
                on_wait(message)
            lock.acquire(timeout=-1)
        left = self.holder()
        write_json(self.record, asdict(LockHolder.this_process()))
        self._lock = lock
        return left if left is not None and left.pid != os.getpid() else None

    def _held_message(self) -> str:
        holder = self.holder()
        who = holder.describe() if holder else f"a process that has not written {self.record.name} yet"
        return (f"{self.folder} is in use by another {self.purpose}: {who} holds its lock {self.path}. Wait for it "
                "to finish, stop it, or use another folder.")

    def release(self) -> None:
        """Release the lock (a no-op when it is not held)."""
        if self._lock is None:
            return
        self.record.unlink(missing_ok=True)  # before the lock: a record found by the next holder means a crash
        self._lock.release()
        self._lock = None

    @property
    def is_locked(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["FolderLock", "FolderLockedError", "LockHolder"]
