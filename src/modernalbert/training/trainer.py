"""MLM + distillation pretraining on one CPU, one GPU or many (``accelerate`` / ``torchrun``: DDP, FSDP).

Commands (the recipe is a YAML file; any key can be overridden as ``section.key=value``)::

    # one process: CPU (fp32) or one GPU (bf16 autocast)
    modernalbert pretrain recipes/cpu-smoke.yaml
    # several GPUs of one machine (run `accelerate config` once, or pass flags)
    accelerate launch --multi_gpu --num_processes 8 -m modernalbert.cli.main pretrain recipes/gpu-base.yaml
    # several machines: the same on each node, with its rank
    accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank $NODE_RANK \\
        --main_process_ip $MASTER_ADDR --main_process_port 29500 -m modernalbert.cli.main pretrain recipes/gpu-base.yaml
    # torchrun works the same way
    torchrun --nproc_per_node 8 -m modernalbert.cli.main pretrain recipes/gpu-base.yaml

Exactness: every global batch and every MLM mask is a pure function of (seed, step, position in the step's global
batch), so a run resumed from a checkpoint sees exactly the data an uninterrupted run sees, and a run on P
processes, or with gradient accumulation, sees the same global batches as a run on one (each process takes a
contiguous shard; micro-batches follow each other). Token-level losses are normalised
by the global number of masked tokens, so data-parallel gradients equal single-process gradients. Dropout and the
router jitter draw from the global RNG, whose state every checkpoint saves per process.

The run is four named steps (as litgpt's ``pretrain``): :func:`setup` (accelerator, models, data, optimiser,
schedule, resumed state), :func:`fit` (the optimisation loop: :func:`train_step`, logging, :func:`validate`,
checkpoints), :func:`validate` (held-out losses) and :func:`save_final` (the final model folder).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..distill.losses import Distiller, held_out_losses
from ..model.configuration import ModernAlbertConfig
from ..model.modeling import ModernAlbertForMaskedLM, count_parameters
from ..utils.io import write_json, write_text
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from .data import MaskedBatches
from .memory import keep_freed_memory
from .optim import param_groups, wsd_schedule
from .precision import make_accelerator
from .recipe import Recipe


@dataclass
class TrainResult:
    """Where a run wrote its outputs, and its last held-out evaluation."""

    output_dir: Path
    final_dir: Path
    steps: int
    last_eval: dict[str, float]


@dataclass
class Run:
    """Everything a pretraining run holds between its steps (built by :func:`setup`)."""

    recipe: Recipe
    accelerator: Any
    tokenizer: Any
    teacher: torch.nn.Module | None
    distiller: Distiller  # the unwrapped objective (student + projections)
    model: torch.nn.Module  # the same, as the distributed engine wraps it
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Any  # FiniteBatches or StreamingBatches
    masker: MaskedBatches
    held: list[dict[str, torch.Tensor]]
    start: int
    state: dict[str, Any] = field(default_factory=lambda: {"tokens_seen": 0})
    last_eval: dict[str, float] = field(default_factory=dict)
    # Called on the main process with the first step's (data-parallel averaged) gradients, before clipping.
    on_first_gradients: Callable[[dict[str, torch.Tensor]], None] | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.recipe.output_dir)

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to ``metrics.jsonl`` (main process)."""
        if self.accelerator.is_main_process:
            with (self.out_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------------ setup


def build_models(recipe: Recipe):
    """Tokenizer, frozen teacher (or None) and the student (initialised from the teacher when asked)."""
    from ..distill.teacher import load_teacher
    from ..model.loading import load_tokenizer

    t = recipe.teacher
    teacher = None
    init_report = None
    attn = "eager" if recipe.distill.attention_weight > 0 else t.attn_implementation
    if t.name is not None:
        try:
            teacher = load_teacher(t.name, attn_implementation=attn).requires_grad_(False)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"Teacher {t.name!r} not found: {err}") from err
        except ValueError as err:
            raise ValueError(f"Teacher {t.name!r}: {err}") from err
        tokenizer = load_tokenizer(t.tokenizer or t.name)
    else:
        if not t.tokenizer:
            raise ValueError("Without a teacher, teacher.tokenizer must name the tokenizer to train with.")
        tokenizer = load_tokenizer(t.tokenizer)

    overrides = dict(recipe.model.overrides)
    vocab = teacher.config.vocab_size if teacher is not None else len(tokenizer)
    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("pad", "cls", "sep", "mask")}
    overrides.update(vocab_size=vocab, bos_token_id=ids["cls_token_id"], eos_token_id=ids["sep_token_id"], **ids)
    if attn:
        overrides["attn_implementation"] = attn
    config = ModernAlbertConfig.from_preset(recipe.model.preset, **overrides)
    if teacher is not None and t.init:
        from ..distill.init import init_from_teacher

        student, init_report = init_from_teacher(teacher, config, mapping=t.mapping,
                                                 layer_assignment=t.layer_assignment)
    else:
        student = ModernAlbertForMaskedLM(config)
    student.config.sparse_prediction = True  # logits only where there is a target: the decoder is the costliest GEMM
    return tokenizer, teacher, student, init_report


