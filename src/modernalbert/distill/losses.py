"""MLM + knowledge-distillation objective: a frozen teacher, a ModernAlbert MaskedLM student, and their losses.

Loss parts (each returned separately for logging; the weights are ours, following the authors' earlier MiniALBERT
recipe: MLM 1, hidden / attention 3, logits 5, temperature 1):

* ``mlm``: cross-entropy on the masked positions (30 %, 80/10/10; the data pipeline masks), as the student's MLM
  head computes it (the head owns that loss);
* ``hidden``: hidden-state distillation on a student <-> teacher layer map, ``1 - cosine`` (default) or MSE, over
  real tokens; a learned bias-free projection maps student width to teacher width when they differ (one per mapped
  layer, trained with the student);
* ``attention``: KL(teacher || student) of attention distributions on the mapped layers, over real query rows
  (needs eager attention in both; heads are averaged when the head counts differ);
* ``logits``: KL(teacher || student) of MLM distributions at masked positions, scaled by T^2 (only when the
  teacher has an MLM head with the same vocabulary);
* ``router_aux`` / ``router_z``: the student's router losses, weighted by its config coefficients.

Every part is computed in fp32 from fp32 casts of the student's and the teacher's values, whatever the student's
dtype or autocast state; teacher values are never rounded to the student's (16-bit) dtype first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.modeling import ModernAlbertForMaskedLM
from .config import DistillConfig


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer i (1-based) -> teacher layer round(i * T / L); deduplicated so each teacher layer is used once
    (the deepest student layer wins), and the last layers always aligned."""
    out: dict[int, int] = {}
    for i in range(1, student_layers + 1):
        out[i] = max(1, round(i * teacher_layers / student_layers))
    by_teacher = {t: s for s, t in out.items()}  # keeps the deepest student layer per teacher layer
    return {s: t for t, s in sorted(by_teacher.items())}


