"""Pretraining recipes: typed sections read from YAML, with dotted ``key=value`` overrides from the command line.

A recipe has the sections ``model``, ``teacher``, ``data``, ``distill``, ``optim`` and ``train`` plus ``output_dir``
and ``seed``; see ``recipes/*.yaml`` for complete examples. Unknown keys anywhere are an error that names them
(a typo must never silently fall back to a default). Every default below is our choice, not the paper's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..distill.config import DistillConfig
from ..model.configuration import ModernAlbertConfig
from ..utils.config import from_mapping, load_yaml, typed_config


def _from_dict(cls, values: dict[str, Any] | None, section: str):
    return from_mapping(cls, values, unknown=f"Unknown key(s) {{keys}} in recipe section '{section}'",
                        prefix=section)


@typed_config(prefix="model")
@dataclass
class ModelSection:
    """The student: a preset plus config overrides (``ModernAlbertConfig.from_preset(preset, **overrides)``)."""

    preset: str = "mini"
    overrides: dict[str, Any] = field(default_factory=dict)

    def validate_overrides(self) -> None:
        ModernAlbertConfig.check_keys(self.overrides, where="recipe model.overrides")


@typed_config(prefix="teacher")
@dataclass
class TeacherSection:
    """The frozen teacher: a packaged name (``all-MiniLM-L6-v2``), a local folder or a hub name; ``None`` trains
    with MLM only (then ``tokenizer`` names the tokenizer). ``init`` initialises the student from the teacher."""

    name: str | None = None
    init: bool = True
    mapping: Literal["auto", "modernbert", "bert", "generic"] = "auto"
    layer_assignment: Literal["pick", "average"] = "pick"
    attn_implementation: str | None = None
    tokenizer: str | None = None


@typed_config(prefix="data")
@dataclass
class DataSection:
    """The corpus (a :class:`~modernalbert.data.corpus.CorpusSpec` mapping: sources, held-out fraction split by
    document, split seed) and the packing block size."""

    corpus: dict[str, Any] = field(default_factory=lambda: {"sources": ["kjv"], "held_out": 0.02})
    block_size: int = 128

    def validate_block_size(self) -> None:
        if self.block_size < 8:
            raise ValueError(f"data.block_size={self.block_size!r} is invalid: expected an integer >= 8.")


@typed_config(prefix="optim")
@dataclass
class OptimSection:
    """AdamW (no decay on norms, embeddings and biases) with a warmup-stable-decay schedule
    (:func:`modernalbert.training.optim.wsd_schedule`). ``clip_grad_norm``: the maximum global gradient norm, or
    ``None`` (YAML ``null``) for no clipping."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 30
    decay_steps: int = 60
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = 1.0

    def validate_ranges(self) -> None:
        # Non-finite values are refused everywhere: an infinite learning rate or norm saves non-finite weights.
        for name in ("lr", "eps"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"optim.{name}={getattr(self, name)!r} is invalid: expected a finite number > 0.")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay!r} is invalid: expected a finite number >= 0 "
                             "(0 for no decay).")
        if not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={list(self.betas)!r} is invalid: expected two numbers in [0, 1).")
        if self.clip_grad_norm is not None and not (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0):
            raise ValueError(f"optim.clip_grad_norm={self.clip_grad_norm!r} is invalid: expected a finite number > 0, "
                             "or null for no clipping (0 would freeze the weights, a negative norm flips the step).")
        for name in ("warmup_steps", "decay_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"optim.{name}={getattr(self, name)!r} is invalid: expected an integer >= 0.")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio!r} is invalid: expected a number in [0, 1].")


@typed_config(prefix="train")
@dataclass
class TrainSection:
    """Steps, batch (per process), accumulation, precision, evaluation, checkpointing and logging.

    ``precision``: ``auto`` (bf16 autocast on a GPU that supports it, fp32 otherwise), ``fp32``, or ``bf16`` (autocast
    anywhere; on CPU it is correct but much slower than fp32 without native bf16 matrix instructions).

    ``keep_freed_memory`` (CPU, Linux): keep freed tensors in the process heap instead of returning them to the OS,
    so that steady-state steps reuse memory rather than page-faulting it in again (measured 3-9x faster steps on
    virtual machines; see :func:`~modernalbert.training.memory.keep_freed_memory`).

    ``resume``: ``auto`` (the newest verified checkpoint of ``output_dir``, if any), ``never`` (a fresh run; refused
    when ``output_dir`` already holds checkpoints) or the path of a checkpoint folder. ``resume_rng``: ``restore``
    (each process's saved random state: exact, so the process count must be the checkpoint's) or ``reseed`` (fresh
    random states seeded from (seed, step, rank) when the process count changed: the run continues, not exactly)."""

    steps: int = 300
    batch_size: int = 16
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str = "auto"
    resume_rng: Literal["restore", "reseed"] = "restore"
    keep_freed_memory: bool = True

    def validate_positive(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "save_every", "keep_checkpoints",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)!r} is invalid: expected an integer >= 1.")

    def validate_resume(self) -> None:
        if not self.resume.strip():
            raise ValueError("train.resume='' is invalid: expected auto, never or the path of a checkpoint folder.")


@typed_config(prefix="recipe")
@dataclass
class Recipe:
    """A whole pretraining run."""

    output_dir: str = "runs/pretrain"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    data: DataSection = field(default_factory=DataSection)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    SECTIONS: ClassVar[dict[str, type]] = {"model": ModelSection, "teacher": TeacherSection,
                                           "data": DataSection, "optim": OptimSection, "train": TrainSection}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """Build and validate a recipe from a nested mapping."""
        if not isinstance(values, dict):
            raise ValueError(f"A recipe must be a mapping of sections, got {type(values).__name__}.")
        values = copy.deepcopy(values)
        top = {"output_dir", "seed", "distill", *cls.SECTIONS}
        unknown = sorted(set(values) - top)
        if unknown:
            raise ValueError(f"Unknown recipe key(s) {unknown}: allowed are {sorted(top)}.")
        kwargs: dict[str, Any] = {k: values[k] for k in ("output_dir", "seed") if k in values}
        for name, section_cls in cls.SECTIONS.items():
            kwargs[name] = _from_dict(section_cls, values.get(name), name)
        kwargs["distill"] = DistillConfig.from_dict(values.get("distill"))
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """Read a YAML recipe and apply ``section.key=value`` overrides (values parsed as YAML).

        Raises:
            FileNotFoundError: The recipe file does not exist.
            ValueError: Malformed YAML, an override without ``=``, unknown keys or invalid values.
        """
        values = load_yaml(path, overrides, kind="Recipe", form="section.key=value", example="train.steps=50")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested mapping (what is saved next to checkpoints)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = asdict(value) if is_dataclass(value) else value
        out["optim"]["betas"] = list(out["optim"]["betas"])
        return out


__all__ = ["DataSection", "ModelSection", "OptimSection", "Recipe", "TeacherSection", "TrainSection"]
