"""Training checkpoints that are complete, verified and exact, on one process or many (DDP, FSDP).

Layout of ``<output_dir>/checkpoints/``::

    step-0000100/            one complete checkpoint
        model.safetensors    the student, gathered (``save_pretrained``: loadable as a model, with config.json)
        config.json
        distill.safetensors  the learned distillation projections, gathered (absent when there are none)
        state/               the model and optimizer state as the processes hold it (sharded under FSDP), written by
                             PyTorch distributed checkpointing (DCP) as safetensors, one file per process
        optimizer.json       the optimizer's hyper-parameters per parameter (its param groups: no tensors)
        rng-rank0.safetensors, rng-rank0.json   each process's random states (torch, CUDA, numpy, python)
        buffers-rank0.safetensors   each process's module buffers (FSDP does not synchronise them: the routing
                             moving averages are per-process statistics there, of which DCP keeps one copy)
        trainer_state.json   step, data position, tokens seen, process count, recipe
        manifest.json        the SHA-256 and size of every file above: written last
    latest                   the name of the newest checkpoint (for people and tools; resuming does not need it)

Saving (every process takes part; the trainer has checked weights and optimizer state finite): everything is written
into a staging folder ``.step-0000100.<run id>.tmp`` (a name no other run uses), the manifest last; the files are
flushed to disk, the folder is renamed into place, then ``latest`` is replaced. A save that fails (a full disk) or is
killed at any point leaves every earlier checkpoint intact; a failed save removes its staging folder. Superseded
checkpoints are renamed to hidden names before they are deleted, so a half-deleted one is never taken for one.

Resuming: :func:`find_checkpoint` takes the newest ``step-N`` folder (and says so when ``latest`` is missing, damaged
or names another); :func:`verify_checkpoint` checks every file against the manifest and refuses what is missing,
altered or inconsistent, naming the file and the way out; :func:`load_checkpoint` restores model, optimizer and RNG.

Why DCP's safetensors format (``HuggingFaceStorageWriter`` / ``Reader``) rather than DCP's default: the default keeps
its metadata in a pickle read with ``pickle.load``, which can execute code; loading here never does.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException

from ..utils.io import atomic_path, fsync_folder, hash_file, reporting_disk_full, usual_permissions, write_json

LATEST = "latest"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.json"
STATE = "state"
TRAINER_KEYS = ("step", "data", "tokens_seen", "world_size")
_STEP = re.compile(r"step-(\d+)")
_LEFTOVER = re.compile(r"\.step-\d+\..+\.(tmp|deleting)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: missing, damaged or inconsistent (the message names the file and
    the way out)."""


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step a checkpoint folder's name says (``step-0000100`` -> 100), or None for another name."""
    match = _STEP.fullmatch(Path(path).name)
    return int(match[1]) if match else None


def checkpoints(output_dir: str | os.PathLike) -> dict[int, Path]:
    """Every ``step-N`` folder of a run, by step (complete or not: only a verification tells)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return {}
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return dict(sorted((step, path) for step, path in found if step is not None))


# ---------------------------------------------------------------------------------------------------- states


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states as (tensors, JSON-able values)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(gauss)],
                     "python": [py_version, list(py_state), py_gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = values["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, py_gauss = values["python"]
    random.setstate((version, tuple(state), py_gauss))


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Flat optimizer state: "state.<parameter name>.<statistic>" tensors, "param_groups.<parameter name>.<key>" values.
    return StateDictOptions(flatten_optimizer_state_dict=True)


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's state as DCP sees them (``get_state_dict``): canonical parameter names
    (without DDP / FSDP wrappers), tensors as each process holds them (``DTensor`` shards under FSDP), the optimizer
    state flattened by parameter name. Every process calls it (it is collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=_options())


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this process


def nonfinite(*states: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors (this process's shards) that hold a NaN or an infinity."""
    return [name for state in states for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(_local(t)).all())]


def _dcp_tensors(model_state: dict[str, Any], optim_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What DCP writes: every tensor once, under its first name (a tied weight has several; safetensors refuses to
    write one storage twice), the model's prefixed ``model.`` and the optimizer's ``optimizer.``."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    for prefix, state in (("model.", model_state), ("optimizer.", optim_state)):
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                continue
            local = _local(t)
            if local.numel():  # empty shards share the null pointer without being aliases
                key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape), local.dtype)
                if key in seen:
                    continue
                seen.add(key)
            out[prefix + name] = t
    return out