def _accelerator(recipe: Recipe) -> Any:
    tr = recipe.train
    gpu = torch.cuda.is_available()
    use_bf16 = tr.precision == "bf16" or (tr.precision == "auto" and gpu and torch.cuda.is_bf16_supported())
    accelerator = make_accelerator("bf16" if use_bf16 else "no")
    if use_bf16 and not gpu and accelerator.is_main_process:
        print("[modernalbert] train.precision=bf16 on CPU: correct, but much slower than fp32 on CPUs without "
              "native bf16 matrix instructions (train.precision=auto trains in fp32 on CPU)")
    if tr.keep_freed_memory and accelerator.device.type == "cpu":
        keep_freed_memory()
    return accelerator


def setup(recipe: Recipe) -> Run:
    """Build the run: accelerator, tokenizer, teacher, student and objective, data, optimiser and schedule, and the
    state of the latest checkpoint when the run resumes; writes ``recipe.json`` (and ``init_report.txt``).

    The order is fixed (seed, models, data, optimiser, resume): whether the packed corpus comes from the cache or is
    built must not change the random initialisation, and a resumed run restores the RNG after building everything.
    """
    from accelerate.utils import set_seed

    from .data import prepare_blocks

    tr = recipe.train
    accelerator = _accelerator(recipe)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(recipe.seed)  # the same initialisation on every process
    tokenizer, teacher, student, init_report = build_models(recipe)
    if tr.gradient_checkpointing:
        student.activation_checkpointing_enable()
    distiller = Distiller(student, teacher, recipe.distill)
    with accelerator.main_process_first():  # one process tokenises and caches; the others then read the cache
        batches, held_blocks = prepare_blocks(recipe, tokenizer, rank=rank, world_size=world,
                                              eval_blocks=tr.eval_batches * tr.batch_size)
    masker = MaskedBatches(tokenizer, recipe.seed)
    optimizer = torch.optim.AdamW(param_groups(distiller, recipe.optim.weight_decay), lr=recipe.optim.lr,
                                  betas=recipe.optim.betas, eps=recipe.optim.eps)
    resume_from = latest_checkpoint(recipe.output_dir) if tr.resume == "auto" else \
        (None if tr.resume in ("never", "", None) else Path(tr.resume))
    state = _resume(resume_from, distiller, optimizer, batches, accelerator) if resume_from else {"tokens_seen": 0}
    start = int(state.get("step", 0))
    scheduler = wsd_schedule(optimizer, recipe.optim, tr.steps, start)
    model, optimizer = accelerator.prepare(distiller, optimizer)
    distiller.teacher_to(accelerator.device)
    run = Run(recipe, accelerator, tokenizer, teacher, accelerator.unwrap_model(model), model, optimizer, scheduler,
              batches, masker, masker.fixed(held_blocks, tr.batch_size), start, state)
    if accelerator.is_main_process:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(run.out_dir / "recipe.json", recipe.to_dict())
        if init_report is not None and start == 0:
            write_text(run.out_dir / "init_report.txt", str(init_report) + "\n")
        print(f"[modernalbert] student: {count_parameters(student)}; teacher: "
              f"{type(teacher).__name__ if teacher else None}; {world} process(es)"
              + (f"; resuming from {resume_from}" if resume_from else ""))
    return run


