"""Fault injection: what real clusters do to a run, and the run neither loses nor mixes up work.

* SIGKILL at a seeded sample of points (ends of steps, and file operations while checkpoints and the final model are
  written: any ``open``, ``write``, rename, ``fsync``, folder creation or removal, native safetensors write), then
  the same command again: it resumes and ends bit-identical to an uninterrupted run.
* Two runs on one output folder: the second stops at once, naming the first (pid, host, start time); the first's
  files are whole.
* A full disk: a small tmpfs, mounted without privileges in a user and mount namespace of its own (the most realistic
  stand-in: the kernel's own ENOSPC, met by whichever writer is writing), filled up by another file at the moment
  a checkpoint or its ``latest`` pointer is written. The run stops naming the folder and the disk; earlier
  checkpoints are intact; once space is freed the same command resumes exactly. Skipped where user namespaces are
  not available.

Runs are forked from this process (imports paid once), killed ones included.
"""

import ctypes
import errno
import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from modernalbert.training import checkpoint as checkpoint_module
from modernalbert.training import trainer as trainer_module
from modernalbert.training.checkpoint import latest_checkpoint, verify_checkpoint
from modernalbert.utils.locking import FolderLockedError
from tests.training.conftest import fork, in_child, recipe, same_weights, train, wait

# File operations a save can die in (C functions, as sys.setprofile reports them).
FILE_OPERATIONS = frozenset({"open", "write", "close", "replace", "rename", "mkdir", "rmdir", "unlink", "fsync",
                             "serialize_file", "rmtree"})
KILLS_PER_SAVE, KILLS_AT_STEPS = 2, 2  # the sample: bounded, seeded, in every save and at step ends


class FaultPoints:
    """Numbers the points where a run can die: the end of every step ("step"), and every file operation while
    checkpoint N is written ("save-N") or the final model ("final")."""

    def __init__(self, kill_at: int | None = None):
        self.points: list[str] = []
        self.phase = ""
        self.kill_at = kill_at

    def hit(self, phase: str) -> None:
        self.points.append(phase)
        if len(self.points) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def _profile(self, frame, event, arg) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) in FILE_OPERATIONS:
            self.hit(self.phase)

    def instrument(self) -> None:
        """Count file operations inside every save (this process only: call it in a forked child)."""
        for name in ("save_checkpoint", "save_final"):
            original = getattr(trainer_module, name)

            def traced(*args, original=original, name=name, **kwargs):
                outer = sys.getprofile(), self.phase  # save_final calls save_checkpoint
                self.phase = f"save-{args[1]}" if name == "save_checkpoint" else "final"
                sys.setprofile(self._profile)
                try:
                    return original(*args, **kwargs)
                finally:
                    sys.setprofile(outer[0])
                    self.phase = outer[1]

            setattr(trainer_module, name, traced)

    def run(self, workspace: Path, out: Path) -> None:
        self.instrument()
        trainer_module.pretrain(recipe(workspace, out), on_step_end=lambda step, losses: self.hit("step"))