@dataclass
class DistillOutput:
    """The total loss and each (unweighted) part; ``parts`` values are detached scalars for logging."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    expert_usage: torch.Tensor | None = None


def _teacher_width(teacher: nn.Module) -> int:
    return int(teacher.config.hidden_size)


def _has_mlm_head(teacher: nn.Module) -> bool:
    return teacher.get_output_embeddings() is not None if hasattr(teacher, "get_output_embeddings") else False


class Distiller(nn.Module):
    """Student + learned projections (registered, trained) and a frozen teacher (deliberately *not* registered:
    it is neither trained, checkpointed nor wrapped by the distributed engine; :meth:`teacher_to` moves it).

    Args:
        student: A ModernAlbert MaskedLM model.
        teacher: A frozen Hugging Face encoder (base or MLM head model) with the student's vocabulary, or None for
            plain MLM training.
        config: The loss weights and options.
    """

    def __init__(self, student: ModernAlbertForMaskedLM, teacher: nn.Module | None = None,
                 config: DistillConfig | None = None):
        super().__init__()
        self.student = student
        self.config = config or DistillConfig()
        object.__setattr__(self, "teacher", teacher)  # unregistered on purpose (see the class docstring)
        self.layer_map: dict[int, int] = {}
        self.projections = nn.ModuleDict()
        if teacher is None:
            return
        teacher.requires_grad_(False).eval()
        tcfg = teacher.config
        if getattr(tcfg, "vocab_size", None) != student.config.vocab_size:
            raise ValueError(
                f"Teacher vocabulary ({getattr(tcfg, 'vocab_size', None)}) differs from the student's "
                f"({student.config.vocab_size}): the student must use the teacher's tokenizer."
            )
        L, T = student.config.num_hidden_layers, int(tcfg.num_hidden_layers)
        self.layer_map = dict(self.config.layer_map) if self.config.layer_map else uniform_layer_map(L, T)
        for s, t in self.layer_map.items():
            if not (1 <= s <= L and 1 <= t <= T):
                raise ValueError(f"distill.layer_map entry {s}: {t} is out of range (student layers 1..{L}, "
                                 f"teacher layers 1..{T}).")
        if self.config.attention_weight > 0:
            impls = (student.config._attn_implementation, getattr(tcfg, "_attn_implementation", None))
            if impls != ("eager", "eager"):
                raise ValueError(
                    f"Attention distillation needs eager attention in student and teacher (got {impls}): load both "
                    "with attn_implementation='eager', or set distill.attention_weight: 0."
                )
        d_s, d_t = student.config.hidden_size, _teacher_width(teacher)
        if self.config.hidden_weight > 0 and d_s != d_t:
            self.projections = nn.ModuleDict(
                {str(s): nn.Linear(d_s, d_t, bias=False) for s in self.layer_map}  # student width -> teacher width
            )
        self.use_logits = self.config.logit_weight > 0 and _has_mlm_head(teacher)

    def teacher_to(self, device: torch.device | str) -> None:
        """Move the (unregistered) teacher to ``device``."""
        if self.teacher is not None:
            self.teacher.to(device)

    def _hidden_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.config.hidden_loss == "cosine":
            return (1 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()
        return F.mse_loss(s.float(), t.float())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, masked_per_rank: torch.Tensor | float | None = None,
                micro_batches: int = 1) -> DistillOutput:
        """Compute the objective on one batch of masked inputs ((B, L) ids, mask, labels with -100 elsewhere).

        ``masked_per_rank``: the number of masked tokens in the *global* batch divided by the number of processes.
        Token-level losses (MLM, logit KL) are sums over this rank's masked tokens divided by it, so that the
        gradient average a data-parallel engine takes equals the single-process mean over the global batch exactly.
        ``None`` uses this batch's own count (single process). ``micro_batches``: gradient-accumulation steps of
        one optimisation step; the mean-type losses (hidden, attention, router) are divided by it so that the
        accumulated gradient is the mean over the whole step."""
        cfg, teacher = self.config, self.teacher
        need_hidden = teacher is not None and cfg.hidden_weight > 0
        need_attn = teacher is not None and cfg.attention_weight > 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.student(input_ids, attention_mask=attention_mask, labels=labels, output_router_logits=True,
                           output_hidden_states=need_hidden, output_attentions=need_attn)
        scfg = self.student.config
        device = input_ids.device
        zero = torch.zeros((), device=device)
        router_aux = out.router_aux_loss if out.router_aux_loss is not None else zero
        router_z = out.router_z_loss if out.router_z_loss is not None else zero
        # Router losses are per-device statistics (as in Switch / GShard), weighted by the student's coefficients.
        router = scfg.router_aux_loss_coef * router_aux + scfg.router_z_loss_coef * router_z
        real = attention_mask.bool()  # (B, L)
        select = (labels != -100) & real if labels is not None else None  # (B, L) masked positions
        mlm, denom = zero, None
        if select is not None:
            denom = (select.sum() if masked_per_rank is None else torch.as_tensor(masked_per_rank)).to(device)
            denom = denom.float().clamp_min(1.0)
            # The student head owns the MLM loss: its mean cross-entropy over this batch's masked tokens (its loss
            # also holds the weighted router losses, taken off here). Times count / denom, the mean becomes the sum
            # over this rank's masked tokens divided by the global per-rank count.
            mlm = (out.loss - router) * (select.sum() / denom)
        per_micro = 1.0 / micro_batches
        total = cfg.mlm_weight * mlm + per_micro * router
        parts: dict[str, torch.Tensor] = {"mlm": mlm * micro_batches, "router_aux": router_aux, "router_z": router_z}
        if teacher is not None and (need_hidden or need_attn or self.use_logits):
            # Without the logit loss the teacher's base model suffices: a MaskedLM teacher's decoder over every
            # token (V outputs each) would be its costliest GEMM, computed for nothing.
            encoder = teacher if self.use_logits else teacher.base_model
            with torch.no_grad():
                t_out = encoder(input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=need_hidden, output_attentions=need_attn)
            if need_hidden:
                parts["hidden"] = self._hidden_part(out, t_out, real)
                total = total + per_micro * cfg.hidden_weight * parts["hidden"]
            if need_attn:
                parts["attention"] = self._attention_part(out, t_out, real)
                total = total + per_micro * cfg.attention_weight * parts["attention"]
            if self.use_logits and select is not None:
                kl = self._logit_part(out, t_out, select, denom)
                parts["logits"] = kl * micro_batches
                total = total + cfg.logit_weight * kl
        return DistillOutput(total, {k: v.detach() for k, v in parts.items()}, out.expert_usage)

    def _hidden_part(self, out: Any, t_out: Any, real: torch.Tensor) -> torch.Tensor:
        """Mean over the layer map of the hidden-state loss over real tokens."""
        losses = []
        for s, t in self.layer_map.items():
            h_s = out.hidden_states[s][real]  # (N, d_s)
            h_t = t_out.hidden_states[t][real]  # (N, d_t), never rounded to the student's dtype
            if str(s) in self.projections:
                h_s = self.projections[str(s)](h_s)  # (N, d_t)
            losses.append(self._hidden_loss(h_s, h_t))
        return torch.stack(losses).mean()

    def _attention_part(self, out: Any, t_out: Any, real: torch.Tensor) -> torch.Tensor:
        """Mean over the layer map of KL(teacher || student) of attention rows, over real query rows."""
        losses = []
        for s, t in self.layer_map.items():
            a_s, a_t = out.attentions[s - 1], t_out.attentions[t - 1]  # (B, h, L, L)
            if a_s.shape[1] != a_t.shape[1]:
                a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)  # (B, 1, L, L)
            rows = real[:, None, :, None].expand_as(a_s)  # real query rows
            kl = a_t.float() * (a_t.float().clamp_min(1e-12).log() - a_s.float().clamp_min(1e-12).log())
            losses.append((kl * rows).sum() / rows[..., 0].sum().clamp_min(1))
        return torch.stack(losses).mean()

    def _logit_part(self, out: Any, t_out: Any, select: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) of the MLM distributions at masked positions, times T^2, summed over this rank's
        masked tokens and divided by ``denom``."""
        s_logits = out.logits if out.logits.dim() == 2 else out.logits[select]  # (M, V)
        t_logits = t_out.logits[select]  # (M, V), compared in fp32 below
        T = self.config.temperature
        return F.kl_div(F.log_softmax(s_logits.float() / T, -1), F.log_softmax(t_logits.float() / T, -1),
                        log_target=True, reduction="sum") * T * T / denom


@torch.no_grad()
def held_out_losses(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], *, device: torch.device | str,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    ) -> dict[str, float]:
    """Every loss part of a :class:`Distiller` (or an ``accelerate``-wrapped one), averaged over fixed masked
    batches: the one held-out evaluation of the package (the trainer's ``eval_*`` records, the ablation's MLM
    losses). The model is put in eval mode and back.

    Args:
        model: A :class:`Distiller` (``Distiller(student, None, ...)`` scores a MaskedLM alone), possibly wrapped.
        batches: Masked batches (``input_ids``, ``attention_mask``, ``labels``), e.g.
            :meth:`~modernalbert.training.data.MaskedBatches.fixed`.
        device: Where the batches go.
        autocast: A context-manager factory for the forward passes (e.g. ``accelerator.autocast``).

    Returns:
        Part name (``mlm``, ``hidden`` ...) -> mean over batches.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        with autocast():
            parts = model(**b).parts  # through a wrapper: FSDP gathers its shards in forward
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    return {k: v / max(1, len(batches)) for k, v in sums.items()}


__all__ = ["DistillOutput", "Distiller", "held_out_losses", "uniform_layer_map"]