def _resume(path: Path, distiller: Distiller, optimizer: torch.optim.Optimizer, batches: Any,
            accelerator: Any) -> dict[str, Any]:
    """Load a checkpoint into the objective, optimiser, data position and RNG; returns the trainer state."""
    ckpt = load_checkpoint(path, accelerator.process_index)
    student = distiller.student
    missing, unexpected = student.load_state_dict(ckpt["student"], strict=False)
    tied = set(getattr(student, "all_tied_weights_keys", {}) or {})
    if set(missing) - tied or unexpected:
        raise ValueError(f"Checkpoint {path} does not fit this recipe's model (missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}).")
    student.tie_weights()
    if ckpt["extra"]:
        distiller.projections.load_state_dict(ckpt["extra"])
    if ckpt["optimizer"] is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    elif accelerator.is_main_process:
        print(f"[modernalbert] {path} holds no optimizer state (an FSDP run): AdamW restarts its moments")
    state = ckpt["trainer"]
    batches.load_state_dict(state["data"])
    if ckpt["rng"] is not None and state.get("world_size") == accelerator.num_processes:
        set_rng_state(*ckpt["rng"])
    return state


# ------------------------------------------------------------------------------------------------------ steps


def train_step(run: Run, step: int) -> tuple[dict[str, float], float, Any]:
    """One optimisation step: every micro-batch's forward and backward, clipping, the AdamW and schedule steps.

    Returns:
        ``(losses, grad_norm, last_output)``: the step's loss parts (averaged over micro-batches), the gradient
        norm before clipping, and the last micro-batch's :class:`~modernalbert.distill.losses.DistillOutput`.

    Raises:
        FloatingPointError: A non-finite loss or gradient (the update is not applied).
    """
    recipe, accelerator, tr = run.recipe, run.accelerator, run.recipe.train
    world = accelerator.num_processes
    micro_batches = []
    for micro in range(tr.grad_accum):
        blocks, positions = run.batches.next_batch()  # this process's shard and its global positions
        offset = micro * tr.batch_size * world  # micro-batches follow each other in the step's global batch
        micro_batches.append(run.masker(blocks, step, [offset + p for p in positions]))
    local_masked = torch.tensor(float(sum(int((b["labels"] != -100).sum()) for b in micro_batches)),
                                device=accelerator.device)
    masked_per_rank = accelerator.reduce(local_masked, reduction="sum") / world
    sums: dict[str, float] = {}
    for micro, b in enumerate(micro_batches):
        b = {k: v.to(accelerator.device) for k, v in b.items()}
        last = micro == tr.grad_accum - 1
        ctx = accelerator.no_sync(run.model) if not last else contextlib.nullcontext()
        with ctx, accelerator.autocast():
            out = run.model(**b, masked_per_rank=masked_per_rank, micro_batches=tr.grad_accum)
            accelerator.backward(out.loss)
        for k, v in out.parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) / tr.grad_accum
    if run.on_first_gradients is not None and step == run.start and accelerator.is_main_process:
        run.on_first_gradients({n: p.grad.detach().clone() for n, p in run.distiller.named_parameters()
                                if p.grad is not None})
    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), recipe.optim.clip_grad_norm)
    if not math.isfinite(float(grad_norm)) or not all(math.isfinite(v) for v in sums.values()):
        raise FloatingPointError(
            f"Non-finite loss or gradient at step {step} (grad norm {float(grad_norm)}, losses {sums}): "
            "training stopped before the update. Lower optim.lr, check the data, or resume from the last "
            f"checkpoint in {run.out_dir / 'checkpoints'}."
        )
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return sums, float(grad_norm), out


def validate(run: Run, step: int) -> dict[str, float]:
    """Held-out losses (every loss part, on the fixed held-out batches), logged as ``eval_*``."""
    losses = held_out_losses(run.model, run.held, device=run.accelerator.device, autocast=run.accelerator.autocast)
    result = {f"eval_{k}": v for k, v in losses.items()}
    run.log({"step": step, **result})
    return result


def _gathered(run: Run) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    full = run.accelerator.get_state_dict(run.model)  # full (gathered) state under FSDP too
    student_state = {k[len("student."):]: v for k, v in full.items() if k.startswith("student.")}
    extra = {k[len("projections."):]: v for k, v in full.items() if k.startswith("projections.")}
    return student_state, extra