def test_sigkill_at_seeded_points_then_resume_is_exact(workspace, reference, tmp_path, capsys):
    points_file = tmp_path / "points.json"

    def count():
        points = FaultPoints()
        points.run(workspace, tmp_path / "count")
        points_file.write_text(json.dumps(points.points))

    assert in_child(count, tmp_path / "count.err") == 0
    phases: dict[str, list[int]] = {}
    for number, phase in enumerate(json.loads(points_file.read_text()), 1):
        phases.setdefault(phase, []).append(number)
    assert sorted(phases) == ["final", "save-10", "save-4", "save-8", "step"] and len(phases["step"]) == 10
    rng = random.Random(16)
    sample = [(point, phase) for phase, numbers in sorted(phases.items())
              for point in rng.sample(numbers, KILLS_AT_STEPS if phase == "step" else KILLS_PER_SAVE)]
    for point, phase in sorted(sample):  # 10 points: 2 in each of the 4 saves, 2 at ends of steps
        out = tmp_path / f"killed-at-{point}"
        pid = fork(lambda point=point, out=out: FaultPoints(kill_at=point).run(workspace, out))
        assert wait(pid) == -signal.SIGKILL, f"point {point} ({phase}) was not reached"
        latest_checkpoint(out)  # the newest checkpoint, if any, verifies: nothing half-written under a final name
        resumed = train(workspace, out)
        said = capsys.readouterr().out
        assert f"took over the lock left by pid {pid}" in said, point
        assert all(resumed[s] == reference["losses"][s] for s in resumed), point  # bit-identical
        assert same_weights(reference["out"] / "final", out / "final"), point
        names = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert names == ["latest", "step-0000008", "step-0000010"], (point, names)  # no leftovers
        assert not list(out.glob(".final*")), point
        for name in names[1:]:
            verify_checkpoint(out / "checkpoints" / name)


def test_a_second_run_on_a_folder_in_use_stops_at_once(workspace, reference, tmp_path):
    out = tmp_path / "run"
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def first_run():
        def pause_at_step_2(step, losses):
            if step == 2:
                os.write(ready_w, b"x")
                os.read(go_r, 1)  # holds the folder until the second run has tried

        trainer_module.pretrain(recipe(workspace, out), on_step_end=pause_at_step_2)

    pid = fork(first_run, tmp_path / "first.err")
    try:
        assert os.read(ready_r, 1) == b"x"
        with pytest.raises(FolderLockedError) as err:
            train(workspace, out)
    finally:
        os.write(go_w, b"x")
        status = wait(pid)
    assert status == 0, (tmp_path / "first.err").read_text() if status else ""
    message = str(err.value)
    assert f"{out} is in use by another pretraining run: pid {pid} on host " in message and ", started " in message
    # The first run's files are its own and whole: same final weights as the reference, one log, no foreign step.
    assert same_weights(reference["out"] / "final", out / "final")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "eval_mlm" in r) for r in records] == \
        [(2, False), (4, False), (5, True), (6, False), (8, False), (10, False), (10, True)]
    for ckpt in (out / "checkpoints").glob("step-*"):
        verify_checkpoint(ckpt)


CLONE_NEWNS, CLONE_NEWUSER, MS_REC, MS_PRIVATE = 0x00020000, 0x10000000, 0x4000, 1 << 18