@contextlib.contextmanager
def _dcp_quietly() -> Iterator[None]:
    # One process without a process group is a case DCP supports; it warns on every call that it assumes it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


# ------------------------------------------------------------------------------------------------------ save


def _together(accelerator: Any, work: Callable[[], None]) -> None:
    """Run ``work`` on every process and fail on every process when it failed on one (no process is left waiting
    in a collective for one that gave up)."""
    error: BaseException | None = None
    try:
        work()
    except (Exception, CheckpointException) as err:  # DCP's errors derive from BaseException
        error = err
    failed = error is not None
    if accelerator.num_processes > 1:
        flag = torch.tensor(float(failed), device=accelerator.device)
        failed = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("Another process failed while writing the checkpoint (its error says why).")


def save_checkpoint(output_dir: str | os.PathLike, step: int, *, accelerator: Any, state: tuple[dict, dict],
                    buffers: dict[str, torch.Tensor], student: Any,
                    gathered: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]], trainer_state: dict[str, Any],
                    run_id: str, keep: int) -> Path:
    """Write checkpoint ``step`` (every process calls it).

    Args:
        output_dir: The run's folder.
        step: Optimisation steps done.
        accelerator: The run's ``accelerate.Accelerator`` (rank, process count, collectives).
        state: :func:`training_state` of the model and optimizer (written by every process with DCP).
        buffers: This process's module buffers (written by every process to its own file).
        student: The student model (its ``save_pretrained`` writes the gathered weights and config).
        gathered: The full student state and the projections' (written by the main process).
        trainer_state: Data position, counters and recipe (``step`` and ``world_size`` are added).
        run_id: A name unique to this run, for the staging folder.
        keep: How many checkpoints to keep (older ones are deleted once this one is in place).

    Returns:
        The checkpoint folder.

    Raises:
        OSError: ``ENOSPC`` when the disk filled up (the message names the folder; earlier checkpoints are intact).
    """
    root, name = checkpoint_dir(output_dir), checkpoint_name(step)
    staging, final = root / f".{name}.{run_id}.tmp", root / name
    main = accelerator.is_main_process
    previous = _latest_text(root) if main else ""
    with reporting_disk_full(root, f"checkpoint {name}", f"Nothing of {name} was kept; {previous}"):
        _together(accelerator, lambda: _stage(root, staging, final) if main else None)
        try:
            _together(accelerator, lambda: _write(staging, step, accelerator, state, buffers, student, gathered,
                                                  trainer_state))
            _together(accelerator, lambda: _seal(staging, step, accelerator.num_processes) if main else None)
        except BaseException:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            raise
    advice = f"{name} is complete; resuming finds it even if {LATEST} is stale."
    with reporting_disk_full(root, f"the pointer {LATEST} to {name}", advice):
        _together(accelerator, lambda: _publish(root, staging, final, keep, run_id) if main else None)
    return final


def _latest_text(root: Path) -> str:
    done = checkpoints(root.parent)
    return f"the last checkpoint is still {done[max(done)].name}." if done else "no checkpoint was written before."


def _stage(root: Path, staging: Path, final: Path) -> None:
    if final.exists():  # setup refuses to resume where a later checkpoint exists: this is a bug, never a user's case
        raise FileExistsError(f"{final} exists: a run never overwrites a checkpoint.")
    root.mkdir(parents=True, exist_ok=True)
    staging.mkdir()


