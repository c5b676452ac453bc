"""Initialise a ModernAlbert student from a larger pretrained Hugging Face encoder (distillation-based init).

:func:`init_from_teacher` builds the student from its config, copies every teacher tensor that has a faithful
place in it, leaves everything else at the student's own init (``_init_weights``: depth-aware, LoRA ``B = 0`` so
MoL / RRT / MoA start as no-ops) and returns an :class:`InitReport` naming the source of every loaded student
tensor, the fresh ones and what was dropped or approximated. The teacher is only read, never modified. The
student takes the teacher's tokenizer: vocabulary size and special-token ids must match.

Rules shared by every family
----------------------------
* **Token embedding** ``W`` (V x d_t). Factorised student (``embedding_size = e``): a truncated SVD
  ``W = U S V^T`` gives the table ``U_e S_e`` (V x e) and, when the teacher width d_t equals the student width d,
  the projection ``V_e^T`` (e -> d): ``table @ proj^T`` is the best rank-e approximation of ``W`` (Eckart-Young).
  When the widths differ the table still comes from the SVD (the teacher's e principal directions) and the
  projection keeps the student's init. Unfactorised student: ``W`` is copied when d = d_t; when d < d_t the table
  is ``U_d S_d`` (the teacher's principal axes as the student's basis). ``e`` (or ``d`` unfactorised) larger than
  ``min(V, d_t)`` is refused: an SVD has no more directions to give.
* **Groups.** For T teacher layers and K student groups, group g takes the contiguous chunk of teacher layers
  ``round(g T / K) .. round((g + 1) T / K)`` (at least one layer): ``layer_assignment="pick"`` copies the chunk's
  first layer, ``"average"`` averages the chunk, tensor by tensor. A tensor whose shape differs from the
  student's (other width, other FFN width) keeps the student's init and is reported.
* **Heads.** When the student has another number of heads than the teacher at the same width, Q, K, V and the
  output projection map unchanged: their rows are regrouped into the student's heads (noted).
* **MoL / RRT / MoA** experts and routers have no teacher counterpart: fresh, with ``B = 0``.
* The tied ``decoder.weight`` follows the token embedding and is listed neither as loaded nor as fresh (the MLM
  head's output side of a factorised embedding is ``embeddings.proj`` itself, transposed).

``mapping="modernbert"`` (``model_type == "modernbert"``)
---------------------------------------------------------
When width, heads, FFN width and vocabulary match and the teacher is bias-free, this is
:func:`modernalbert.model.conversion.load_modernbert_weights`: every tensor maps one to one (fused ``Wqkv``,
``Wo``, ``Wi`` with its GeGLU input / gate halves in the same order, ``Wo``, all norms, MLM head dense / norm /
decoder bias), so a student with ``group_depth=1`` and K = T reproduces the teacher's hidden states. When only the
heads or the FFN width differ, the same names map where shapes allow (heads regrouped; a GeGLU of another width
keeps the student's init) and teacher biases are dropped. Under ``mapping="auto"`` a ModernBERT teacher of another
width falls back to ``"generic"``.

``mapping="modernalbert"`` (``model_type == "modernalbert"``: a ModernAlbert teacher)
-------------------------------------------------------------------------------------
The ModernBERT mapping, one to one, with the teacher's *effective* layers as its layers: effective layer i of the
teacher is its block ``groups.{i // G_t}`` (``Wqkv``, ``Wo``, ``Wi``, ``Wo``, both norms; a G = 1 teacher, the
full-parameter reference of a recursion study, has one block per layer). The token embedding is copied with its
projection when the student has the same factorisation (``embedding_size`` and width), else the rules above apply to
the teacher's effective table ``tok_embeddings @ proj^T``. The MLM head (dense, norm, decoder bias) maps by name. A
teacher's own adapters (MoL experts, RRT / MoA adapters, routers) have no place in the student's shared weights and
are dropped (noted). A G = 1 student with the teacher's geometry reproduces it exactly.

FFN width and RRT (both ModernBERT-style families)
--------------------------------------------------
* **A wider student FFN** (``intermediate_size`` f_s > the teacher's f_t, e.g. an ALBERT-style baseline that spends a
  parameter budget on width) is *widened without changing its function* (our choice, in the spirit of Net2Net,
  Chen et al., 2016): units ``0 .. f_t - 1`` of ``Wi``'s input and gate halves and of ``Wo`` are the teacher's, the
  extra units keep the student's ``Wi`` rows and get zero ``Wo`` columns, so the FFN computes the teacher's function
  at step 0 and the extra units still receive gradients (as LoRA's ``B = 0``). A narrower student FFN keeps its init.
* **RRT groups** (``ffn_variants`` ``"rrt"``) get the initialisation of Relaxed Recursive Transformers
  (:func:`rrt_svd_init`; ``rrt_init="svd"``, the default) when every effective layer of the student has its own
  teacher layer (T = L): each position's LoRA is the truncated SVD of its layer's FFN weights minus the group's
  shared (mapped) weights. ``rrt_init="zero"`` keeps ``B = 0``.

Attention pattern
-----------------
A ModernBERT or ModernAlbert teacher: the student takes the teacher's attention pattern in place of its config's
(noted in the report): the teacher's layer types mapped to the student's *effective* layers (one to one at the same
depth; at another depth the teacher's global-every-n-th pattern over the student's effective layers), its window
(``local_attention``) and its RoPE per layer type (:func:`modernalbert.model.conversion.teacher_attention_pattern`).
The config passed in is not modified: the student gets a copy. The other families keep the student config's pattern
(a BERT teacher has absolute positions and global attention, with nothing to carry to RoPE layers).

``mapping="bert"`` (bert, roberta, xlm-roberta, camembert, electra; MiniLM is a BertModel)
------------------------------------------------------------------------------------------
By the Hugging Face module structure (names relative to the base model; group g takes teacher layer(s) j as
above; T teacher layers):

* ``embeddings.word_embeddings.weight`` -> ``embeddings.tok_embeddings.weight`` (+ ``embeddings.proj.weight``),
  by the embedding rule above;
* ``embeddings.LayerNorm.weight`` -> ``embeddings.norm.weight``;
* ``encoder.layer.{j}.attention.self.{query,key,value}.weight`` -> ``groups.{g}.attn.Wqkv.weight``, stacked as
  rows ``[q; k; v]``;
* ``encoder.layer.{j}.attention.output.dense.weight`` -> ``groups.{g}.attn.Wo.weight``;
* ``encoder.layer.{j}.attention.output.LayerNorm.weight`` -> ``groups.{g}.mlp_norm.weight``;
* the LayerNorm whose output is layer j's attention input, ``encoder.layer.{j-1}.output.LayerNorm.weight``
  (``embeddings.LayerNorm.weight`` for j = 0) -> ``groups.{g}.attn_norm.weight`` (where the block has one);
* ``encoder.layer.{T-1}.output.LayerNorm.weight`` -> ``final_norm.weight``;
* MLM head, for a MaskedLM student and a teacher that has one: transform dense weight -> ``head.dense.weight``,
  transform LayerNorm weight -> ``head.norm.weight``, decoder bias -> ``decoder.bias`` (BERT
  ``cls.predictions.{transform.dense, transform.LayerNorm, bias}``, RoBERTa ``lm_head.{dense, layer_norm, bias}``,
  ELECTRA ``generator_predictions.{dense, LayerNorm}`` and ``generator_lm_head.bias``). A teacher without one
  (MiniLM, any ``BertModel``) leaves the student's head fresh.

What does not map, and what is done instead:

* **Post-LN -> pre-LN (approximation).** BERT normalises the residual stream after each sublayer
  (``LN(x + Attn(x))``, ``LN(x + FFN(x))``); the student normalises each sublayer's *input* and keeps an
  unnormalised residual stream. Each teacher LayerNorm goes to the student norm that plays its role for the next
  sublayer's input (list above: the attention-output LN feeds the FFN, so it becomes ``mlp_norm``; the output LN
  feeds the next layer's attention, so it becomes that layer's ``attn_norm``, and the last one ``final_norm``).
  The gains are the teacher's, but they now normalise an unnormalised residual stream: hidden states differ from
  the teacher's until distillation adapts them.
* **GELU MLP -> GeGLU: fresh.** The teacher's FFN is ``W2 gelu(W1 x + b1) + b2``; the student's is
  ``Wo (gelu(x Wi_in) * x Wi_gate)``, bias-free, on a LayerNorm output. Copying the teacher's ``W1`` into the input half
  would reproduce the MLP only with a gate that is constantly 1, and none exists: a bias-free LayerNorm is odd
  (``LN(-x) = -LN(x)``), so a bias-free linear gate takes opposite values on ``x`` and ``-x``. There is no exact
  copy, and ``W1`` in one half with a random other half would be no better founded than the student's init.
  ``mlp.Wi`` / ``mlp.Wo`` keep the student's init; its depth-aware output std keeps the FFN branch small at the
  start, so the mapped attention path dominates until distillation trains the FFN.
* **Positions.** ``position_embeddings`` are dropped (the student uses RoPE, which rotates the mapped Q and K,
  so attention scores differ from the teacher's); ``token_type_embeddings`` are dropped (no segments).
* **Biases** are dropped (the student is bias-free): Q/K/V/output, LayerNorm biases, MLM transform bias, and
  the FFN's together with it. The decoder bias maps.
* ELECTRA with ``embedding_size != hidden_size``: ``embeddings_project`` is dropped, the embedding LayerNorm (over
  the embedding width) and the projection keep the student's init, and layer 0's ``attn_norm`` source is absent.
* The pooler, unused teacher layers (``pick``) and an untied teacher decoder weight are dropped.

``mapping="generic"`` (any other encoder that ``AutoModel`` loads)
------------------------------------------------------------------
Only the token embedding maps (from ``teacher.get_input_embeddings()``, as above); everything else keeps the
student's init. ``mapping="auto"`` picks by ``teacher.config.model_type``; an explicit family is refused with a
``ValueError`` when the teacher's module structure does not fit it. Decoders (``is_decoder``, causal LMs) and
encoder-decoder models are refused.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..model.configuration import ModernAlbertConfig
from ..model.conversion import (
    LAYER_ASSIGNMENTS,
    ConversionReport,
    MappingPlan,
    TensorSource,
    activation_notes,
    apply_plan,
    dropped_bias_note,
    fp32,
    layer_chunks,
    layer_count,
    modernbert_plan,
    teacher_attention_pattern,
    teacher_tensors,
)
from ..model.modeling import ModernAlbertForMaskedLM, ModernAlbertPreTrainedModel, RRTGeGLU
from .teacher import check_encoder, load_teacher

MAPPINGS = ("auto", "modernbert", "modernalbert", "bert", "generic")
RRT_INITS = ("svd", "zero")
# The FFN tensors of a ModernBERT-style block (what widening and the RRT init read).
_FFN_IN, _FFN_OUT = "mlp.Wi.weight", "mlp.Wo.weight"
# model_types mapped as BERT under mapping="auto": post-LN encoders with BERT's module names.
BERT_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
# Special-token ids that must agree between teacher and student (when the teacher's config sets them).
_TOKEN_IDS = ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
# BERT-family MaskedLM heads: (transform dense, transform LayerNorm, decoder bias, decoder weight).
_BERT_HEADS = (
    ("cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.weight",
     "cls.predictions.bias", "cls.predictions.decoder.weight"),
    ("lm_head.dense.weight", "lm_head.layer_norm.weight", "lm_head.bias", "lm_head.decoder.weight"),
    ("generator_predictions.dense.weight", "generator_predictions.LayerNorm.weight", "generator_lm_head.bias",
     "generator_lm_head.weight"),
)


@dataclass
class InitReport(ConversionReport):
    """What :func:`init_from_teacher` did.

    Attributes:
        loaded: Student tensor name -> description of its teacher source (names relative to the teacher's base
            model, head names relative to the teacher), in the student's state-dict order.
        fresh: Student tensors that keep the student's own init (tied tensors are in neither list).
        notes: What was dropped, approximated or regrouped, in words.
        family: The mapping used: ``"modernbert"``, ``"bert"`` or ``"generic"``.
    """

    family: str = "generic"

    def __str__(self) -> str:
        lines = [f"init from a {self.family} teacher: {len(self.loaded)} tensors loaded, "
                 f"{len(self.fresh)} freshly initialised"]
        lines += [f"  loaded: {name} <- {source}" for name, source in self.loaded.items()]
        lines += [f"  fresh:  {name}" for name in self.fresh]
        lines += [f"  note:   {note}" for note in self.notes]
        return "\n".join(lines)


# ================================================================================================ teacher checks


def _input_embedding(teacher: nn.Module) -> tuple[torch.Tensor, str]:
    """The teacher's token embedding (V, d_t) and its parameter name."""
    try:
        emb = teacher.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    weight = getattr(emb, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(
            f"{type(teacher).__name__} has no token embedding (get_input_embeddings()); init_from_teacher needs a "
            "text encoder."
        )
    name = next((n for n, p in teacher.named_parameters() if p is weight), "get_input_embeddings().weight")
    return weight, name


def _check_vocabulary(teacher: nn.Module, config: ModernAlbertConfig) -> None:
    tcfg = teacher.config
    rows = _input_embedding(teacher)[0].shape[0]
    wanted = {"vocab_size": rows}
    wanted.update({k: getattr(tcfg, k, None) for k in _TOKEN_IDS if getattr(tcfg, k, None) is not None})
    problems = [f"{k} = {v} in the teacher, {getattr(config, k)} in the student" for k, v in wanted.items()
                if getattr(config, k) != v]
    if problems:
        fix = ", ".join(f"{k}={v}" for k, v in wanted.items())
        raise ValueError(
            "The student must use the teacher's tokenizer and vocabulary, but " + "; ".join(problems) + ". Build "
            f"the student config with {fix} (e.g. ModernAlbertConfig.from_preset(name, {fix}))."
        )


# ============================================================================================== family choice


def _fits_modernbert(teacher: nn.Module) -> bool:
    keys = set(teacher.base_model.state_dict())
    return {"embeddings.tok_embeddings.weight", "layers.0.attn.Wqkv.weight", "final_norm.weight"} <= keys


def _fits_modernalbert(teacher: nn.Module) -> bool:
    keys = set(teacher.base_model.state_dict())
    return {"embeddings.tok_embeddings.weight", "groups.0.attn.Wqkv.weight", "final_norm.weight"} <= keys


def _fits_bert(teacher: nn.Module) -> bool:
    keys = set(teacher.base_model.state_dict())
    T = layer_count(keys, r"encoder\.layer\.(\d+)\.attention\.self\.query\.weight")
    if T == 0 or "embeddings.word_embeddings.weight" not in keys:
        return False
    need = ("attention.self.key.weight", "attention.self.value.weight", "attention.output.dense.weight",
            "attention.output.LayerNorm.weight", "output.LayerNorm.weight")
    return all(f"encoder.layer.{j}.{n}" in keys for j in range(T) for n in need)


def _choose_family(teacher: nn.Module, config: ModernAlbertConfig, mapping: str) -> tuple[str, list[str]]:
    tcfg = teacher.config
    model_type = getattr(tcfg, "model_type", None)
    if mapping == "auto":
        fits = {"modernbert": _fits_modernbert, "modernalbert": _fits_modernalbert}.get(model_type)
        if fits is not None and fits(teacher):
            if getattr(tcfg, "hidden_size", None) == config.hidden_size:
                return model_type, []
            return "generic", [
                f"{type(teacher).__name__} teacher of width {tcfg.hidden_size} and a student of width "
                f"{config.hidden_size}: no block tensor fits, so only the token embedding maps (generic mapping)"
            ]
        if model_type in BERT_MODEL_TYPES and _fits_bert(teacher):
            return "bert", []
        return "generic", []
    fits = {"modernbert": _fits_modernbert, "modernalbert": _fits_modernalbert, "bert": _fits_bert}.get(mapping)
    if fits is not None and not fits(teacher):
        raise ValueError(
            f"mapping={mapping!r} does not fit {type(teacher).__name__} (model_type={model_type!r}): its modules "
            f"are not laid out like a {mapping} encoder. Use mapping='auto' or mapping='generic' (token embedding "
            "only)."
        )
    return mapping, []


# ================================================================================================ family plans


def _bert_plan(teacher: nn.Module, config: ModernAlbertConfig) -> MappingPlan:
    tcfg = teacher.config
    sd, full, base_prefix = teacher_tensors(teacher, "embeddings.word_embeddings.weight")

    def src(key: str) -> TensorSource:
        return TensorSource(fp32(sd[key]), key)

    T = layer_count(sd, r"encoder\.layer\.(\d+)\.attention\.self\.query\.weight")
    project = "embeddings_project.weight" in sd  # ELECTRA with embedding_size != hidden_size
    layers = []
    for j in range(T):
        p = f"encoder.layer.{j}."
        qkv = torch.cat([fp32(sd[f"{p}attention.self.{n}.weight"]) for n in ("query", "key", "value")])  # (3d, d)
        block = {
            "attn.Wqkv.weight": TensorSource(qkv, f"{p}attention.self.{{query,key,value}}.weight (rows q; k; v)"),
            "attn.Wo.weight": src(f"{p}attention.output.dense.weight"),
            "mlp_norm.weight": src(f"{p}attention.output.LayerNorm.weight"),
        }
        # The LayerNorm whose output is layer j's attention input (post-LN): the previous layer's output LN.
        if j > 0:
            block["attn_norm.weight"] = src(f"encoder.layer.{j - 1}.output.LayerNorm.weight")
        elif not project:
            block["attn_norm.weight"] = src("embeddings.LayerNorm.weight")
        layers.append(block)

    plan = MappingPlan(
        family="bert",
        table=src("embeddings.word_embeddings.weight"),
        embedding_norm=None if project else src("embeddings.LayerNorm.weight"),
        final_norm=src(f"encoder.layer.{T - 1}.output.LayerNorm.weight"),
        layers=layers,
    )
    used = {base_prefix + s.name for s in (plan.table, plan.embedding_norm, plan.final_norm) if s is not None}
    used |= {base_prefix + s.name for block in layers for s in block.values()}

    for dense, norm, bias, decoder in _BERT_HEADS:
        if dense in full:
            plan.head = {"head.dense.weight": TensorSource(fp32(full[dense]), dense),
                         "head.norm.weight": TensorSource(fp32(full[norm]), norm)}
            if bias in full:
                plan.head["decoder.bias"] = TensorSource(fp32(full[bias]), bias)
            used |= {dense, norm, bias}
            if decoder in full and not torch.equal(full[decoder], full[base_prefix + plan.table.name]):
                plan.notes.append(f"the teacher's decoder weight {decoder} is not tied to its token embedding; the "
                                  "student's decoder is tied to its own, so it is dropped")
            act = getattr(tcfg, "hidden_act", None)
            if isinstance(act, str) and act != config.classifier_activation:
                plan.notes.append(f"the teacher's MLM transform uses {act!r}, the student's head "
                                  f"{config.classifier_activation!r}")
            break

    n = plan.notes
    n.append(f"{tcfg.model_type} teacher ({type(teacher).__name__}, post-LN, absolute positions, biases) mapped to "
             "the pre-LN, RoPE, bias-free student: see modernalbert.distill.init for the rules")
    n.append("post-LN -> pre-LN is an approximation: encoder.layer.j.attention.output.LayerNorm -> mlp_norm of the "
             "group taking layer j; the LayerNorm feeding layer j's attention (encoder.layer.{j-1}.output.LayerNorm, "
             "embeddings.LayerNorm for j = 0) -> its attn_norm; the last output.LayerNorm -> final_norm. The "
             "residual stream is no longer normalised after each sublayer, so hidden states differ")
    n.append("FFN: the teacher's GELU MLP (intermediate.dense, output.dense) has no exact GeGLU equivalent (a "
             "bias-free linear gate on a LayerNorm output cannot be constantly 1), so mlp.Wi / mlp.Wo keep the "
             "student's init")
    dropped = [k for k in ("embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight")
               if k in sd]
    if dropped:
        n.append(f"{' and '.join(dropped)} dropped: the student uses RoPE (which rotates the mapped Q and K, so "
                 "attention scores differ) and has no segment embedding")
    if project:
        n.append("embeddings_project dropped (teacher embedding width "
                 f"{sd['embeddings.word_embeddings.weight'].shape[1]} != hidden {tcfg.hidden_size}): embeddings.norm "
                 "and layer 0's attention norm have no source")
    if any(k.startswith("pooler.") for k in sd):
        n.append("pooler dropped")
    bias_note = dropped_bias_note(teacher, used, base_prefix)
    if bias_note:
        n.append(bias_note)
    return plan


def _modernalbert_plan(teacher: nn.Module, config: ModernAlbertConfig) -> MappingPlan:
    """A ModernAlbert teacher read as a ModernBERT one: its effective layers, each its group's block."""
    tcfg = teacher.config
    sd, full, _ = teacher_tensors(teacher, "embeddings.tok_embeddings.weight")

    def src(key: str) -> TensorSource:
        return TensorSource(fp32(sd[key]), key)

    G = int(tcfg.group_depth)
    subs = ("attn_norm.weight", "attn.Wqkv.weight", "attn.Wo.weight", "mlp_norm.weight", _FFN_IN, _FFN_OUT)
    layers = [{sub: src(f"groups.{i // G}.{sub}") for sub in subs if f"groups.{i // G}.{sub}" in sd}
              for i in range(int(tcfg.num_hidden_layers))]  # effective layer i runs block i // G
    plan = MappingPlan(family="modernalbert", table=src("embeddings.tok_embeddings.weight"),
                       projection=src("embeddings.proj.weight") if "embeddings.proj.weight" in sd else None,
                       embedding_norm=src("embeddings.norm.weight"), final_norm=src("final_norm.weight"),
                       layers=layers)
    if "head.dense.weight" in full:
        plan.head = {k: TensorSource(fp32(full[k]), k) for k in ("head.dense.weight", "head.norm.weight",
                                                                  "decoder.bias") if k in full}
    used = {s.name for s in (plan.table, plan.projection, plan.embedding_norm, plan.final_norm) if s is not None}
    used |= {s.name for block in layers for s in block.values()}
    own = [k for k in sd if k.startswith("groups.") and k not in used]
    if own:
        kinds = sorted({k.split(".", 2)[2] for k in own})
        plan.notes.append(f"the teacher's own adapters and routers ({', '.join(kinds)}) have no place in the "
                          "student's shared weights: dropped")
    if G > 1:
        plan.notes.append(f"the teacher shares each block over {G} layers: its effective layers are mapped, "
                          "so layers that share a block bring the same tensors")
    plan.notes += activation_notes(tcfg, config)
    return plan


def _widen_ffn(plan: MappingPlan, model: ModernAlbertPreTrainedModel) -> None:
    """Widen the teacher FFNs of ``plan`` to a wider student FFN without changing their function (see the module
    docstring): the extra units keep the student's ``Wi`` rows of the group they go to and get zero ``Wo``
    columns."""
    cfg, base = model.config, model.base_model
    f_s, d = cfg.intermediate_size, cfg.hidden_size
    widened = set()
    for g, chunk in enumerate(layer_chunks(len(plan.layers), cfg.num_hidden_groups)):
        own_wi = fp32(base.groups[g].mlp.Wi.weight)  # (2 f_s, d)
        for j in chunk:
            block = plan.layers[j]
            wi, wo = block.get(_FFN_IN), block.get(_FFN_OUT)
            if j in widened or wi is None or wo is None:
                continue
            f_t = wo.tensor.shape[1]
            if f_t >= f_s or tuple(wi.tensor.shape) != (2 * f_t, d) or wo.tensor.shape[0] != d:
                continue
            inp, gate = wi.tensor.chunk(2)  # (f_t, d) each
            block[_FFN_IN] = TensorSource(torch.cat([inp, own_wi[f_t:f_s], gate, own_wi[f_s + f_t:]]),  # (2 f_s, d)
                                          f"{wi.name} widened to {f_s} units (extra rows: the student's init)")
            block[_FFN_OUT] = TensorSource(torch.cat([wo.tensor, wo.tensor.new_zeros(d, f_s - f_t)], 1),  # (d, f_s)
                                           f"{wo.name} widened to {f_s} units (extra columns: 0)")
            widened.add(j)
    if widened:
        plan.notes.append(f"the student's FFN is wider than the teacher's ({f_s} units): the teacher's units are "
                          "copied, the extra ones start with zero output weights (same function at step 0)")


@torch.no_grad()
def rrt_svd_init(model: ModernAlbertPreTrainedModel,
                 layer_weights: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Initialise every RRT group's per-position LoRAs as in Relaxed Recursive Transformers.

    Relaxed Recursive Transformers (Bae et al., 2024, "Relaxed Recursive Transformers: Effective Parameter Sharing
    with Layer-wise LoRA", arXiv 2410.20672, sec. 3) initialise the LoRA of recursion position p from the residual
    between the original layer's weight and the shared (tied) weight, ``R = W_layer - W_shared``, by a truncated SVD
    ``U_r S_r V_r^T = TruncatedSVD(R; r)``: ``B = U_r S_r``, ``A = V_r^T``. Here the LoRA computes ``s B A`` with
    ``s = lora_alpha / lora_rank``, so ``B = U_r S_r / s``; it is applied to both FFN matrices (``Wi``: (2f, d),
    ``Wo``: (d, f)) of :class:`~modernalbert.model.modeling.RRTGeGLU` (our RRT relaxes the FFN only). At full rank
    (``r >= min`` of the matrix's dims) position p's FFN equals its layer's exactly; at lower rank it is the best
    rank-r approximation of it (Eckart-Young). When ``r`` exceeds the residual's rank bound, the extra rank slots keep
    ``B = 0`` and the model's own ``A``.

    Args:
        model: A ModernAlbert model whose shared blocks already hold their initial weights (e.g. from
            :func:`init_from_teacher` with ``layer_assignment="average"``, the RRT paper's average init).
        layer_weights: One mapping per effective layer of ``model`` (``num_hidden_layers`` of them, in depth order):
            the full-parameter model's ``"mlp.Wi.weight"`` (2f, d) and ``"mlp.Wo.weight"`` (d, f) of that layer.
            Effective layer ``g * G + p`` is position p of group g.

    Returns:
        ``"groups.{g}.{p}.Wi"`` / ``".Wo"`` -> the fraction of the residual's energy ``||R||_F^2`` that the rank-r
        LoRA keeps (1.0 for a zero residual).

    Raises:
        ValueError: ``model`` has no RRT group, ``layer_weights`` has another length than the effective depth, or a
            weight of another shape than the group's.
    """
    cfg = model.config
    G, L = cfg.group_depth, cfg.num_hidden_layers
    groups = [g for g, blk in enumerate(model.base_model.groups) if isinstance(blk.mlp, RRTGeGLU)]
    if not groups:
        raise ValueError("rrt_svd_init: the model has no RRT group (ffn_variants 'rrt').")
    if len(layer_weights) != L:
        raise ValueError(f"rrt_svd_init: got {len(layer_weights)} layer weight mappings for a model of "
                         f"{L} effective layers: pass one per effective layer.")
    kept: dict[str, float] = {}
    for g in groups:
        mlp = model.base_model.groups[g].mlp
        for p in range(G):
            weights = layer_weights[g * G + p]
            for key, shared, A, B in ((_FFN_IN, mlp.Wi.weight, mlp.lora_A1, mlp.lora_B1),
                                      (_FFN_OUT, mlp.Wo.weight, mlp.lora_A2, mlp.lora_B2)):
                if key not in weights or tuple(weights[key].shape) != tuple(shared.shape):
                    got = tuple(weights[key].shape) if key in weights else "nothing"
                    raise ValueError(f"rrt_svd_init: layer {g * G + p} needs {key} of shape {tuple(shared.shape)} "
                                     f"(group {g}'s), got {got}.")
                kept[f"groups.{g}.{p}.{key.split('.')[1]}"] = _svd_lora(weights[key], shared, A[p], B[p], mlp.scale)
    return kept


def _svd_lora(full: torch.Tensor, shared: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> float:
    """Write ``A`` (r, in) and ``B`` (out, r) so that ``scale * B @ A`` is the rank-r truncated SVD of
    ``full - shared`` (out, in); returns the fraction of the residual's energy kept."""
    residual = full.detach().double().cpu() - shared.detach().double().cpu()  # (out, in), fp64: exact at full rank
    U, S, Vh = torch.linalg.svd(residual, full_matrices=False)  # (out, k), (k,), (k, in)
    r = min(A.shape[0], S.shape[0])
    B.zero_()
    B[:, :r].copy_((U[:, :r] * S[:r] / scale).to(B.dtype))  # U_r S_r / s
    A[:r].copy_(Vh[:r].to(A.dtype))  # V_r^T
    total = float(S.square().sum())
    return 1.0 if total == 0 else float(S[:r].square().sum()) / total


def _apply_rrt_init(model: ModernAlbertPreTrainedModel, plan: MappingPlan, report: InitReport) -> None:
    """:func:`rrt_svd_init` from the plan's layers, when every effective layer has its own teacher layer."""
    cfg = model.config
    rrt = [g for g, blk in enumerate(model.base_model.groups) if isinstance(blk.mlp, RRTGeGLU)]
    if not rrt or plan.family not in ("modernbert", "modernalbert"):
        return
    prefix = "" if model.base_model is model else f"{model.base_model_prefix}."
    if len(plan.layers) != cfg.num_hidden_layers:
        report.notes.append(f"RRT LoRAs keep B = 0: the SVD init needs one teacher layer per effective layer "
                            f"({len(plan.layers)} teacher layers, {cfg.num_hidden_layers} effective layers)")
        return
    try:
        kept = rrt_svd_init(model, [{k: s.tensor for k, s in block.items()} for block in plan.layers])
    except ValueError as err:
        report.notes.append(f"RRT LoRAs keep B = 0: {err}")
        return
    G = cfg.group_depth
    for g in rrt:
        chunk = f"teacher layers {g * G}..{g * G + G - 1}"
        for name in ("lora_A1", "lora_B1", "lora_A2", "lora_B2"):
            key = f"{prefix}groups.{g}.mlp.{name}"
            matrix = "Wi" if name.endswith("1") else "Wo"
            report.loaded[key] = (f"truncated SVD of {matrix} (each of {chunk}) minus the shared {matrix} "
                                  "(Relaxed Recursive Transformers' init)")
            report.fresh.remove(key)
    energy = ", ".join(f"{k} {v:.1%}" for k, v in kept.items())
    report.notes.append(f"RRT LoRAs initialised by truncated SVD of each layer's residual to the shared FFN "
                        f"(energy kept: {energy})")


def _generic_plan(teacher: nn.Module, config: ModernAlbertConfig) -> MappingPlan:
    weight, name = _input_embedding(teacher)
    return MappingPlan(family="generic", table=TensorSource(fp32(weight), name), notes=[
        f"generic mapping ({getattr(teacher.config, 'model_type', None)} teacher, {type(teacher).__name__}): only "
        "the token embedding maps; blocks, norms and heads keep the student's init"
    ])


_PLANS = {"modernbert": modernbert_plan, "modernalbert": _modernalbert_plan, "bert": _bert_plan,
          "generic": _generic_plan}


# ===================================================================================================== entry point


def init_from_teacher(
    teacher: nn.Module | str | os.PathLike,
    config: ModernAlbertConfig,
    *,
    mapping: Literal["auto", "modernbert", "modernalbert", "bert", "generic"] = "auto",
    layer_assignment: Literal["pick", "average"] = "pick",
    head_class: type[ModernAlbertPreTrainedModel] = ModernAlbertForMaskedLM,
    rrt_init: Literal["svd", "zero"] = "svd",
) -> tuple[ModernAlbertPreTrainedModel, InitReport]:
    """Build a ModernAlbert student and initialise it from a pretrained Hugging Face encoder.

    The mapping per teacher family (what loads, what stays fresh, what is approximated) is documented in
    :mod:`modernalbert.distill.init`. The teacher is only read.

    Args:
        teacher: A Hugging Face encoder (base or MaskedLM model), or a local checkpoint folder / hub name (loaded
            with ``AutoModelForMaskedLM`` when its architecture has an MLM head, else ``AutoModel``).
        config: The student's config. Its vocabulary (``vocab_size`` and the pad / cls / sep / mask ids the
            teacher's config sets) must be the teacher's.
        mapping: ``"auto"`` (by ``teacher.config.model_type``), or force ``"modernbert"``, ``"modernalbert"`` (a
            ModernAlbert teacher, e.g. a G = 1 full-parameter reference), ``"bert"`` (BERT, RoBERTa, XLM-R,
            ELECTRA, MiniLM: by module structure) or ``"generic"`` (token embedding only).
        layer_assignment: ``"pick"`` (first teacher layer of each group's contiguous chunk) or ``"average"``
            (mean over the chunk).
        head_class: The student class to build (``ModernAlbertForMaskedLM``, ``ModernAlbertModel`` or a
            classifier class); the MLM head is mapped only for ``ModernAlbertForMaskedLM``.
        rrt_init: ``"svd"``: RRT groups' LoRAs from the truncated SVD of each layer's residual to the shared FFN
            (:func:`rrt_svd_init`, Relaxed Recursive Transformers' init) when the teacher's FFNs map and it has one
            layer per effective student layer; ``"zero"``: ``B = 0`` (a no-op at step 0).

    Returns:
        ``(model, report)``: the initialised student and an :class:`InitReport`.

    Raises:
        FileNotFoundError: ``teacher`` names a local folder that does not exist.
        ValueError: Unknown ``mapping`` / ``layer_assignment``; a teacher that is not an encoder; a vocabulary
            mismatch; an explicit ``mapping`` the teacher's structure does not fit; an embedding width larger than
            the teacher's embedding rank.
        TypeError: ``config``, ``head_class`` or ``teacher`` of the wrong kind.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> from modernalbert import ModernAlbertConfig, init_from_teacher
        >>> teacher = BertModel(BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=4,
        ...                                num_attention_heads=4, intermediate_size=128))
        >>> student, report = init_from_teacher(teacher, ModernAlbertConfig.from_preset("test"))
        >>> report.family, "model.groups.0.mlp.Wi.weight" in report.fresh
        ('bert', True)
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping={mapping!r} is invalid: use one of {list(MAPPINGS)}.")
    if layer_assignment not in LAYER_ASSIGNMENTS:
        raise ValueError(f"layer_assignment={layer_assignment!r} is invalid: use one of {list(LAYER_ASSIGNMENTS)}.")
    if rrt_init not in RRT_INITS:
        raise ValueError(f"rrt_init={rrt_init!r} is invalid: use one of {list(RRT_INITS)}.")
    if not isinstance(config, ModernAlbertConfig):
        raise TypeError(f"config must be a ModernAlbertConfig, got {type(config).__name__}.")
    if not (isinstance(head_class, type) and issubclass(head_class, ModernAlbertPreTrainedModel)):
        raise TypeError(f"head_class must be a ModernAlbert model class, got {head_class!r}.")
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_teacher(teacher)
    elif not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module or a checkpoint path, got {type(teacher).__name__}.")
    check_encoder(teacher)
    _check_vocabulary(teacher, config)
    family, notes = _choose_family(teacher, config, mapping)
    if family in ("modernbert", "modernalbert"):  # the teacher's layer types, window and RoPE bases, on a copy
        pattern, pattern_notes = teacher_attention_pattern(teacher.config, config.num_hidden_layers)
        config = copy.deepcopy(config)
        config.set_attention_pattern(**pattern)
        notes += pattern_notes

    model = head_class(config)
    plan = _PLANS[family](teacher, config)
    if family in ("modernbert", "modernalbert"):
        _widen_ffn(plan, model)
    report = apply_plan(model, plan, layer_assignment, InitReport(family=family))
    if rrt_init == "svd":
        _apply_rrt_init(model, plan, report)
        order = list(model.state_dict())
        report.loaded = {k: report.loaded[k] for k in order if k in report.loaded}
    heads = getattr(teacher.config, "num_attention_heads", None)
    if family != "generic" and heads is not None and heads != config.num_attention_heads and any(
            k.endswith("attn.Wqkv.weight") for k in report.loaded):
        report.notes.append(
            f"the student has {config.num_attention_heads} heads, the teacher {heads}: Q/K/V/O map unchanged and "
            f"their rows are regrouped into heads of size {config.head_dim}"
        )
    report.notes[:0] = notes
    return model, report


__all__ = ["LAYER_ASSIGNMENTS", "MAPPINGS", "RRT_INITS", "InitReport", "init_from_teacher", "rrt_svd_init"]