def save(run: Run, step: int) -> None:
    """Write checkpoint ``step`` (every process takes part)."""
    from accelerate.utils import DistributedType

    accelerator = run.accelerator
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    student_state, extra = _gathered(run)
    save_checkpoint(run.out_dir, step, student=run.distiller.student, student_state=student_state, extra_state=extra,
                    # Under FSDP each process holds a shard of the optimizer state: not saved (yet); the
                    # model weights are gathered in full. Resuming then restarts AdamW's moments.
                    optimizer_state=(run.optimizer.state_dict() if accelerator.is_main_process and not fsdp
                                     else None),
                    trainer_state={"data": run.batches.state_dict(), "tokens_seen": run.state["tokens_seen"],
                                   "recipe": run.recipe.to_dict()},
                    rank=accelerator.process_index, world_size=accelerator.num_processes,
                    barrier=accelerator.wait_for_everyone, keep=run.recipe.train.keep_checkpoints)


def fit(run: Run, *, on_step_end: Callable[[int, dict[str, float]], None] | None = None,
        stop_after_steps: int | None = None) -> bool:
    """The optimisation loop from ``run.start`` to ``train.steps``: steps, logging, held-out evaluation and
    checkpoints. Returns False when ``stop_after_steps`` stopped it early (``run.state["step"]``: the last step
    done)."""
    from tqdm.auto import tqdm

    recipe, accelerator, tr = run.recipe, run.accelerator, run.recipe.train
    world = accelerator.num_processes
    run.model.train()
    bar = tqdm(total=tr.steps, initial=run.start, disable=not accelerator.is_main_process, desc="pretrain",
               dynamic_ncols=True)
    t0, tokens0 = time.perf_counter(), run.state["tokens_seen"]
    for step in range(run.start, tr.steps):
        sums, grad_norm, out = train_step(run, step)
        run.state["tokens_seen"] += tr.grad_accum * tr.batch_size * world * recipe.data.block_size
        bar.update(1)
        done = step + 1
        if done % tr.log_every == 0 or done == tr.steps:
            rate = (run.state["tokens_seen"] - tokens0) / max(1e-9, time.perf_counter() - t0)
            usage = out.expert_usage.detach().float().cpu().tolist() if out.expert_usage is not None else None
            run.log({"step": done, "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                     "tokens_seen": run.state["tokens_seen"], "tokens_per_s": rate * world, **sums,
                     "expert_usage": usage})
            bar.set_postfix(mlm=f"{sums.get('mlm', 0.0):.3f}", hidden=f"{sums.get('hidden', 0.0):.3f}")
        if done % tr.eval_every == 0 or done == tr.steps:
            run.last_eval = validate(run, done)
        if done % tr.save_every == 0 and done < tr.steps:
            save(run, done)
        if on_step_end is not None:
            on_step_end(done, sums)
        if stop_after_steps is not None and done - run.start >= stop_after_steps:
            run.state["step"] = done
            bar.close()
            return False
    bar.close()
    return True


def save_final(run: Run) -> Path:
    """The last checkpoint and the final model folder (``OUTPUT_DIR/final``: model and tokenizer)."""
    save(run, run.recipe.train.steps)
    final = run.out_dir / "final"
    student_state, _ = _gathered(run)  # every process takes part in gathering (FSDP)
    if run.accelerator.is_main_process:
        run.distiller.student.save_pretrained(final, state_dict=student_state)
        run.tokenizer.save_pretrained(final)
    run.accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------------------------------- entry


def pretrain(recipe: Recipe, *, on_first_gradients: Callable[[dict[str, torch.Tensor]], None] | None = None,
             on_step_end: Callable[[int, dict[str, float]], None] | None = None,
             stop_after_steps: int | None = None) -> TrainResult:
    """Run (or resume) a pretraining recipe in this process (one of P when launched by accelerate / torchrun).

    Args:
        recipe: The run.
        on_first_gradients: Optional callback ``f(named_gradients: dict)`` called on the main process with the
            (data-parallel averaged) gradients of the first optimisation step, before clipping (for verification).
        on_step_end: Optional callback ``f(step: int, losses: dict[str, float])`` called on every process after
            each optimisation step (and after that step's checkpoint, if any).
        stop_after_steps: Stop (without the final save) after this many steps of this invocation.

    Returns:
        A :class:`TrainResult`.
    """
    run = setup(recipe)
    run.on_first_gradients = on_first_gradients
    if not fit(run, on_step_end=on_step_end, stop_after_steps=stop_after_steps):
        return TrainResult(run.out_dir, run.out_dir / "final", run.state["step"], run.last_eval)
    return TrainResult(run.out_dir, save_final(run), recipe.train.steps, run.last_eval)


__all__ = ["Run", "TrainResult", "build_models", "fit", "pretrain", "save", "save_final", "setup", "train_step",
           "validate"]