def _write(staging: Path, step: int, accelerator: Any, state: tuple[dict, dict], buffers: dict[str, torch.Tensor],
           student: Any, gathered: tuple[dict, dict], trainer_state: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    model_state, optim_state = state
    rank = accelerator.process_index
    # Each process writes its own shard file (save_distributed); replicated tensors are written once.
    with _dcp_quietly():
        dcp.save(_dcp_tensors(model_state, optim_state),
                 storage_writer=HuggingFaceStorageWriter(str(staging / STATE), save_distributed=True))
    tensors, values = rng_state()
    save_file(tensors, str(staging / f"rng-rank{rank}.safetensors"))
    write_json(staging / f"rng-rank{rank}.json", values)
    save_file({k: v.detach().contiguous() for k, v in buffers.items()},
              str(staging / f"buffers-rank{rank}.safetensors"))
    if accelerator.is_main_process:
        student_state, extra = gathered
        student.save_pretrained(staging, state_dict=student_state)
        if extra:
            save_file({k: v.contiguous() for k, v in extra.items()}, str(staging / "distill.safetensors"))
        groups = {k: list(v) if isinstance(v, tuple) else v for k, v in optim_state.items()
                  if not isinstance(v, torch.Tensor)}
        write_json(staging / OPTIMIZER, groups)
        write_json(staging / TRAINER_STATE, {**trainer_state, "step": step, "world_size": accelerator.num_processes})


def write_manifest(folder: str | os.PathLike, step: int, world_size: int, *, fsync: bool = False) -> dict[str, Any]:
    """Write ``manifest.json``: the SHA-256 and size of every file of a checkpoint folder (the manifest aside).

    Args:
        folder: The checkpoint folder.
        step: Its step.
        world_size: The number of processes that wrote it.
        fsync: Flush every file and the manifest to disk.

    Returns:
        The manifest.
    """
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"sha256": hash_file(path, fsync=fsync).hexdigest(), "bytes": path.stat().st_size}
    manifest = {"format": 1, "step": step, "world_size": world_size, "files": files}
    with atomic_path(folder / MANIFEST, fsync=fsync) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _seal(staging: Path, step: int, world_size: int) -> None:
    # safetensors (0.8) writes its files owner-only (0600): give everything a plain open/mkdir's permissions, as
    # every other writer of ours does, so another user or a serving process can read the checkpoint.
    usual_permissions(staging)
    write_manifest(staging, step, world_size, fsync=True)
    for folder in (staging / STATE, staging):
        fsync_folder(folder)


def _publish(root: Path, staging: Path, final: Path, keep: int, run_id: str) -> None:
    os.replace(staging, final)  # complete checkpoints only ever appear under their final name
    fsync_folder(root)
    write_json(root / LATEST, {"checkpoint": final.name})
    for old in list(checkpoints(root.parent).values())[:-keep]:
        trash = root / f".{old.name}.{run_id}.deleting"  # out of sight first: a half-deleted folder is no checkpoint
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(output_dir: str | os.PathLike) -> list[str]:
    """Remove what interrupted saves left: staging and half-deleted checkpoint folders, and the final model's staging
    folder (call only while holding the run's lock); returns their names."""
    root = checkpoint_dir(output_dir)
    gone = [p for p in root.glob(".step-*") if p.is_dir() and _LEFTOVER.fullmatch(p.name)] if root.is_dir() else []
    gone += [p for p in Path(output_dir).glob(".final.*.tmp") if p.is_dir()]  # utils.io.atomic_folder's staging
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in gone)


# ---------------------------------------------------------------------------------------------------- resume


