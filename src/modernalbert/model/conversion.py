"""Fill a ModernAlbert model from a pretrained teacher's tensors: the mapping machinery behind
:func:`load_modernbert_weights` (a Hugging Face ModernBERT checkpoint) and
:func:`modernalbert.distill.init.init_from_teacher` (any encoder family).

A *plan* (:class:`MappingPlan`) says where each student tensor would come from in the teacher; :func:`apply_plan`
writes it into the student, the same way for every family:

* token embedding ``W`` (V x d_t): copied when the student is not factorised and as wide as the teacher; otherwise a
  truncated SVD ``W = U S V^T`` gives the table ``U_k S_k`` (V x k) and, when the widths match, the projection
  ``V_k^T`` (k -> d): the best rank-k approximation (Eckart-Young);
* group g of K takes the g-th contiguous chunk of the T teacher layers, ``round(g T / K) .. round((g + 1) T / K)``
  (:func:`layer_chunks`): ``layer_assignment="pick"`` copies the chunk's first layer, ``"average"`` averages the chunk,
  tensor by tensor (our choices);
* a tensor whose shape differs from the student's keeps the student's init and is noted; MoL / RRT / MoA experts and
  routers have no teacher counterpart and stay fresh (B = 0: they start as no-ops);
* the MaskedLM head (dense, norm, decoder bias) when both sides have one.

ModernBERT maps one to one (fused ``Wqkv``, ``Wo``, ``Wi`` with its GeGLU input and gate halves in the same order,
``Wo``, every norm; teacher layer 0 has no attention norm, so a student block that needs one there keeps ones).
The student also takes the teacher's attention pattern (:func:`teacher_attention_pattern`): its layer types mapped
to the student's effective layers, its window and its RoPE per layer type. Attention has no parameter that depends on
its type, so a block mapped from a global teacher layer may attend locally at another recursion position.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .configuration import LAYER_TYPES, modernbert_layer_types, nested_rope_parameters
from .modeling import ModernAlbertForMaskedLM, ModernAlbertPreTrainedModel

LAYER_ASSIGNMENTS = ("pick", "average")
_MODERNBERT_BLOCK = ("attn_norm.weight", "attn.Wqkv.weight", "attn.Wo.weight", "mlp_norm.weight", "mlp.Wi.weight",
                     "mlp.Wo.weight")


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


@dataclass
class TensorSource:
    """A teacher tensor (fp32, CPU) and the name it is reported under."""

    tensor: torch.Tensor
    name: str


@dataclass
class MappingPlan:
    """A family's reading of the teacher: where each student tensor would come from."""

    family: str
    table: TensorSource  # token embedding (V, d_t), or (V, e_t) when ``projection`` is set
    projection: TensorSource | None = None  # a factorised teacher's e_t -> d_t projection (d_t, e_t)
    embedding_norm: TensorSource | None = None
    final_norm: TensorSource | None = None
    layers: list[dict[str, TensorSource]] = field(default_factory=list)  # per teacher layer: block sub-key -> source
    head: dict[str, TensorSource] = field(default_factory=dict)  # MaskedLM head key -> source
    notes: list[str] = field(default_factory=list)


def layer_chunks(teacher_depth: int, groups: int) -> list[list[int]]:
    """The contiguous teacher layers of each of ``groups`` student groups (at least one layer each)."""
    bounds = [round(g * teacher_depth / groups) for g in range(groups + 1)]
    return [list(range(bounds[g], max(bounds[g + 1], bounds[g] + 1))) for g in range(groups)]


def fp32(t: torch.Tensor) -> torch.Tensor:
    """A detached fp32 CPU copy of a teacher tensor (every mapping computes in fp32)."""
    return t.detach().to("cpu", torch.float32)


def layer_count(keys, pattern: str) -> int:
    """How many layer indices the regular expression ``pattern`` (one group: the index) finds in ``keys``."""
    return len({m.group(1) for k in keys if (m := re.fullmatch(pattern, k))})


def dropped_bias_note(teacher: nn.Module, used: set[str], base_prefix: str) -> str | None:
    """One note naming every teacher bias that no student tensor takes (layer indices as ``*``); names relative
    to the base model like the report's sources."""
    sd = teacher.state_dict()
    # Tied duplicates (e.g. cls.predictions.decoder.bias is cls.predictions.bias) count as used with their twin.
    used_ptrs = {sd[k].data_ptr() for k in used if k in sd}
    dropped = sorted({re.sub(r"\.\d+\.", ".*.", k.removeprefix(base_prefix)) for k, v in sd.items()
                      if k.endswith("bias") and k not in used and v.data_ptr() not in used_ptrs})
    if not dropped:
        return None
    return "biases dropped (the student is bias-free): " + ", ".join(dropped)


