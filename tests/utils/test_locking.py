"""Folder locks: one holder at a time, named to whoever finds the folder locked; a lock left by a process that died is
taken over, with its record."""

import os
import signal
import socket
import time

import pytest

from modernalbert.utils.locking import FolderLock, FolderLockedError


def _hold_in_child(folder, then):
    """Fork a child that takes the lock, signals, then runs ``then()``; returns (pid, pipe to wait on)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            lock = FolderLock(folder, purpose="test run")
            lock.acquire()
            os.write(ready_w, b"x")
            then()
            lock.release()  # a holder that finishes cleans up
        finally:
            os._exit(0)
    assert os.read(ready_r, 1) == b"x"
    return pid


def test_a_held_lock_names_its_holder_and_fails_at_once(tmp_path):
    go_r, go_w = os.pipe()
    pid = _hold_in_child(tmp_path, lambda: os.read(go_r, 1))  # holds until told to go
    try:
        with pytest.raises(FolderLockedError) as err:
            FolderLock(tmp_path, purpose="test run").acquire()
        message = str(err.value)
        assert f"pid {pid} on host {socket.gethostname()}, started " in message
        assert str(tmp_path) in message and "another test run" in message and "use another folder" in message
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
    with FolderLock(tmp_path, purpose="test run") as lock:  # released by a holder that finished: no takeover
        assert lock.is_locked and lock.holder().pid == os.getpid()
    assert not lock.is_locked and lock.holder() is None


def test_a_lock_left_by_a_killed_process_is_taken_over_with_its_record(tmp_path):
    pid = _hold_in_child(tmp_path, lambda: os.kill(os.getpid(), signal.SIGKILL))
    os.waitpid(pid, 0)
    lock = FolderLock(tmp_path, purpose="test run")
    assert lock.holder().pid == pid  # its record is still there: it could not clean up
    left = lock.acquire()
    try:
        assert left.pid == pid and left.host == socket.gethostname()
        assert lock.holder().pid == os.getpid()
    finally:
        lock.release()


def test_waiting_for_a_lock(tmp_path):
    pid = _hold_in_child(tmp_path, lambda: time.sleep(0.3))  # holds, then exits (releasing)
    waited = []
    lock = FolderLock(tmp_path, purpose="test run")
    try:
        assert lock.acquire(wait=True, on_wait=waited.append) is None  # returns once the holder released it
    finally:
        lock.release()
        os.waitpid(pid, 0)
    assert len(waited) == 1 and f"pid {pid}" in waited[0] and "another test run" in waited[0]
