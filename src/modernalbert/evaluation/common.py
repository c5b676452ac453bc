"""Machinery shared by the benchmark suites (GLUE, SQuAD-v2, BEIR and the Rotten Tomatoes stand-ins).

* **Any encoder**: :func:`modernalbert.model.loading.load_model` opens a ModernAlbert folder *or* any Hugging Face
  encoder with the head a task needs, so ModernAlbert and e.g. ModernBERT or MiniLM run through the same code.
* **One engine from one CPU to many GPUs**: :func:`finetune` and :func:`predict` run under ``accelerate`` (launch
  with ``accelerate launch`` / ``torchrun`` for several processes). Batches are sharded across processes by
  index; predictions are gathered and returned in the input order on every process.
* **Length-bucketed batches** (:func:`modernalbert.model.batching.length_bucketed_batches`): examples of similar
  length share a batch, so padding (and wasted compute) stays small; training batches are bucketed within shuffled
  mega-batches, so the order stays random. Batches are padded by ``transformers.DataCollatorWithPadding``.
* Mean ± std and markdown tables for the reports.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.batching import length_bucketed_batches
from .config import FinetuneConfig

# The autocast dtype of each 16-bit value of FinetuneConfig.precision.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# ============================================================================================ batches


def padding_collator(tokenizer: Any) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
    """``transformers.DataCollatorWithPadding`` for tokenised features: pads ``input_ids`` (and ``attention_mask``,
    ``token_type_ids``) to the batch's longest row and turns every other key (``labels``, ``start_positions``,
    ``index`` ...) into a tensor.

    Raises:
        ValueError: A tokenizer without a pad token, or one that pads on the left (the suites read a row's real
            tokens as its first ones).
    """
    from transformers import DataCollatorWithPadding

    from ..model.loading import pad_token_id

    pad_token_id(tokenizer)
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError(f"The tokenizer pads on the {tokenizer.padding_side}; encoders are evaluated with right "
                         "padding: set tokenizer.padding_side = 'right'.")
    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``batch`` the model's ``forward`` accepts (e.g. drops ``index``; ``token_type_ids`` for BERT
    but not for ModernAlbert / ModernBERT)."""
    import inspect

    # Through the wrapped module's own forward: DDP's forward(*inputs, **kwargs) names no argument.
    params = inspect.signature(getattr(model, "module", model).forward).parameters
    return {k: v for k, v in batch.items() if k in params}


def is_main_process() -> bool:
    """Whether this is the main process of an ``accelerate`` / ``torchrun`` launch (True for a single process)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


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


def _training_batches(lengths: list[int], cfg: FinetuneConfig, rank: int, world: int) -> list[list[int]]:
    """This process's batches: enough shuffled epochs (each its own seed) to cover the step budget, then sharded."""
    per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = cfg.max_steps or max(1, round(cfg.epochs * per_epoch))
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total * world:
        batches.extend(length_bucketed_batches(lengths, batch_size=cfg.batch_size, shuffle=True,
                                               seed=cfg.seed * 1000 + epoch))
        epoch += 1
    return _shard(batches[: total * world], rank, world, even=True)


def finetune(
    model: torch.nn.Module,
    features: Sequence[dict[str, Any]],
    cfg: FinetuneConfig,
    *,
    tokenizer: Any,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
    collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
    desc: str = "finetune",
) -> TrainHistory:
    """Fine-tune ``model`` in place on tokenised ``features`` (AdamW, linear warm-up and decay, clipping).

    Args:
        model: Any model whose forward returns ``.loss`` given the feature keys (or use ``loss_fn``).
        features: Dicts with ``input_ids`` and the targets (``labels``, ``start_positions`` …).
        cfg: Hyper-parameters.
        tokenizer: The tokenizer the features were made with (it pads them).
        loss_fn: ``loss_fn(model, batch) -> loss`` for objectives the model does not compute itself.
        collate_fn: Turns a list of features into a batch (default :func:`padding_collator`).
        desc: Progress-bar label.

    Returns:
        A :class:`TrainHistory`. The model is left in eval mode on its original device.

    Raises:
        ValueError: No training features.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from ..training.memory import keep_freed_memory
    from ..training.optim import param_groups
    from ..training.precision import make_accelerator

    if len(features) == 0:
        raise ValueError(f"{desc}: the training split is empty; give at least one example.")
    if _precision(cfg) == "fp16" and not torch.cuda.is_available():
        # accelerate silently trains in fp32 when asked for fp16 on a CPU (its loss scaling is GPU-only).
        raise ValueError(f"{desc}: precision='fp16' fine-tunes on a GPU only (fp16 gradients need accelerate's loss "
                         "scaling, which it runs on GPUs); use precision='bf16' or 'fp32' on CPU.")
    collate_fn = collate_fn or padding_collator(tokenizer)
    accelerator = make_accelerator(_precision(cfg))
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    set_seed(cfg.seed)
    batches = _training_batches([len(f["input_ids"]) for f in features], cfg, accelerator.process_index,
                                accelerator.num_processes)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    total = len(batches)  # optimisation steps of this process (every process takes as many)
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
    tokenizer: Any,
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
        tokenizer: The tokenizer the features were made with (it pads them).
        collate_fn: Default :func:`padding_collator`.
        desc: Progress-bar label.
        precision: As :attr:`FinetuneConfig.precision`.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    if len(features) == 0:
        return []
    state = PartialState(cpu=not torch.cuda.is_available())
    collate_fn = collate_fn or padding_collator(tokenizer)
    batches = _shard(length_bucketed_batches([len(f["input_ids"]) for f in features], batch_size=batch_size),
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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are shown with 4 significant decimals."""

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = [
    "AUTOCAST_DTYPES",
    "FinetuneConfig",
    "TrainHistory",
    "finetune",
    "is_main_process",
    "markdown_table",
    "mean_std",
    "model_inputs",
    "padding_collator",
    "predict",
]
