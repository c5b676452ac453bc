"""Fill a ModernAlbert model from a Hugging Face ModernBERT checkpoint (the basis of distillation init).

Mapping (ModernBERT -> ModernAlbert), for a teacher of depth T and a student of K groups:

* token embedding: copied when the student is not factorised; otherwise a truncated SVD ``W = U S V^T`` gives the
  factorised table ``U_k S_k`` (V x e) and the projection ``V_k^T`` (e -> d), the best rank-e approximation;
* group g takes the teacher layers of the g-th contiguous chunk of ``round(g T / K) .. round((g + 1) T / K)``:
  ``layer_assignment="pick"`` copies the chunk's first layer, ``"average"`` averages the chunk (our choices);
* fused ``Wqkv``, ``Wo``, ``Wi`` (GeGLU input and gate halves, same order), ``Wo`` and the norms map one to one;
  teacher layer 0 has no attention norm (identity), so a student block that needs one there starts at ones;
* MoL / RRT / MoA experts and routers are new (B = 0 so they start as no-ops) and reported as fresh;
* MaskedLM head (dense, norm, decoder bias) when both sides have one.

Teacher layers with sliding-window attention are mapped all the same (the student attends globally) and noted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .modeling import ModernAlbertForMaskedLM, ModernAlbertModel, ModernAlbertPreTrainedModel


@dataclass
class ConversionReport:
    """What a conversion did: student tensor name -> where it came from, fresh tensors, and notes."""

    loaded: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.loaded)} tensors loaded, {len(self.fresh)} freshly initialised"]
        lines += [f"  fresh: {name}" for name in self.fresh]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _chunks(teacher_depth: int, groups: int) -> list[list[int]]:
    bounds = [round(g * teacher_depth / groups) for g in range(groups + 1)]
    return [list(range(bounds[g], max(bounds[g + 1], bounds[g] + 1))) for g in range(groups)]


def _load_teacher(source, want_head: bool) -> nn.Module:
    if isinstance(source, (str, os.PathLike)):
        from transformers import ModernBertForMaskedLM, ModernBertModel

        cls = ModernBertForMaskedLM if want_head else ModernBertModel
        return cls.from_pretrained(source)
    return source


@torch.no_grad()
def load_modernbert_weights(
    model: ModernAlbertPreTrainedModel,
    teacher: nn.Module | str | os.PathLike,
    layer_assignment: Literal["pick", "average"] = "pick",
) -> ConversionReport:
    """Fill ``model`` in place from a ModernBERT model (``transformers.ModernBertModel`` or any ModernBERT head
    model), a local checkpoint folder or a hub name.

    Args:
        model: Any ModernAlbert model (base or head class). Width, heads, FFN width and vocabulary must match the
            teacher's; depth may differ (see the module docstring for the layer-to-group assignment).
        teacher: The ModernBERT model, or a path / hub name to load it from.
        layer_assignment: ``"pick"`` (first teacher layer of each group's chunk) or ``"average"``.

    Returns:
        A :class:`ConversionReport` naming the source of every student tensor and the fresh ones.

    Raises:
        ValueError: Incompatible shapes, biases the student does not have, or an unknown assignment.
    """
    if layer_assignment not in ("pick", "average"):
        raise ValueError(f"layer_assignment={layer_assignment!r} is invalid: use 'pick' or 'average'.")
    teacher = _load_teacher(teacher, isinstance(model, ModernAlbertForMaskedLM))
    tcfg = teacher.config
    if getattr(tcfg, "model_type", None) != "modernbert":
        raise ValueError(
            f"load_modernbert_weights needs a ModernBERT teacher, got model_type={getattr(tcfg, 'model_type', None)!r}."
        )
    cfg = model.config
    for name in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        if getattr(tcfg, name) != getattr(cfg, name):
            raise ValueError(
                f"Teacher and student differ in {name} ({getattr(tcfg, name)} vs {getattr(cfg, name)}): weight "
                "loading needs the same width, heads, FFN width and vocabulary (distillation handles the rest)."
            )
    for name in ("attention_bias", "mlp_bias", "norm_bias"):
        if getattr(tcfg, name, False):
            raise ValueError(f"The teacher has {name}=True; ModernAlbert is bias-free and cannot hold those weights.")

    tbase = teacher.model if hasattr(teacher, "model") else teacher
    base: ModernAlbertModel = model if isinstance(model, ModernAlbertModel) else model.model
    prefix = "" if base is model else "model."
    tsd = {k: v.detach().float() for k, v in tbase.state_dict().items()}
    report = ConversionReport()
    new: dict[str, torch.Tensor] = {}

    # Embeddings.
    table = tsd["embeddings.tok_embeddings.weight"]  # (V, d)
    if cfg.embedding_size is None:
        new["embeddings.tok_embeddings.weight"] = table
        report.loaded[prefix + "embeddings.tok_embeddings.weight"] = "embeddings.tok_embeddings.weight"
    else:
        e = cfg.embedding_size
        if e > min(table.shape):
            raise ValueError(f"embedding_size={e} exceeds the teacher embedding's rank bound {min(table.shape)}.")
        U, S, Vh = torch.linalg.svd(table, full_matrices=False)  # (V, d), (d,), (d, d)
        new["embeddings.tok_embeddings.weight"] = U[:, :e] * S[:e]  # (V, e)
        new["embeddings.proj.weight"] = Vh[:e].T.contiguous()  # (d, e): maps e -> d
        kept = float((S[:e] ** 2).sum() / (S**2).sum())
        for k in ("embeddings.tok_embeddings.weight", "embeddings.proj.weight"):
            report.loaded[prefix + k] = f"truncated SVD (rank {e}) of embeddings.tok_embeddings.weight"
        report.notes.append(f"factorised embedding keeps {kept:.1%} of the teacher embedding's energy")
    new["embeddings.norm.weight"] = tsd["embeddings.norm.weight"]
    report.loaded[prefix + "embeddings.norm.weight"] = "embeddings.norm.weight"
    new["final_norm.weight"] = tsd["final_norm.weight"]
    report.loaded[prefix + "final_norm.weight"] = "final_norm.weight"

    # Blocks.
    T = tcfg.num_hidden_layers
    local = [i for i, t in enumerate(getattr(tcfg, "layer_types", None) or []) if t == "sliding_attention"]
    if local:
        report.notes.append(f"teacher layers {local} use sliding-window attention; the student attends globally")
    chunks = _chunks(T, cfg.num_hidden_groups)
    own = base.state_dict()
    for g, chunk in enumerate(chunks):
        src = chunk[:1] if layer_assignment == "pick" else chunk
        for sub in ("attn.Wqkv.weight", "attn.Wo.weight", "mlp_norm.weight", "mlp.Wi.weight", "mlp.Wo.weight",
                    "attn_norm.weight"):
            key = f"groups.{g}.{sub}"
            if key not in own:
                continue  # group 0 with G = 1 has no attention norm, like teacher layer 0
            have = [i for i in src if f"layers.{i}.{sub}" in tsd]
            if not have:
                report.notes.append(f"{prefix}{key}: teacher layer(s) {src} have no attention norm; left at ones")
                continue
            new[key] = torch.stack([tsd[f"layers.{i}.{sub}"] for i in have]).mean(0)
            report.loaded[prefix + key] = " + ".join(f"layers.{i}.{sub}" for i in have) + (
                " (mean)" if len(have) > 1 else "")

    _, unexpected = base.load_state_dict(
        {k: v.to(own[k].dtype) for k, v in new.items()}, strict=False
    )
    assert not unexpected, unexpected

    # MaskedLM head.
    if isinstance(model, ModernAlbertForMaskedLM) and hasattr(teacher, "head") and hasattr(teacher, "decoder"):
        if teacher.head.dense.bias is not None:
            raise ValueError("The teacher's MLM head has a dense bias (classifier_bias=True); the student has none.")
        model.head.dense.weight.copy_(teacher.head.dense.weight)
        model.head.norm.weight.copy_(teacher.head.norm.weight)
        report.loaded.update({"head.dense.weight": "head.dense.weight", "head.norm.weight": "head.norm.weight"})
        if teacher.decoder.bias is not None:
            model.decoder.bias.copy_(teacher.decoder.bias)
            report.loaded["decoder.bias"] = "decoder.bias"
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    report.fresh = [k for k in model.state_dict() if k not in report.loaded and k not in tied]
    return report


__all__ = ["ConversionReport", "load_modernbert_weights"]
