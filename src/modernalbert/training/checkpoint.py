"""Atomic training checkpoints with everything exact resume needs.

Layout of ``<output_dir>/checkpoints/``::

    step-000100/            one complete checkpoint
        model.safetensors   the student (``save_pretrained``: safetensors + config.json)
        config.json
        distill.safetensors learned distillation projections (absent when there are none)
        optimizer.pt        AdamW state (the one file in torch's format: read with weights_only=True)
        rng-rank0.safetensors / rng-rank0.json   each process's RNG states (torch, CUDA, numpy, python)
        trainer_state.json  step, data position, counters, recipe
    latest                  the name of the newest complete checkpoint (replaced atomically)

A checkpoint is written into ``.step-000100.tmp`` and renamed into place only when complete, and ``latest`` is
updated after that: a save interrupted at any point leaves the previous checkpoint as ``latest``, intact. Loading
never executes code (safetensors and JSON; ``torch.load(weights_only=True)`` for the optimizer state).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..utils.io import write_json

LATEST = "latest"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


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


def save_checkpoint(output_dir: str | Path, step: int, *, student: Any, student_state: dict[str, torch.Tensor],
                    extra_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None,
                    trainer_state: dict[str, Any], rank: int, world_size: int, barrier, keep: int) -> Path:
    """Write checkpoint ``step`` collectively (every process calls it; ``barrier()`` synchronises them).

    The main process (rank 0) writes the model, projections, optimizer and trainer state; every process writes its
    own RNG state. Returns the final folder.
    """
    root = checkpoint_dir(output_dir)
    name = f"step-{step:07d}"
    tmp, final = root / f".{name}.tmp", root / name
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    tensors, values = rng_state()
    save_file(tensors, str(tmp / f"rng-rank{rank}.safetensors"))
    write_json(tmp / f"rng-rank{rank}.json", values)
    if rank == 0:
        student.save_pretrained(tmp, state_dict=student_state, safe_serialization=True)
        if extra_state:
            save_file({k: v.contiguous() for k, v in extra_state.items()}, str(tmp / "distill.safetensors"))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        write_json(tmp / "trainer_state.json", {**trainer_state, "step": step, "world_size": world_size})
    barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # complete checkpoints only ever appear under their final name
        write_json(root / LATEST, {"checkpoint": name})
        done = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None. Leftover temporary folders are ignored."""
    root = checkpoint_dir(output_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, OSError) as err:
        raise ValueError(f"{pointer} is corrupt ({err}): delete it to start over, or pass train.resume=PATH.") from err
    path = root / name
    if not path.is_dir():
        raise ValueError(f"{pointer} names {name}, which does not exist: pass train.resume=PATH or delete it.")
    return path


def load_checkpoint(path: str | Path, rank: int) -> dict[str, Any]:
    """Read a checkpoint folder (for this rank's RNG) without executing code.

    Returns:
        ``{"student": state dict, "extra": state dict, "optimizer": state dict or None, "trainer": dict,
        "rng": (tensors, values) or None}``.

    Raises:
        ValueError: Missing or corrupt files, naming the file and what to do.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"Checkpoint {path} does not exist.")

    def fail(what: str, err: Exception) -> ValueError:
        return ValueError(f"Checkpoint {path} is corrupt: {what} cannot be read ({err}). Delete it (the previous "
                          "checkpoint is kept) or pass train.resume=PATH to an earlier one.")

    out: dict[str, Any] = {}
    try:
        out["student"] = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as err:
        raise fail("model.safetensors", err) from err
    try:
        out["extra"] = load_file(str(path / "distill.safetensors")) if (path / "distill.safetensors").exists() else {}
        out["optimizer"] = (torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
                            if (path / "optimizer.pt").exists() else None)
        out["trainer"] = json.loads((path / "trainer_state.json").read_text())
    except Exception as err:  # any unreadable piece means the checkpoint cannot be trusted
        raise fail("the optimizer / trainer state", err) from err
    rng_file = path / f"rng-rank{rank}.safetensors"
    if rng_file.exists():
        try:
            out["rng"] = (load_file(str(rng_file)), json.loads((path / f"rng-rank{rank}.json").read_text()))
        except Exception as err:
            raise fail(rng_file.name, err) from err
    else:
        out["rng"] = None
    return out


__all__ = ["LATEST", "checkpoint_dir", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]