def find_checkpoint(output_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The checkpoint a run resumes from: the newest ``step-N`` folder (not yet verified), with notes on ``latest``.

    Returns:
        ``(folder or None, notes)``: the notes say when ``latest`` is missing, damaged or names another checkpoint.

    Raises:
        CheckpointError: ``latest`` names a checkpoint but none exists.
    """
    root = checkpoint_dir(output_dir)
    found = checkpoints(output_dir)
    pointer = root / LATEST
    named, problem = None, None
    if pointer.exists():
        try:
            named = json.loads(pointer.read_text())["checkpoint"]
            if not isinstance(named, str):
                raise TypeError(f"expected a folder name, got {named!r}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            problem = f"{pointer} is damaged ({type(err).__name__}: {err})"
    elif found:
        problem = f"{pointer} is missing"
    if not found:
        if pointer.exists():
            raise CheckpointError(f"{pointer} exists but {root} holds no checkpoint folder (step-N): the run's "
                                  "checkpoints are gone. Put them back to resume, or start afresh with another "
                                  "output_dir.")
        return None, []
    newest = found[max(found)]
    if problem is None and named != newest.name:
        problem = (f"{pointer} names {named}, which does not exist" if root.joinpath(named) not in found.values()
                   else f"{pointer} names {named}, but {newest.name} is newer (its pointer update was interrupted)")
    return newest, [f"{problem}; resuming from the newest checkpoint, {newest.name}"] if problem else []


def _way_out(path: Path, file: str | None = None) -> str:
    step = checkpoint_step(path)
    earlier = [p for s, p in checkpoints(path.parent.parent).items() if step is not None and s < step] \
        if path.parent.name == "checkpoints" else []
    restore = f"Restore {file} from a copy, or" if file else "Either"
    if earlier:
        return (f"{restore} move {path} out of {path.parent} to resume from the previous checkpoint, "
                f"{earlier[-1].name}.")
    return f"{restore} start afresh with another output_dir (no earlier checkpoint exists)."


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check a checkpoint against its manifest (every file present, sizes and SHA-256 equal, nothing unlisted in the
    DCP folder) and its trainer state against the manifest and the folder's name.

    Returns:
        The trainer state (``trainer_state.json``).

    Raises:
        CheckpointError: What is wrong, naming the file and the way out.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint {path} does not exist (train.resume takes auto, never or a checkpoint "
                              "folder OUTPUT_DIR/checkpoints/step-N).")
    if not (path / MANIFEST).is_file():
        if not (path / TRAINER_STATE).is_file():
            raise CheckpointError(
                f"{path} is not a training checkpoint (it has no {MANIFEST} and no {TRAINER_STATE}): train.resume "
                "takes auto, never or a folder OUTPUT_DIR/checkpoints/step-N written by pretraining. To start "
                "from a model's weights instead, name it as the teacher (teacher.name, with teacher.init: true).")
        raise CheckpointError(f"Checkpoint {path} has no {MANIFEST}, so it cannot be verified (it was written by an "
                              f"older version of modernalbert, or the manifest was removed). {_way_out(path)}")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files, step, world = manifest["files"], int(manifest["step"]), int(manifest["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / MANIFEST} is damaged ({err}). {_way_out(path, MANIFEST)}") from err
    for rel, entry in files.items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"Checkpoint {path} is incomplete: {rel} is missing (listed in {MANIFEST}). "
                                  f"{_way_out(path, rel)}")
        if file.stat().st_size != entry["bytes"] or hash_file(file).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"Checkpoint {path} is damaged: {rel} does not match its SHA-256 in {MANIFEST} "
                                  f"(edited, truncated or corrupted on disk). {_way_out(path, rel)}")
    _check_contents(path, files, world)
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except ValueError as err:
        raise CheckpointError(f"{path / TRAINER_STATE} is not JSON ({err}). {_way_out(path, TRAINER_STATE)}") from err
    missing = [k for k in TRAINER_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path / TRAINER_STATE} lacks {missing}: it was written by another version of "
                              f"modernalbert. {_way_out(path)}")
    named = checkpoint_step(path)
    if not state["step"] == step == (step if named is None else named):
        raise CheckpointError(f"Checkpoint {path} is inconsistent: its folder name says step {named}, {MANIFEST} "
                              f"step {step} and {TRAINER_STATE} step {state['step']}. Rename the folder back to "
                              f"{checkpoint_name(step)} if it was renamed; otherwise {_way_out(path)}")
    return state


def _check_contents(path: Path, files: dict[str, Any], world: int) -> None:
    required = [TRAINER_STATE, OPTIMIZER, "model.safetensors",
                *(f"{kind}-rank{r}.{ext}" for r in range(world) for kind, ext in
                  (("rng", "safetensors"), ("rng", "json"), ("buffers", "safetensors")))]
    listed = {rel for rel in files if rel.startswith(f"{STATE}/")}
    missing = [rel for rel in required if rel not in files] + ([] if listed else [f"{STATE}/"])
    if missing:
        raise CheckpointError(f"Checkpoint {path} lacks {missing} (not in {MANIFEST}): it was not written by "
                              f"pretraining, or only in part. {_way_out(path)}")
    present = {p.relative_to(path).as_posix() for p in (path / STATE).rglob("*") if p.is_file()}
    if present - listed:  # DCP reads every safetensors file of the folder
        raise CheckpointError(f"Checkpoint {path} holds {sorted(present - listed)}, which {MANIFEST} does not list "
                              f"(added after it was written): move them out of {path / STATE}.")


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    buffers: dict[str, torch.Tensor], rank: int, per_process: bool) -> dict[str, Any]:
    """Load a verified checkpoint into the (prepared) model and optimizer; every process calls it.

    Args:
        path: The checkpoint folder (see :func:`verify_checkpoint`).
        model: The model as the distributed engine wraps it (sharded under FSDP: DCP reshards as needed).
        optimizer: Its optimizer.
        buffers: The model's buffers (this process's), restored from its own file when ``per_process``.
        rank: This process's rank (its files).
        per_process: Restore this process's random states and buffers (the process count is the checkpoint's;
            otherwise the buffers keep the copy DCP restored).

    Returns:
        The trainer state.

    Raises:
        CheckpointError: The checkpoint does not fit the model or optimizer.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    model_state, optim_state = training_state(model, optimizer)
    tensors = _dcp_tensors(model_state, optim_state)
    reader = HuggingFaceStorageReader(str(path / STATE))
    saved = set(reader.read_metadata().state_dict_metadata)
    if saved != set(tensors):
        extra, missing = sorted(saved - set(tensors)), sorted(set(tensors) - saved)
        raise CheckpointError(
            f"Checkpoint {path} does not fit this run's model and optimizer (in the checkpoint only: {extra[:4]}; in "
            f"the model only: {missing[:4]}): it was written with another recipe. Resume it with its own recipe "
            f"(saved in {TRAINER_STATE}), or start afresh with another output_dir.")
    try:
        with _dcp_quietly():
            dcp.load(tensors, storage_reader=reader)  # in place: the aliases of a tied weight share its storage
    except Exception as err:
        raise CheckpointError(f"Checkpoint {path} does not fit this run's model ({err}): it was written with "
                              "another recipe; resume it with its own recipe.") from err
    groups = json.loads((path / OPTIMIZER).read_text())
    absent = [k for k, v in optim_state.items() if not isinstance(v, torch.Tensor) and k not in groups]
    if absent:
        raise CheckpointError(f"{path / OPTIMIZER} lacks {absent[:4]}: it was written for another optimizer.")
    inner = getattr(optimizer, "optimizer", optimizer)
    for group in inner.param_groups:  # DCP restores the keys a group has: add those a scheduler added (initial_lr)
        for key in {k.rsplit(".", 1)[1] for k in groups}:
            group.setdefault(key, None)
    optim_state.update({k: tuple(v) if isinstance(v, list) else v for k, v in groups.items()})
    set_state_dict(model, inner, model_state_dict=model_state, optim_state_dict=optim_state, options=_options())
    if per_process:
        set_rng_state(load_file(str(path / f"rng-rank{rank}.safetensors")),
                      json.loads((path / f"rng-rank{rank}.json").read_text()))
        saved = load_file(str(path / f"buffers-rank{rank}.safetensors"))
        if set(saved) != set(buffers):
            raise CheckpointError(f"{path / f'buffers-rank{rank}.safetensors'} holds other buffers than the model "
                                  f"({sorted(set(saved) ^ set(buffers))[:4]}): it was written with another recipe.")
        with torch.no_grad():
            for name, target in buffers.items():
                target.copy_(saved[name])
    return json.loads((path / TRAINER_STATE).read_text())


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The verified checkpoint a run in ``output_dir`` resumes from, or None when it has none.

    Raises:
        CheckpointError: The newest checkpoint is damaged or inconsistent.
    """
    path, _ = find_checkpoint(output_dir)
    if path is not None:
        verify_checkpoint(path)
    return path


__all__ = ["LATEST", "MANIFEST", "TRAINER_STATE", "CheckpointError", "checkpoint_dir",
           "checkpoint_name", "checkpoint_step", "checkpoints", "find_checkpoint", "latest_checkpoint",
           "load_checkpoint", "nonfinite", "remove_leftovers", "rng_state", "save_checkpoint", "set_rng_state",
           "training_state", "verify_checkpoint", "write_manifest"]
