"""Machinery shared by the benchmark suites (GLUE, SQuAD-v2, BEIR and the Rotten Tomatoes stand-ins).

* **Any encoder**: :func:`load_model` opens a ModernAlbert folder *or* any Hugging Face encoder (a local folder,
  or a hub name when online) with the head a task needs, through the ``Auto*`` factories (``import modernalbert``
  registers ours), so ModernAlbert and e.g. ModernBERT or MiniLM run through the same code.
* **One engine from one CPU to many GPUs**: :func:`finetune` and :func:`predict` run under ``accelerate`` (launch
  with ``accelerate launch`` / ``torchrun`` for several processes). Batches are sharded across processes by
  index; predictions are gathered and returned in the input order on every process.
* **Length-bucketed batches**: examples of similar length share a batch, so padding (and wasted compute) stays
  small; training batches are bucketed within shuffled mega-batches, so the order stays random.
* Atomic JSON and model writes, mean ± std, markdown tables.

Hyper-parameter defaults in :class:`FinetuneConfig` are common fine-tuning values (our choice, not the paper's);
each suite documents its own.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# task head -> Auto factory name (resolved lazily: importing transformers' Auto classes is slow)
HEADS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "encoder": "AutoModel",
}
# Keys of a feature that are model inputs padded to the batch's longest row (pad value per key).
PADDED_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# Values of FinetuneConfig.precision, and the autocast dtype of each 16-bit one.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ============================================================================================ configuration


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (defaults are common values, our choice).

    Attributes:
        learning_rate: Peak AdamW learning rate.
        batch_size: Examples per optimiser step (per process).
        eval_batch_size: Examples per prediction batch.
        epochs: Passes over the training data (fractions allowed).
        max_steps: Stop after this many steps (overrides ``epochs`` when set).
        warmup_ratio: Share of steps with linear warm-up; linear decay to 0 after.
        weight_decay: AdamW weight decay (not on biases and norms).
        max_grad_norm: Gradient clipping (0 disables).
        max_length: Token limit per example (truncation).
        seed: Seed of initialisation of new heads, shuffling and dropout.
        precision: ``"auto"`` (bf16 autocast on a GPU that supports it, fp32 otherwise), ``"fp32"``, ``"bf16"``
            (autocast; also on CPU, where it is correct but slow) or ``"fp16"`` (autocast; prediction anywhere,
            fine-tuning on a GPU only, where accelerate adds the loss scaling fp16 gradients need).
        log_every: Steps between loss records.
    """

    learning_rate: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: float = 3.0
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 0
    precision: str = "auto"
    log_every: int = 10

    def __post_init__(self) -> None:
        checks = {
            "learning_rate": self.learning_rate > 0,
            "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
            "epochs": self.epochs > 0,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "weight_decay": self.weight_decay >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "max_length": self.max_length >= 8,
            "log_every": self.log_every >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)!r} is out of range.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"FinetuneConfig.precision={self.precision!r}: use one of {list(PRECISIONS)}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ============================================================================================ models


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_path(path: str | os.PathLike) -> None:
    s = str(path)
    if (s.startswith((".", "/", "~")) or os.sep in s) and not Path(s).expanduser().exists():
        raise FileNotFoundError(f"No model folder at {path}: give a saved model folder or a hub name.")


def model_type(path: str | os.PathLike) -> str:
    """The ``model_type`` of a saved model folder or hub name (e.g. ``"modernalbert"``, ``"bert"``)."""
    from transformers import AutoConfig

    import modernalbert  # noqa: F401  (registers model_type="modernalbert" with the Auto factories)

    _check_path(path)
    return AutoConfig.from_pretrained(path).model_type


