"""MLM + knowledge-distillation objective: a frozen teacher, a ModernAlbert MaskedLM student, and their losses.

Loss parts (each returned separately for logging; the weights are ours, following the authors' earlier MiniALBERT
recipe: MLM 1, hidden / attention 3, logits 5, temperature 1):

* ``mlm``: cross-entropy on the masked positions (30 %, 80/10/10; the data pipeline masks);
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

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.modeling import ModernAlbertForMaskedLM
from ..utils import dataclass_from_mapping

HIDDEN_LOSSES = ("cosine", "mse")


@dataclass
class DistillConfig:
    """Weights and options of the distillation objective (defaults are ours; see the module docstring).

    Attributes:
        mlm_weight: Weight of the MLM cross-entropy.
        hidden_weight: Weight of the hidden-state loss (0 disables it and the teacher's hidden states).
        attention_weight: Weight of the attention KL (0 disables; > 0 needs eager attention in both models).
        logit_weight: Weight of the logit KL (used only when the teacher has an MLM head).
        temperature: Softmax temperature of the logit KL.
        hidden_loss: ``"cosine"`` (1 - cosine similarity) or ``"mse"``.
        layer_map: Student effective layer (1-based) -> teacher layer (1-based); ``None`` maps every student layer
            to teacher layer ``round(i * T / L)`` (uniform, the last layers aligned).
    """

    mlm_weight: float = 1.0
    hidden_weight: float = 3.0
    attention_weight: float = 0.0
    logit_weight: float = 5.0
    temperature: float = 1.0
    hidden_loss: str = "cosine"
    layer_map: dict[int, int] | None = field(default=None)

    def __post_init__(self) -> None:
        for f in ("mlm_weight", "hidden_weight", "attention_weight", "logit_weight"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"distill.{f}={value!r} is invalid: expected a number >= 0.")
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"distill.temperature={self.temperature!r} is invalid: expected a number > 0.")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"distill.hidden_loss={self.hidden_loss!r} is invalid: allowed values are "
                             f"{list(HIDDEN_LOSSES)}.")
        if self.layer_map is not None:
            self.layer_map = {int(k): int(v) for k, v in dict(self.layer_map).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DistillConfig:
        """Build from a recipe section; unknown keys are an error naming them."""
        return dataclass_from_mapping(cls, values, unknown="Unknown distill option(s) {keys}", prefix="distill")


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
        cfg = self.config
        teacher = self.teacher
        need_hidden = teacher is not None and cfg.hidden_weight > 0
        need_attn = teacher is not None and cfg.attention_weight > 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.student(input_ids, attention_mask=attention_mask, labels=labels,
                           output_hidden_states=need_hidden, output_attentions=need_attn)
        scfg = self.student.config
        device = input_ids.device
        zero = torch.zeros((), device=device)
        parts: dict[str, torch.Tensor] = {}
        router_aux = out.router_aux_loss if out.router_aux_loss is not None else zero
        router_z = out.router_z_loss if out.router_z_loss is not None else zero
        real = attention_mask.bool()  # (B, L)
        select = (labels != -100) & real if labels is not None else None  # (B, L) masked positions
        if select is not None:
            denom = (select.sum() if masked_per_rank is None else torch.as_tensor(masked_per_rank)).to(device)
            denom = denom.float().clamp_min(1.0)
            s_logits = out.logits if out.logits.dim() == 2 else out.logits[select]  # (M, V)
            mlm = F.cross_entropy(s_logits.float(), labels[select], reduction="sum") / denom
        else:
            mlm = zero
        # Router losses are per-device statistics (as in Switch / GShard), weighted by the student's coefficients.
        per_micro = 1.0 / micro_batches
        total = cfg.mlm_weight * mlm + per_micro * (scfg.router_aux_loss_coef * router_aux
                                                    + scfg.router_z_loss_coef * router_z)
        parts.update(mlm=mlm * micro_batches, router_aux=router_aux, router_z=router_z)

        if teacher is not None and (need_hidden or need_attn or self.use_logits):
            with torch.no_grad():
                t_out = teacher(input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=need_hidden, output_attentions=need_attn)
            if need_hidden:
                losses = []
                for s, t in self.layer_map.items():
                    h_s = out.hidden_states[s][real]  # (N, d_s)
                    h_t = t_out.hidden_states[t][real]  # (N, d_t), never rounded to the student's dtype
                    if str(s) in self.projections:
                        h_s = self.projections[str(s)](h_s)  # (N, d_t)
                    losses.append(self._hidden_loss(h_s, h_t))
                parts["hidden"] = torch.stack(losses).mean()
                total = total + per_micro * cfg.hidden_weight * parts["hidden"]
            if need_attn:
                losses = []
                for s, t in self.layer_map.items():
                    a_s, a_t = out.attentions[s - 1], t_out.attentions[t - 1]  # (B, h, L, L)
                    if a_s.shape[1] != a_t.shape[1]:
                        a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)  # (B, 1, L, L)
                    rows = real[:, None, :, None].expand_as(a_s)  # real query rows
                    kl = a_t.float() * (a_t.float().clamp_min(1e-12).log() - a_s.float().clamp_min(1e-12).log())
                    losses.append((kl * rows).sum() / rows[..., 0].sum().clamp_min(1))
                parts["attention"] = torch.stack(losses).mean()
                total = total + per_micro * cfg.attention_weight * parts["attention"]
            if self.use_logits and select is not None:
                t_logits = t_out.logits[select]  # (M, V), compared in fp32 below
                T = cfg.temperature
                kl = F.kl_div(F.log_softmax(s_logits.float() / T, -1), F.log_softmax(t_logits.float() / T, -1),
                              log_target=True, reduction="sum") * T * T / denom
                parts["logits"] = kl * micro_batches
                total = total + cfg.logit_weight * kl
        return DistillOutput(total, {k: v.detach() for k, v in parts.items()}, out.expert_usage)


__all__ = ["HIDDEN_LOSSES", "DistillConfig", "DistillOutput", "Distiller", "uniform_layer_map"]