def activation_notes(tcfg, config) -> list[str]:
    """A note when the teacher's GeGLU activation differs from the student's."""
    act = getattr(tcfg, "hidden_activation", config.hidden_activation)
    if act == config.hidden_activation:
        return []
    return [f"the teacher's GeGLU uses {act!r}, the student's {config.hidden_activation!r}: same weights, another "
            "function"]


def teacher_tensors(teacher: nn.Module, embedding_key: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                                     str]:
    """The teacher's base-model state, its full state (heads included) and the prefix of the base model's names in
    the full state (found from the token embedding's key, e.g. ``"bert."`` or ``"model."``; ``""`` for a base
    model)."""
    full = teacher.state_dict()
    prefix = next((k[: -len(embedding_key)] for k in full if k.endswith(embedding_key)), "")
    return teacher.base_model.state_dict(), full, prefix


def modernbert_plan(teacher: nn.Module, config) -> MappingPlan:
    """Where every student tensor comes from in a ModernBERT teacher (base or MaskedLM model)."""
    tcfg = teacher.config
    sd, full, base_prefix = teacher_tensors(teacher, "embeddings.tok_embeddings.weight")

    def src(key: str) -> TensorSource:
        return TensorSource(fp32(sd[key]), key)

    T = layer_count(sd, r"layers\.(\d+)\.attn\.Wqkv\.weight")
    layers = [{sub: src(f"layers.{j}.{sub}") for sub in _MODERNBERT_BLOCK if f"layers.{j}.{sub}" in sd}
              for j in range(T)]
    plan = MappingPlan(family="modernbert", table=src("embeddings.tok_embeddings.weight"),
                       embedding_norm=src("embeddings.norm.weight"), final_norm=src("final_norm.weight"),
                       layers=layers)
    used = {base_prefix + s.name for s in (plan.table, plan.embedding_norm, plan.final_norm)}
    used |= {base_prefix + s.name for block in layers for s in block.values()}
    if "head.dense.weight" in full:
        plan.head = {k: TensorSource(fp32(full[k]), k) for k in ("head.dense.weight", "head.norm.weight",
                                                                  "decoder.bias") if k in full}
        used |= set(plan.head)
    plan.notes += activation_notes(tcfg, config)
    bias_note = dropped_bias_note(teacher, used, base_prefix)
    if bias_note:
        plan.notes.append(bias_note)
    return plan


def _period(layer_types: list[str]) -> int | None:
    """The n for which ``layer_types`` is ModernBERT's global-every-n-th pattern, if any."""
    return next((n for n in range(1, len(layer_types) + 1)
                 if list(layer_types) == modernbert_layer_types(len(layer_types), n)), None)