def load_model(path: str | os.PathLike, head: str, **kwargs: Any) -> torch.nn.Module:
    """Open ``path`` (ModernAlbert or any HF encoder) with a task ``head`` (a key of :data:`HEADS`).

    A checkpoint saved with another head (e.g. MaskedLM) keeps its encoder; the new head is freshly initialised.

    Args:
        path: A model folder or a hub name.
        head: ``"sequence-classification"``, ``"question-answering"`` or ``"encoder"``.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``num_labels``, ``problem_type``).

    Raises:
        ValueError: Unknown head.
        FileNotFoundError: A local path that does not exist.
    """
    import transformers

    import modernalbert  # noqa: F401  (Auto registration)

    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}: use one of {sorted(HEADS)}.")
    _check_path(path)
    factory = getattr(transformers, HEADS[head])
    return factory.from_pretrained(path, **kwargs)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved with a model (folder or hub name).

    Raises:
        ValueError: The folder has no tokenizer (the fix: save one with the model).
    """
    from transformers import AutoTokenizer

    _check_path(path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"No tokenizer could be loaded from {path} ({err}); save the tokenizer next to the model "
                         "(tokenizer.save_pretrained(folder)).") from err


def save_model(model: torch.nn.Module, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer into ``folder`` atomically (written aside, then renamed)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ============================================================================================ batches


def bucket_batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool = False, seed: int = 0,
                   megabatch: int = 50) -> list[list[int]]:
    """Group example indices into batches of similar length.

    Without ``shuffle``: all indices sorted by length (longest first, so a memory problem shows at once), cut into
    batches. With ``shuffle``: indices are shuffled, cut into mega-batches of ``megabatch * batch_size``, each sorted
    by length and cut into batches, and the batches shuffled (random order, little padding).

    Returns:
        Batches of indices; every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    idx = list(range(len(lengths)))
    if not shuffle:
        idx.sort(key=lambda i: (-lengths[i], i))
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    size = batch_size * megabatch
    batches = []
    for start in range(0, len(idx), size):
        chunk = sorted(idx[start:start + size], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad :data:`PADDED_KEYS` to the batch's longest row (right padding); stack every other key as a tensor.

    Features are dicts of token lists (``input_ids`` …) plus scalars (``labels``, ``start_positions``, ``index``).
    """
    batch: dict[str, torch.Tensor] = {}
    width = max(len(f["input_ids"]) for f in features)
    for key in features[0]:
        values = [f[key] for f in features]
        if key in PADDED_KEYS:
            pad = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([list(v) + [pad] * (width - len(v)) for v in values], dtype=torch.long)
        elif isinstance(values[0], float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = torch.as_tensor(np.asarray(values))
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                                for f in features], dtype=torch.long)
    return batch


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``batch`` the model's ``forward`` accepts (e.g. drops ``index``; ``token_type_ids`` for BERT
    but not for ModernAlbert / ModernBERT)."""
    import inspect

    # Through the wrapped module's own forward: DDP's forward(*inputs, **kwargs) names no argument.
    params = inspect.signature(getattr(model, "module", model).forward).parameters
    return {k: v for k, v in batch.items() if k in params}


def _shard(batches: list[list[int]], rank: int, world: int, *, even: bool) -> list[list[int]]:
    # Training: every process must take the same number of steps (collectives), so drop the ragged tail.
    if even and world > 1:
        batches = batches[: len(batches) - len(batches) % world]
    return batches[rank::world]


# ============================================================================================ training


@dataclass
class TrainHistory:
    """What :func:`finetune` did: steps taken and loss records ``{"step", "loss", "lr"}``."""

    steps: int = 0
    records: list[dict[str, float]] = field(default_factory=list)


def _precision(cfg: FinetuneConfig) -> str:
    """accelerate's ``mixed_precision`` for ``cfg.precision``: ``"no"``, ``"bf16"`` or ``"fp16"``."""
    if cfg.precision == "fp32":
        return "no"
    if cfg.precision in AUTOCAST_DTYPES:
        return cfg.precision
    # bf16 on a CPU without AVX-512 BF16 is ~100x slower than fp32: only autocast on a capable GPU.
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def finetune(
    model: torch.nn.Module,
    features: Sequence[dict[str, Any]],
    cfg: FinetuneConfig,
    *,
    pad_token_id: int,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
    collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
    desc: str = "finetune",
) -> TrainHistory:
    """Fine-tune ``model`` in place on tokenised ``features`` (AdamW, linear warm-up and decay, clipping).

    Args:
        model: Any model whose forward returns ``.loss`` given the feature keys (or use ``loss_fn``).
        features: Dicts with ``input_ids`` and the targets (``labels``, ``start_positions`` …).
        cfg: Hyper-parameters.
        pad_token_id: The tokenizer's pad id.
        loss_fn: ``loss_fn(model, batch) -> loss`` for objectives the model does not compute itself.
        collate_fn: Turns a list of features into a batch (default :func:`collate`).
        desc: Progress-bar label.

    Returns:
        A :class:`TrainHistory`. The model is left in eval mode on its original device.

    Raises:
        ValueError: No training features.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from ..training.memory import keep_freed_memory
    from ..training.precision import make_accelerator
    from ..training.trainer import param_groups

    if len(features) == 0:
        raise ValueError(f"{desc}: the training split is empty; give at least one example.")
    if _precision(cfg) == "fp16" and not torch.cuda.is_available():
        # accelerate silently trains in fp32 when asked for fp16 on a CPU (its loss scaling is GPU-only).
        raise ValueError(f"{desc}: precision='fp16' fine-tunes on a GPU only (fp16 gradients need accelerate's loss "
                         "scaling, which it runs on GPUs); use precision='bf16' or 'fp32' on CPU.")
    collate_fn = collate_fn or (lambda fs: collate(fs, pad_token_id))
    accelerator = make_accelerator(_precision(cfg))
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    set_seed(cfg.seed)
    lengths = [len(f["input_ids"]) for f in features]
    per_epoch = math.ceil(len(features) / cfg.batch_size)
    total = cfg.max_steps or max(1, round(cfg.epochs * per_epoch))
    # Enough shuffled epochs (each its own seed) to cover the step budget, then sharded across processes.
    world = accelerator.num_processes
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total * world:
        batches.extend(bucket_batches(lengths, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch))
        epoch += 1
    batches = _shard(batches[: total * world], accelerator.process_index, world, even=True)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    history = TrainHistory()
    bar = tqdm(total=len(batches), desc=desc, disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window: list[float] = []
    for step, idx in enumerate(batches, start=1):
        batch = {k: v.to(accelerator.device) for k, v in collate_fn([features[i] for i in idx]).items()}
        with accelerator.autocast():
            loss = loss_fn(model, batch) if loss_fn is not None else model(**model_inputs(model, batch)).loss
        accelerator.backward(loss)
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == len(batches):
            history.records.append({"step": step, "loss": sum(window) / len(window),
                                    "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{history.records[-1]['loss']:.4f}")
            window = []
        bar.update(1)
    bar.close()
    history.steps = len(batches)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.to(device).eval()
    accelerator.free_memory()
    return history


# ============================================================================================ prediction


def predict(
    model: torch.nn.Module,
    features: Sequence[dict[str, Any]],
    forward_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], Sequence[Any]],
    *,
    batch_size: int,
    pad_token_id: int,
    collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
    desc: str = "predict",
    precision: str = "auto",
) -> list[Any]:
    """Run ``forward_fn`` over length-bucketed batches and return one output per feature, in input order.

    Under several processes (``accelerate launch``) each process runs its share of batches and the outputs are
    gathered, so every process returns the full list.

    Args:
        model: The model (moved to the process's device; restored afterwards).
        features: Tokenised examples.
        forward_fn: ``forward_fn(model, batch) -> per-example outputs`` (e.g. NumPy rows), ``len == batch rows``.
        batch_size: Examples per batch.
        pad_token_id: The tokenizer's pad id.
        collate_fn: Default :func:`collate`.
        desc: Progress-bar label.
        precision: As :attr:`FinetuneConfig.precision`.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    if len(features) == 0:
        return []
    state = PartialState(cpu=not torch.cuda.is_available())
    collate_fn = collate_fn or (lambda fs: collate(fs, pad_token_id))
    batches = _shard(bucket_batches([len(f["input_ids"]) for f in features], batch_size),
                     state.process_index, state.num_processes, even=False)
    home = next(model.parameters()).device
    was_training = model.training
    model.to(state.device).eval()
    autocast_dtype = AUTOCAST_DTYPES.get(_precision(FinetuneConfig(precision=precision)))
    pairs: list[tuple[int, Any]] = []
    with torch.inference_mode(), torch.autocast(state.device.type, dtype=autocast_dtype or torch.bfloat16,
                                                enabled=autocast_dtype is not None):
        for idx in tqdm(batches, desc=desc, disable=not state.is_local_main_process, dynamic_ncols=True):
            batch = {k: v.to(state.device) for k, v in collate_fn([features[i] for i in idx]).items()}
            outs = forward_fn(model, batch)
            if len(outs) != len(idx):
                raise RuntimeError(f"forward_fn returned {len(outs)} outputs for a batch of {len(idx)}.")
            pairs.extend(zip(idx, outs))
    model.to(home).train(was_training)
    if state.num_processes > 1:
        pairs = gather_object(pairs)
    ordered: list[Any] = [None] * len(features)
    for i, out in pairs:
        ordered[i] = out
    return ordered


# ============================================================================================ reporting


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std needs at least one value.")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temporary file in the same folder, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=float)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are shown with 4 significant decimals."""

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = [
    "AUTOCAST_DTYPES",
    "HEADS",
    "PRECISIONS",
    "FinetuneConfig",
    "TrainHistory",
    "bucket_batches",
    "collate",
    "finetune",
    "load_model",
    "load_tokenizer",
    "markdown_table",
    "mean_std",
    "model_inputs",
    "model_type",
    "predict",
    "save_model",
    "set_seed",
    "write_json",
]