def _own_tmpfs(target: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` on ``target``, visible to this process only (it must be single-threaded: a forked
    child): a new user namespace (where this process is root) with a new mount namespace, as ``unshare -Urm``."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()

    def check(result: int, what: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    target.mkdir(parents=True, exist_ok=True)
    check(libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", 0, f"size={size}".encode()), "mount tmpfs")


def _fill(disk: Path, leave: int = 0) -> None:
    """Another file takes all the free space of ``disk`` but ``leave`` bytes."""
    st = os.statvfs(disk)
    with (disk / "filler").open("ab") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def _full_disk_case(workspace, reference, out: Path, disk: Path, module, name: str, filling) -> dict:
    """Run with ``module.name`` replaced by ``filling(original)`` (which fills the disk at some point): the run must
    stop; then free the space and run again: it must resume and end as the uninterrupted run."""
    original = getattr(module, name)
    setattr(module, name, filling(original))
    try:
        train(workspace, out)
        return {"refused": False}
    except OSError as err:
        ckpts = out / "checkpoints"
        latest = ckpts / "latest"
        result = {"refused": True, "errno": err.errno, "message": str(err), "writer": type(err.__cause__).__name__,
                  "files": sorted(p.name for p in ckpts.iterdir()),
                  "latest": json.loads(latest.read_text())["checkpoint"] if latest.exists() else None}
    finally:
        setattr(module, name, original)
    (disk / "filler").unlink()  # the user frees space
    result["resumes_from"] = latest_checkpoint(out).name
    resumed = train(workspace, out)
    result["exact"] = same_weights(reference["out"] / "final", out / "final") and min(resumed) == 5 and \
        all(resumed[s] == reference["losses"][s] for s in resumed)
    return result


def test_a_full_disk_stops_the_run_naming_the_folder_and_loses_nothing(workspace, reference, tmp_path):
    disk, report = tmp_path / "disk", tmp_path / "report.json"

    def on_a_small_disk():
        try:
            _own_tmpfs(disk, "16m")
        except OSError as err:
            report.write_text(json.dumps({"unavailable": str(err)}))
            return

        def pointer_on_full_disk(write_json):  # 1. as the first pointer is written (its checkpoint is whole)
            def write(path, obj):
                if Path(path).name == "latest":
                    _fill(disk)
                return write_json(path, obj)
            return write

        def save_on_full_disk(leave):  # 2. while the second checkpoint is written
            def filling(save_checkpoint):
                def save(output_dir, step, **kwargs):
                    if step == 8:
                        _fill(disk, leave=leave)
                    return save_checkpoint(output_dir, step, **kwargs)
                return save
            return filling

        # The DCP state file is written first (Python's writes), the gathered weights later (safetensors' own), after
        # save_pretrained's small files (config, the model's code): leave room for those so the weights hit the wall.
        step8 = reference["out"] / "checkpoints" / "step-0000008"
        state = next((step8 / "state").iterdir()).stat().st_size
        small = sum(-(-p.stat().st_size // 4096) * 4096 for p in step8.iterdir()
                    if p.is_file() and p.suffix != ".safetensors")  # tmpfs allocates whole pages
        results = {
            "pointer": _full_disk_case(workspace, reference, disk / "a", disk, checkpoint_module, "write_json",
                                       pointer_on_full_disk),
            "checkpoint": _full_disk_case(workspace, reference, disk / "b", disk, trainer_module, "save_checkpoint",
                                          save_on_full_disk(256 * 1024)),
            "weights": _full_disk_case(workspace, reference, disk / "c", disk, trainer_module, "save_checkpoint",
                                       save_on_full_disk(state + small + 128 * 1024)),
        }
        report.write_text(json.dumps(results))

    assert in_child(on_a_small_disk, tmp_path / "child.err") == 0, (tmp_path / "child.err").read_text()
    results = json.loads(report.read_text())
    if "unavailable" in results:
        pytest.skip(f"no user namespaces here for a private tmpfs ({results['unavailable']})")
    pointer = results["pointer"]
    assert pointer["refused"] and pointer["errno"] == errno.ENOSPC
    assert pointer["message"].startswith(f"[Errno {errno.ENOSPC}] Disk full: the pointer latest to step-0000004 "
                                         f"could not be written to {disk / 'a' / 'checkpoints'} (")
    assert "step-0000004 is complete; resuming finds it" in pointer["message"]
    assert pointer["files"] == ["step-0000004"] and pointer["resumes_from"] == "step-0000004" and pointer["exact"]
    for case, run, writer in (("checkpoint", "b", "CheckpointException"), ("weights", "c", "SafetensorError")):
        ckpt = results[case]  # the disk fills in DCP's writes, or in safetensors' (their own errors, worded their way)
        assert ckpt["writer"] == writer
        assert ckpt["refused"] and ckpt["errno"] == errno.ENOSPC and "unexpected pos" not in ckpt["message"]
        assert ckpt["message"].startswith(f"[Errno {errno.ENOSPC}] Disk full: checkpoint step-0000008 could not be "
                                          f"written to {disk / run / 'checkpoints'} (")
        assert "Nothing of step-0000008 was kept; the last checkpoint is still step-0000004." in ckpt["message"]
        assert ckpt["files"] == ["latest", "step-0000004"] and ckpt["latest"] == "step-0000004"  # no half-written
        assert ckpt["resumes_from"] == "step-0000004" and ckpt["exact"]