def teacher_attention_pattern(tcfg, num_layers: int) -> tuple[dict, list[str]]:
    """A ModernBERT teacher's attention pattern for a student of ``num_layers`` effective layers.

    Layer types: the teacher's, one to one, at the same depth; at another depth, ModernBERT's global-every-n-th
    pattern over the student's effective layers when the teacher's types are that pattern (ModernBERT-base and
    -large: n = 3), else effective layer i takes teacher layer ``floor(i T / L)``'s type (our choice). The window
    (``local_attention``) and the RoPE per layer type are copied.

    Args:
        tcfg: The teacher's ``ModernBertConfig``.
        num_layers: The student's effective depth L.

    Returns:
        ``(fields, notes)``: the keyword arguments of ``ModernAlbertConfig.set_attention_pattern`` and what was done,
        in words.
    """
    types = list(getattr(tcfg, "layer_types", None) or ["full_attention"] * tcfg.num_hidden_layers)
    T = len(types)
    period = _period(types)
    if num_layers == T:
        student = types
        how = "the teacher's layer types, one to one"
    elif period is not None:
        student = modernbert_layer_types(num_layers, period)
        how = (f"the teacher's pattern (global every {period} layer(s)) over the student's {num_layers} effective "
               f"layers (the teacher has {T})")
    else:
        student = [types[i * T // num_layers] for i in range(num_layers)]
        how = f"effective layer i takes the type of teacher layer floor(i * {T} / {num_layers})"
    rope = {t: dict(p) for t, p in (tcfg.rope_parameters or {}).items() if t in LAYER_TYPES} or tcfg.rope_parameters
    fields = dict(layer_types=student, local_attention=int(tcfg.local_attention), rope_parameters=rope)
    local = [i for i, t in enumerate(student) if t == "sliding_attention"]
    thetas = ", ".join(f"{t} {p.get('rope_theta')}" for t, p in nested_rope_parameters(copy.deepcopy(rope)).items())
    note = (f"attention pattern from the teacher: {how}; local (window {tcfg.local_attention}) at effective layers "
            f"{local or 'none'}; RoPE bases {thetas}")
    return fields, [note]


@torch.no_grad()
def apply_plan(model: ModernAlbertPreTrainedModel, plan: MappingPlan, layer_assignment: str,
               report: ConversionReport | None = None) -> ConversionReport:
    """Write ``plan`` into ``model`` in place (see the module docstring for the rules).

    Args:
        model: Any ModernAlbert model (base or head class).
        plan: Where each student tensor comes from.
        layer_assignment: ``"pick"`` or ``"average"``.
        report: The report to fill (e.g. a subclass); default a new :class:`ConversionReport`.

    Returns:
        The report: ``loaded`` in the student's state-dict order, every other untied tensor in ``fresh``.

    Raises:
        ValueError: An embedding width beyond the teacher embedding's rank bound.
    """
    report = report if report is not None else ConversionReport()
    report.notes[:0] = plan.notes
    own = model.state_dict()
    prefix = "" if model.base_model is model else f"{model.base_model_prefix}."
    new: dict[str, torch.Tensor] = {}
    mismatched: dict[str, str] = {}

    def put(key: str, tensor: torch.Tensor, source: str) -> None:
        if tuple(tensor.shape) != tuple(own[key].shape):
            # One note per tensor kind: every group of a narrower student mismatches alike.
            mismatched.setdefault(re.sub(r"groups\.\d+\.", "groups.*.", key),
                                  f"teacher {tuple(tensor.shape)} vs student {tuple(own[key].shape)}")
            return
        new[key] = tensor
        report.loaded[key] = source

    _put_embedding(put, plan, model.config, prefix, report)
    for key, source in (("embeddings.norm.weight", plan.embedding_norm), ("final_norm.weight", plan.final_norm)):
        if source is not None:
            put(prefix + key, source.tensor, source.name)
    _put_groups(put, plan, model.config.num_hidden_groups, prefix, own, layer_assignment, report)
    if isinstance(model, ModernAlbertForMaskedLM):
        if plan.head:
            for key, source in plan.head.items():
                put(key, source.tensor, source.name)
        elif plan.family != "generic":
            report.notes.append("the teacher has no MLM head: head.dense, head.norm and decoder.bias keep the "
                                "student's init")
    for key, shapes in mismatched.items():
        report.notes.append(f"{key}: shapes differ ({shapes}); left at its init")
    for key, tensor in new.items():
        own[key].copy_(tensor.to(own[key].dtype))
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    names = list(own)
    report.loaded = {k: report.loaded[k] for k in names if k in report.loaded}
    report.fresh = [k for k in names if k not in report.loaded and k not in tied]
    return report


def _put_embedding(put, plan: MappingPlan, cfg, prefix: str, report: ConversionReport) -> None:
    table, d, e = plan.table.tensor, cfg.hidden_size, cfg.embedding_size  # table: (V, d_t) or (V, e_t)
    name = plan.table.name
    if plan.projection is not None:  # a factorised teacher (a ModernAlbert): table (V, e_t), projection (d_t, e_t)
        proj = plan.projection.tensor
        if e == table.shape[1] and tuple(proj.shape) == (d, e):  # the same factorisation: both copied as they are
            put(prefix + "embeddings.tok_embeddings.weight", table, name)
            put(prefix + "embeddings.proj.weight", proj, plan.projection.name)
            return
        table = table @ proj.T  # (V, d_t): the teacher's effective token embedding, then the rules below
        name = f"{name} @ {plan.projection.name}^T"
    V, d_t = table.shape
    width = d if e is None else e
    if width > min(V, d_t):
        raise ValueError(
            f"The student's token embedding width {width} exceeds the rank bound min(V, d_t) = {min(V, d_t)} of the "
            f"teacher's {name}: set embedding_size <= {min(V, d_t)}."
        )
    if e is None and d == d_t:
        put(prefix + "embeddings.tok_embeddings.weight", table, name)
        return
    U, S, Vh = torch.linalg.svd(table, full_matrices=False)  # (V, d_t), (d_t,), (d_t, d_t)
    put(prefix + "embeddings.tok_embeddings.weight", U[:, :width] * S[:width],  # (V, width)
        f"truncated SVD (rank {width}) of {name}: U_k S_k")
    if e is not None and d == d_t:
        put(prefix + "embeddings.proj.weight", Vh[:e].T.contiguous(),  # (d, e): maps e -> d
            f"truncated SVD (rank {e}) of {name}: V_k^T")
    elif e is not None:
        report.notes.append(f"teacher width {d_t} != student width {d}: the factorised table comes from the SVD, "
                            "embeddings.proj keeps the student's init")
    else:
        report.notes.append(f"student width {d} < teacher width {d_t}: the token table is the teacher's rank-{d} "
                            "truncated SVD U_d S_d (its principal axes as the student's basis)")
    kept = float((S[:width] ** 2).sum() / (S**2).sum())
    report.notes.append(f"the rank-{width} embedding keeps {kept:.1%} of the teacher embedding's energy")


def _put_groups(put, plan: MappingPlan, groups: int, prefix: str, own: dict[str, torch.Tensor],
                layer_assignment: str, report: ConversionReport) -> None:
    T = len(plan.layers)
    if not T:
        return
    chunks = layer_chunks(T, groups)
    for g, chunk in enumerate(chunks):
        src = chunk[:1] if layer_assignment == "pick" else chunk
        for sub in dict.fromkeys(s for block in plan.layers for s in block):
            key = f"{prefix}groups.{g}.{sub}"
            if key not in own:
                continue  # group 0 with G = 1 has no attention norm
            have = [plan.layers[j][sub] for j in src if sub in plan.layers[j]]
            if not have:
                report.notes.append(f"{key}: teacher layer(s) {src} have no source for it; left at its init")
                continue
            if len({tuple(s.tensor.shape) for s in have}) > 1:
                report.notes.append(f"{key}: chunk tensors differ in shape; left at its init")
                continue
            tensor = torch.stack([s.tensor for s in have]).mean(0)
            put(key, tensor, " + ".join(s.name for s in have) + (" (mean)" if len(have) > 1 else ""))
    unused = sorted(set(range(T)) - {j for c in chunks for j in (c[:1] if layer_assignment == "pick" else c)})
    if unused:
        report.notes.append(f"teacher layers {unused} are not used (layer_assignment={layer_assignment!r})")


def load_modernbert_weights(
    model: ModernAlbertPreTrainedModel,
    teacher: nn.Module | str | os.PathLike,
    layer_assignment: Literal["pick", "average"] = "pick",
) -> ConversionReport:
    """Fill ``model`` in place from a ModernBERT model (``transformers.ModernBertModel`` or any ModernBERT head
    model), a local checkpoint folder or a Hub id.

    The model also takes the teacher's attention pattern (layer types, window, RoPE per layer type; see
    :func:`teacher_attention_pattern`): ``model.config`` is updated in place. With ``group_depth=1`` and as many
    groups as the teacher has layers, the student reproduces the teacher's hidden states (and MLM logits) exactly,
    local layers included.

    Args:
        model: Any ModernAlbert model (base or head class). Width, heads, FFN width and vocabulary must match the
            teacher's; depth may differ (see the module docstring for the layer-to-group assignment).
        teacher: The ModernBERT model, or a path / Hub id to load it from.
        layer_assignment: ``"pick"`` (first teacher layer of each group's chunk) or ``"average"``.

    Returns:
        A :class:`ConversionReport` naming the source of every student tensor and the fresh ones.

    Raises:
        ValueError: Incompatible shapes, biases the student does not have, or an unknown assignment.
        FileNotFoundError: A teacher path with nothing there.
    """
    if layer_assignment not in LAYER_ASSIGNMENTS:
        raise ValueError(f"layer_assignment={layer_assignment!r} is invalid: use 'pick' or 'average'.")
    if isinstance(teacher, (str, os.PathLike)):
        from transformers import ModernBertForMaskedLM, ModernBertModel

        from ..utils.hub import resolve

        cls = ModernBertForMaskedLM if isinstance(model, ModernAlbertForMaskedLM) else ModernBertModel
        teacher = cls.from_pretrained(resolve(teacher, what="ModernBERT checkpoint folder", packaged=True))
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
    dense = getattr(getattr(teacher, "head", None), "dense", None)
    if isinstance(model, ModernAlbertForMaskedLM) and dense is not None and dense.bias is not None:
        raise ValueError("The teacher's MLM head has a dense bias (classifier_bias=True); the student has none.")
    pattern, notes = teacher_attention_pattern(tcfg, cfg.num_hidden_layers)
    model.base_model.set_attention_pattern(**pattern)
    report = apply_plan(model, modernbert_plan(teacher, cfg), layer_assignment)
    report.notes += notes
    return report


__all__ = [
    "LAYER_ASSIGNMENTS",
    "ConversionReport",
    "MappingPlan",
    "TensorSource",
    "activation_notes",
    "apply_plan",
    "dropped_bias_note",
    "fp32",
    "layer_chunks",
    "layer_count",
    "load_modernbert_weights",
    "modernbert_plan",
    "teacher_attention_pattern",
    "teacher_tensors",
]
