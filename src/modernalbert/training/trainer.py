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

Nothing is lost or mixed up: the output folder is locked for the run's lifetime (the main process holds the lock;
another run on the folder stops at once, naming the holder); resuming takes the newest checkpoint, verified against
its manifest, and refuses one that is damaged or does not fit (step beyond ``train.steps``, another data position,
process count or model), with a message naming the file and the way out; weights and optimizer state are checked
finite before every checkpoint, so a diverging run stops with its last finite checkpoint as the newest; a full disk is
reported as such. Under FSDP the sharded model and optimizer state are saved and restored with PyTorch DCP (see
:mod:`~modernalbert.training.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..distill.losses import Distiller, held_out_losses
from ..model.configuration import ModernAlbertConfig
from ..model.modeling import ModernAlbertForMaskedLM, count_parameters
from ..utils.io import atomic_folder, reporting_disk_full, write_json, write_text
from ..utils.locking import FolderLock
from .checkpoint import (
    TRAINER_STATE,
    CheckpointError,
    checkpoint_dir,
    checkpoint_name,
    checkpoints,
    find_checkpoint,
    load_checkpoint,
    nonfinite,
    remove_leftovers,
    save_checkpoint,
    training_state,
    verify_checkpoint,
)
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
    lock: FolderLock | None = None  # the output folder's lock (main process)
    run_id: str = ""  # unique to this run: its staging folders' names
    last_checkpoint: Path | None = None  # the newest checkpoint (written or resumed from)

    @property
    def out_dir(self) -> Path:
        return Path(self.recipe.output_dir)

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to ``metrics.jsonl`` (main process)."""
        if self.accelerator.is_main_process:
            with reporting_disk_full(self.out_dir, "metrics.jsonl"), (self.out_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Release the output folder (the end of the run)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


RUN_LOCK = ".modernalbert-run.lock"


def setup(recipe: Recipe) -> Run:
    """Build the run: accelerator, the output folder's lock, tokenizer, teacher, student and objective, data,
    optimiser and schedule, and the state of the checkpoint the run resumes from; writes ``recipe.json`` (and
    ``init_report.txt``). Release the lock with :meth:`Run.close` (or use the run as a context manager).

    The order is fixed (seed, models, data, optimiser, resume): whether the packed corpus comes from the cache or is
    built must not change the random initialisation, and a resumed run restores the RNG after building everything.

    Raises:
        FolderLockedError: Another run holds the output folder.
        CheckpointError: The checkpoint to resume from is damaged or does not fit this recipe.
    """
    from accelerate.utils import set_seed

    from .data import prepare_blocks

    tr = recipe.train
    accelerator = _accelerator(recipe)
    rank, world = accelerator.process_index, accelerator.num_processes
    lock = _lock_output_dir(accelerator, Path(recipe.output_dir))
    try:
        run_id, resume_from = _on_main(accelerator, lambda: (uuid.uuid4().hex[:12], _resume_point(recipe, world)))
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
        model, prepared = accelerator.prepare(distiller, optimizer)  # FSDP shards here: state is loaded after
        distiller.teacher_to(accelerator.device)
        state = _resume(resume_from, recipe, model, optimizer, batches, accelerator) if resume_from else \
            {"tokens_seen": 0}
        start = int(state.get("step", 0))
        scheduler = wsd_schedule(optimizer, recipe.optim, tr.steps, start)
        run = Run(recipe, accelerator, tokenizer, teacher, accelerator.unwrap_model(model), model, prepared,
                  scheduler, batches, masker, masker.fixed(held_blocks, tr.batch_size), start, state, lock=lock,
                  run_id=run_id, last_checkpoint=resume_from)
        if accelerator.is_main_process:
            with reporting_disk_full(run.out_dir, "recipe.json"):
                write_json(run.out_dir / "recipe.json", recipe.to_dict())
                if init_report is not None and start == 0:
                    write_text(run.out_dir / "init_report.txt", str(init_report) + "\n")
            print(f"[modernalbert] student: {count_parameters(student)}; teacher: "
                  f"{type(teacher).__name__ if teacher else None}; {world} process(es)"
                  + (f"; resuming from {resume_from}" if resume_from else ""))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run


def _on_main(accelerator: Any, decide: Callable[[], Any]) -> Any:
    """Run ``decide`` on the main process and give every process its result, or its error (raised everywhere)."""
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            outcome[0] = decide()
        except Exception as err:  # raised on every process, so that none waits for the others
            outcome[1] = err
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def _lock_output_dir(accelerator: Any, out: Path) -> FolderLock | None:
    """Lock the output folder for the run (main process; the others learn whether it could)."""
    lock = FolderLock(out, name=RUN_LOCK, purpose="pretraining run") if accelerator.is_main_process else None

    def take() -> None:
        left = lock.acquire()
        if left is not None:
            print(f"[modernalbert] {out}: took over the lock left by {left.describe()}, which ended without "
                  "releasing it (killed or crashed)")

    _on_main(accelerator, take)
    return lock


def _resume_point(recipe: Recipe, world: int) -> Path | None:
    """The verified checkpoint to resume from, or None for a fresh run (main process, holding the lock).

    Raises:
        CheckpointError: It is damaged, beyond ``train.steps``, followed by later checkpoints a resumed run would
            overwrite, or written by another process count while the RNG is to be restored.
    """
    out, tr = Path(recipe.output_dir), recipe.train
    gone = remove_leftovers(out)
    if gone:
        print(f"[modernalbert] removed the unfinished checkpoint folder(s) of an interrupted save: {gone}")
    existing = checkpoints(out)
    if tr.resume == "never":
        if existing:
            raise CheckpointError(f"train.resume=never, but {checkpoint_dir(out)} holds checkpoints (up to "
                                  f"{existing[max(existing)].name}) that a fresh run would overwrite: resume them "
                                  "(train.resume=auto) or use another output_dir.")
        return None
    if tr.resume == "auto":
        path, notes = find_checkpoint(out)
        for note in notes:
            print(f"[modernalbert] {note}")
        if path is None:
            return None
    else:
        path = Path(tr.resume).expanduser()
        if existing and path.resolve().parent != checkpoint_dir(out).resolve():
            raise CheckpointError(f"{checkpoint_dir(out)} holds another run's checkpoints (up to "
                                  f"{existing[max(existing)].name}): resuming {path} there would mix two runs. "
                                  "Use an empty output_dir.")
    state = verify_checkpoint(path)
    step = int(state["step"])
    if step > tr.steps:
        raise CheckpointError(f"Checkpoint {path} is at step {step}, beyond train.steps={tr.steps}: resuming cannot "
                              f"go back. Raise train.steps to {step} or more to continue this run, or use another "
                              "output_dir for a shorter one.")
    later = [p.name for s, p in existing.items() if s > step]
    if later:
        raise CheckpointError(f"{checkpoint_dir(out)} holds checkpoints after step {step} ({later}) that resuming "
                              f"from {path} would overwrite: resume from the newest (train.resume=auto), move them "
                              "out of the folder, or use another output_dir.")
    if int(state["world_size"]) != world and tr.resume_rng == "restore":
        raise CheckpointError(f"Checkpoint {path} was written by {state['world_size']} process(es), this run has "
                              f"{world}: their random states (dropout, router jitter) cannot be restored, so the run "
                              f"would not continue exactly. Relaunch with {state['world_size']} process(es), or set "
                              "train.resume_rng=reseed to continue with fresh random states.")
    return path


def _resume(path: Path, recipe: Recipe, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Any,
            accelerator: Any) -> dict[str, Any]:
    """Load a verified checkpoint into the prepared model and optimiser, the data position and the RNG; returns the
    trainer state. Every process checks the same files the same way, so all refuse together."""
    from accelerate.utils import set_seed

    saved = json.loads((path / TRAINER_STATE).read_text())
    step, world = int(saved["step"]), accelerator.num_processes
    _check_data_position(path, saved, batches.state_after(step * recipe.train.grad_accum))
    try:
        batches.load_state_dict(saved["data"])
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path / TRAINER_STATE}: data position {saved['data']} does not fit this run's data "
                              f"({err}). Resume with the checkpoint's own recipe, or use another output_dir.") from err
    exact = int(saved["world_size"]) == world
    state = load_checkpoint(path, model=model, optimizer=optimizer, buffers=_buffers(model, accelerator),
                            rank=accelerator.process_index, per_process=exact)
    if not exact:  # train.resume_rng=reseed: the process count changed
        set_seed(recipe.seed + 1_000_003 * step + accelerator.process_index)
        if accelerator.is_main_process:
            print(f"[modernalbert] {path} was written by {saved['world_size']} process(es): random states reseeded "
                  "(train.resume_rng=reseed), so this run does not continue exactly")
    return state


def _check_data_position(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """The saved data position must be the one ``step`` implies, with this run's data and batch settings."""
    data = saved["data"]
    settings = [k for k in expected if k not in ("epoch", "offset", "blocks_consumed") and data.get(k) != expected[k]]
    if settings:
        diff = ", ".join(f"{k}: checkpoint {data.get(k)!r}, this run {expected[k]!r}" for k in settings)
        raise CheckpointError(f"Checkpoint {path} was written with other data or batch settings ({diff}; the global "
                              "batch is train.batch_size x processes). Resume with the checkpoint's recipe and "
                              "process count, or use another output_dir.")
    if data != expected:
        raise CheckpointError(f"{path / TRAINER_STATE} is inconsistent: step {saved['step']} implies data position "
                              f"{expected}, the file says {data} (edited, or written by another version). "
                              "Resume from another checkpoint, or use another output_dir.")


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
    max_norm = recipe.optim.clip_grad_norm if recipe.optim.clip_grad_norm is not None else math.inf  # inf: norm only
    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), max_norm)
    if not math.isfinite(float(grad_norm)) or not all(math.isfinite(v) for v in sums.values()):
        raise FloatingPointError(
            f"Non-finite loss or gradient at step {step} (grad norm {float(grad_norm)}, losses {sums}): "
            f"training stopped before the update. The last checkpoint is {_last(run)}: lower optim.lr (or set "
            "optim.clip_grad_norm), check the data, and resume from it."
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


def _buffers(model: torch.nn.Module, accelerator: Any) -> dict[str, torch.Tensor]:
    """The module's persistent buffers by canonical name (without the DDP wrapper's prefix)."""
    module = accelerator.unwrap_model(model)
    transient = {f"{prefix}.{name}".lstrip(".") for prefix, m in module.named_modules()
                 for name in getattr(m, "_non_persistent_buffers_set", ())}
    return {name: b for name, b in module.named_buffers() if name not in transient}


def _last(run: Run) -> str:
    return str(run.last_checkpoint) if run.last_checkpoint is not None else "none (no checkpoint was written yet)"


def save(run: Run, step: int) -> None:
    """Write checkpoint ``step`` (every process takes part), after checking weights and optimizer state finite.

    Raises:
        FloatingPointError: A weight or optimizer statistic is NaN or infinite (nothing is written: the previous
            checkpoint stays the newest).
        OSError: The disk is full (``ENOSPC``; the message names the folder).
    """
    accelerator = run.accelerator
    state = training_state(run.model, run.optimizer)
    bad = nonfinite(*state)  # this process's shards
    flag = torch.tensor(float(len(bad)), device=accelerator.device)
    if accelerator.reduce(flag, reduction="sum").item() > 0:
        where = f"in {bad[:3]}" + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") if bad else \
            "on another process"
        raise FloatingPointError(
            f"Non-finite weights or optimizer state at step {step} ({where}): the run diverged, so "
            f"{checkpoint_name(step)} was not written. The last checkpoint is {_last(run)}: lower optim.lr (or set "
            "optim.clip_grad_norm) and resume from it.")
    run.last_checkpoint = save_checkpoint(
        run.out_dir, step, accelerator=accelerator, state=state, buffers=_buffers(run.model, accelerator),
        student=run.distiller.student,
        gathered=_gathered(run), run_id=run.run_id, keep=run.recipe.train.keep_checkpoints,
        trainer_state={"data": run.batches.state_dict(), "tokens_seen": run.state["tokens_seen"],
                       "recipe": run.recipe.to_dict()})


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
    """The last checkpoint and the final model folder (``OUTPUT_DIR/final``: model and tokenizer, replaced
    atomically)."""
    if run.recipe.train.steps > run.start:  # else this run resumed a finished one: its checkpoint exists
        save(run, run.recipe.train.steps)
    final = run.out_dir / "final"
    student_state, _ = _gathered(run)  # every process takes part in gathering (FSDP)
    if run.accelerator.is_main_process:
        with reporting_disk_full(run.out_dir, "the final model"), atomic_folder(final) as staging:
            run.distiller.student.save_pretrained(staging, state_dict=student_state)
            run.tokenizer.save_pretrained(staging)
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

    Raises:
        FolderLockedError: Another run holds ``recipe.output_dir``.
        CheckpointError: The checkpoint to resume from is damaged or does not fit the recipe.
        FloatingPointError: The run diverged (non-finite loss, gradient, weight or optimizer state).
        OSError: ``ENOSPC``: the disk filled up (earlier checkpoints are intact).
    """
    with setup(recipe) as run:  # the output folder stays locked until the run ends, however it ends
        run.on_first_gradients = on_first_gradients
        if not fit(run, on_step_end=on_step_end, stop_after_steps=stop_after_steps):
            return TrainResult(run.out_dir, run.out_dir / "final", run.state["step"], run.last_eval)
        return TrainResult(run.out_dir, save_final(run), recipe.train.steps, run.last_eval)


__all__ = ["RUN_LOCK", "Run", "TrainResult", "build_models", "fit", "pretrain", "save", "save_final", "setup",
           "train_step", "validate"]
