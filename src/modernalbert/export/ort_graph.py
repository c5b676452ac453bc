"""The deployment graph: the ModernAlbert forward written with ONNX Runtime's contrib operators, and its int8 form.

The torch-exported graph (:func:`~modernalbert.export.onnx.export_onnx`) is the reference export: any head, any
form (routed groups included), its structure is what PyTorch traced. ONNX Runtime's transformer optimiser recognises
none of its attention (the RoPE + SDPA pattern is not one it fuses), so it runs attention as separate MatMul /
Softmax nodes over the padded batch. This module writes the same forward a second time, operator by operator, with
the fused kernels ONNX Runtime ships for CPU (``com.microsoft`` domain):

* ``RotaryEmbedding`` on q and k (rotate-half, ``interleaved=0``: GPT-NeoX / ModernBERT), with (max_len, dh/2) cos
  and sin tables computed by the model's own :class:`~modernalbert.model.modeling.RotaryEmbedding`, one pair per
  layer type (ModernBERT: base 160,000 global, 10,000 local);
* ``MultiHeadAttention`` with the key-padding lengths (B,) of right-padded rows, and for local (sliding-window)
  layers an additive (1, 1, L, L) band bias (``|i - j| <= config.sliding_window``: the positions transformers' and
  our sliding-window masks count), built once per graph from L;
* ``LayerNormalization`` (bias-free: scale only) and ``Gelu`` (exact erf, the model's ``gelu``; ``FastGelu`` for the
  tanh forms).

Everything runs on the padded (B, L) batch: the graph has no gather/scatter of real tokens, so the length bucketing
of the runners (:mod:`modernalbert.inference`) is what keeps padding small. Measured against the torch-exported
graph and HF ModernBERT in ``benchmarks/deploy.py``.

Rows must be right-padded (a mask of ones then zeros, what tokenizers return with ``padding_side="right"``):
attention reads each row's length, not its mask. Weights of a block shared by several effective layers are stored
once. Inputs: ``input_ids`` and ``attention_mask`` (B, L), int64 or int32. Outputs:

=========================================  =====================================================================
class                                      outputs
=========================================  =====================================================================
``ModernAlbertModel``                      ``last_hidden_state`` (B, L, d), zero at pads; ``sentence_embedding``
                                           (B, d), ``pooling`` ``mean`` (default) or ``cls``
``ModernAlbertForSequenceClassification``  ``logits`` (B, C); ``sentence_embedding`` (B, d), mean-pooled
``ModernAlbertForTokenClassification``     ``logits`` (B, L, C), zero at pads
=========================================  =====================================================================

Forms: plain GeGLU groups (a merged and folded model), ``lora`` groups (a merged low-rank adapter: ``W + B A`` is
folded into the written weight, fp32 arithmetic) and ``rrt`` groups (their fixed per-position adapters folded per
effective layer). Routed groups (MoL, MoA) are refused with the fix (``modernalbert merge --form fold``): merging
changes what the model computes, so it is the user's explicit step, never an implicit one here.

Why this form (exploratory measurements, d 768 / f 1152 / 12 heads / 4 layers, lengths ~ N(256, 64), 2 threads):
ONNX Runtime's BERT optimiser run on the torch-exported graph fuses its LayerNorms and GELUs but no attention and
gains nothing measurable; written with the contrib operators, the graph was compared with variants using
``SkipLayerNormalization``, ``GroupQueryAttention``, plain MatMul/Softmax attention, an unpadded token layout (as the
torch export has) and an ``If`` that drops the mask for unpadded batches, each with per-channel int8; this form (plain
``LayerNormalization``, padded layout, ``MultiHeadAttention`` with key lengths) was kept. int8 recipes compared:
per-tensor and per-channel dynamic, 7-bit weights, block-wise weight-only (``MatMulNBits``), static QDQ calibrated on
text; per-channel dynamic kept its accuracy (99.8 % identical RT predictions) at the best speed.

int8 (:func:`quantize_deployment_graph`): dynamic quantisation of the encoder's constant-weight MatMuls with one
scale per output channel (ONNX Runtime's ``quantize_dynamic``, ``per_channel=True``); the embedding table, norms,
attention and the task head stay fp32. Measured accuracy on real text is in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model import modeling
from ..model.modeling import (
    GeGLU,
    LoRAGeGLU,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
    RRTGeGLU,
)
from .onnx import (
    INPUT_DTYPES,
    META_ARCHITECTURE,
    META_POOLING,
    POOLINGS,
    check_graph,
    quantize_int8,
    write_atomically,
)

MS_DOMAIN = "com.microsoft"
OPSET = 17  # LayerNormalization (17) is the newest standard op used
# Additive bias of keys outside a local layer's window: exp(-1e9 + s - max) is exactly 0 in fp32, and unlike -inf
# it keeps a (padding) query row whose every key is masked finite.
BAND_MASK_VALUE = -1.0e9
ACTIVATIONS = {"gelu": "Gelu", "gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu"}
META_EMBEDDING_POOLING = "modernalbert.sentence_embedding_pooling"
HEAD_PREFIXES = ("head.", "classifier.")  # initializer names of the task head (kept fp32 by the int8 recipe)
SUPPORTED = (ModernAlbertModel, ModernAlbertForSequenceClassification, ModernAlbertForTokenClassification)


class _Writer:
    """A minimal ONNX graph builder: unique value names, deduplicated named initializers, nodes in order."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: dict[str, Any] = {}
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, name: str, array: np.ndarray | torch.Tensor) -> str:
        """An initializer called ``name`` (stored once: later calls with the same name reuse it)."""
        from onnx import numpy_helper

        if name not in self.initializers:
            if isinstance(array, torch.Tensor):
                array = array.detach().to(torch.float32).cpu().numpy()
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "",
           **attrs: Any) -> Any:
        names = outputs if isinstance(outputs, list) else [self.fresh(op_type) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, names, name=self.fresh(f"n_{op_type}"),
                                                domain=domain or None, **attrs))
        return names[0] if len(names) == 1 else names


def check_deployable(model: Any, pooling: str, input_dtype: str) -> ModernAlbertModel:
    """The encoder of ``model``, after refusing what the deployment graph cannot write (with the fix)."""
    if not isinstance(model, SUPPORTED):
        raise ValueError(f"The deployment graph covers {', '.join(c.__name__ for c in SUPPORTED)}; got "
                         f"{type(model).__name__}: export it with export_onnx (modernalbert export onnx without "
                         "--deploy).")
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}: use one of {POOLINGS}.")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"Unknown input dtype {input_dtype!r}: use one of {tuple(INPUT_DTYPES)}.")
    base = model.base_model
    cfg = base.config
    for g, blk in enumerate(base.groups):
        if getattr(blk.mlp, "routed", False):
            raise ValueError(
                f"Group {g} has routed experts ({type(blk.mlp).__name__}): the deployment graph is written from a "
                "merged model. Merge first (modernalbert merge IN OUT --form fold, or "
                "modernalbert.export.merge_experts(model, form='fold')) and export the merged folder."
            )
        if not isinstance(blk.mlp, (GeGLU, LoRAGeGLU, RRTGeGLU)) or type(blk.mlp) not in modeling.FFN_CLASSES.values():
            raise ValueError(f"Group {g}'s FFN {type(blk.mlp).__name__} has no deployment form.")
    for name in (cfg.hidden_activation, cfg.classifier_activation):
        if name not in ACTIVATIONS:
            raise ValueError(f"Activation {name!r} has no ONNX Runtime kernel here: supported {tuple(ACTIVATIONS)}.")
    for layer_type in dict.fromkeys(cfg.layer_types):
        if base.rotary_emb.rope_type[layer_type] in ("dynamic", "longrope"):
            raise ValueError(f"RoPE type {base.rotary_emb.rope_type[layer_type]!r} ({layer_type}) recomputes its "
                             "frequencies per input length: the deployment graph needs static tables.")
    if next(base.parameters()).dtype != torch.float32:
        raise ValueError("The deployment graph is fp32 (ONNX Runtime's CPU kernels): pass model.float().")
    return base


def _ffn_weights(blk: Any, group: int, position: int) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(key, Wi (2f, d), Wo (d, f))`` of a block's FFN at a recursion position, adapters folded in fp32."""
    mlp = blk.mlp
    wi, wo = mlp.Wi.weight.detach().float(), mlp.Wo.weight.detach().float()
    if isinstance(mlp, LoRAGeGLU):  # merged adapter, scale already in B
        wi = wi + mlp.lora_B1.detach().float() @ mlp.lora_A1.detach().float()
        wo = wo + mlp.lora_B2.detach().float() @ mlp.lora_A2.detach().float()
    elif isinstance(mlp, RRTGeGLU):  # one fixed adapter per recursion position
        p = position
        wi = wi + mlp.scale * (mlp.lora_B1[p].detach().float() @ mlp.lora_A1[p].detach().float())
        wo = wo + mlp.scale * (mlp.lora_B2[p].detach().float() @ mlp.lora_A2[p].detach().float())
        return f"groups.{group}.mlp.position{p}", wi, wo
    return f"groups.{group}.mlp", wi, wo


def _rope_tables(base: ModernAlbertModel, layer_type: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(max_len, dh/2) fp32 cos and sin of ``layer_type``'s RoPE, from the model's own rotary module (its attention
    scaling included). The two halves of the model's (.., dh) tables are equal (rotate-half): one is kept."""
    positions = torch.arange(max_len)
    cos, sin = base.rotary_emb(torch.empty(0), positions, layer_type)  # (max_len, dh) each
    half = cos.shape[-1] // 2
    return cos[:, :half].numpy(), sin[:, :half].numpy()


def _layout(w: _Writer) -> dict[str, str]:
    """Values every layer reads: the float mask (B, L), the lengths (B,) int32 and L as a (1,) int64."""
    from onnx import TensorProto

    mask = "attention_mask"
    lengths = w.op("ReduceSum", [w.op("Cast", [mask], to=TensorProto.INT64), w.const("axis1", np.array([1]))],
                   keepdims=0)  # (B,)
    shape = w.op("Shape", ["input_ids"])  # [B, L]
    seq_len = w.op("Slice", [shape, w.const("one", np.array([1])), w.const("two", np.array([2]))])  # [L]
    return {"mask": w.op("Cast", [mask], to=TensorProto.FLOAT),  # (B, L)
            "lengths64": lengths, "L": seq_len,
            # Attention lengths: a row without any real token attends its first slot (a pad) so that its softmax
            # stays finite; its outputs are zeroed with the mask, as the model leaves such a row.
            "lengths": w.op("Cast", [w.op("Max", [lengths, w.const("one", np.array([1]))])], to=TensorProto.INT32)}


def _band_bias(w: _Writer, seq_len: str, window: int) -> str:
    """(1, 1, L, L) additive bias of a local layer: 0 where ``|i - j| <= window``, :data:`BAND_MASK_VALUE` else."""
    length = w.op("Squeeze", [seq_len, w.const("zero", np.array([0]))])  # () int64
    pos = w.op("Range", [w.const("scalar0", np.array(0)), length, w.const("scalar1", np.array(1))])  # (L,)
    dist = w.op("Abs", [w.op("Sub", [w.op("Unsqueeze", [pos, w.const("one", np.array([1]))]),
                                     w.op("Unsqueeze", [pos, w.const("zero", np.array([0]))])])])  # (L, L)
    inside = w.op("LessOrEqual", [dist, w.const(f"window{window}", np.array(window, np.int64))])  # (L, L) bool
    bias = w.op("Where", [inside, w.const("bias0", np.array(0.0, np.float32)),
                          w.const("band_mask_value", np.array(BAND_MASK_VALUE, np.float32))])  # (L, L)
    return w.op("Unsqueeze", [bias, w.const("axes01", np.array([0, 1]))])  # (1, 1, L, L)


def _layer_norm(w: _Writer, x: str, name: str, weight: torch.Tensor, eps: float) -> str:
    return w.op("LayerNormalization", [x, w.const(name, weight)], axis=-1, epsilon=eps)


def _linear(w: _Writer, x: str, name: str, weight: torch.Tensor) -> str:
    """``x @ weight.T`` for an nn.Linear weight (out, in), stored transposed (in, out) under ``name``."""
    return w.op("MatMul", [x, w.const(name, weight.detach().float().T.contiguous())])


def _encoder(w: _Writer, base: ModernAlbertModel, layout: dict[str, str], max_len: int) -> str:
    """The encoder on the padded batch: (B, L) ids to the final-normed (B, L, d) states (pads not yet zeroed)."""
    cfg = base.config
    d, h, eps = cfg.hidden_size, cfg.num_attention_heads, float(cfg.norm_eps)
    emb = base.embeddings
    x = w.op("Gather", [w.const("embeddings.tok_embeddings.weight", emb.tok_embeddings.weight), "input_ids"],
             axis=0)  # (B, L, e)
    if emb.proj is not None:
        x = _linear(w, x, "embeddings.proj.weight.T", emb.proj.weight)  # (B, L, d)
    x = _layer_norm(w, x, "embeddings.norm.weight", emb.norm.weight, eps)  # (B, L, d)
    tables, biases = {}, {}
    for layer_type in dict.fromkeys(cfg.layer_types):
        cos, sin = _rope_tables(base, layer_type, max_len)
        tables[layer_type] = (w.const(f"rope.{layer_type}.cos", cos), w.const(f"rope.{layer_type}.sin", sin))
        if layer_type == "sliding_attention":
            biases[layer_type] = _band_bias(w, layout["L"], cfg.sliding_window)
    pos0 = w.const("position_offset", np.array([0], np.int64))
    act = ACTIVATIONS[cfg.hidden_activation]
    for layer, (group, position) in enumerate(base.layer_plan()):
        blk, prefix = base.groups[group], f"groups.{group}"
        layer_type = cfg.layer_types[layer]
        xn = x if layer == 0 else _layer_norm(w, x, f"{prefix}.attn_norm.weight", blk.attn_norm.weight, eps)
        qkv = _linear(w, xn, f"{prefix}.attn.Wqkv.weight.T", blk.attn.Wqkv.weight)  # (B, L, 3d)
        q, k, v = w.op("Split", [qkv, w.const("split_qkv", np.array([d, d, d]))], outputs=3, axis=-1)  # (B, L, d)
        cos, sin = tables[layer_type]
        q = w.op("RotaryEmbedding", [q, pos0, cos, sin], domain=MS_DOMAIN, num_heads=h)  # (B, L, d)
        k = w.op("RotaryEmbedding", [k, pos0, cos, sin], domain=MS_DOMAIN, num_heads=h)  # (B, L, d)
        extra = [biases[layer_type]] if layer_type in biases else []
        attn = w.op("MultiHeadAttention", [q, k, v, "", layout["lengths"], *extra], domain=MS_DOMAIN,
                    num_heads=h)  # (B, L, d)
        x = w.op("Add", [x, _linear(w, attn, f"{prefix}.attn.Wo.weight.T", blk.attn.Wo.weight)])  # (B, L, d)
        xn = _layer_norm(w, x, f"{prefix}.mlp_norm.weight", blk.mlp_norm.weight, eps)
        key, wi, wo = _ffn_weights(blk, group, position)
        u = _linear(w, xn, f"{key}.Wi.weight.T", wi)  # (B, L, 2f)
        inp, gate = w.op("Split", [u, w.const("split_glu", np.array([cfg.intermediate_size] * 2))], outputs=2,
                         axis=-1)  # (B, L, f) each
        a = w.op("Mul", [w.op(act, [inp], domain=MS_DOMAIN), gate])  # (B, L, f)
        x = w.op("Add", [x, _linear(w, a, f"{key}.Wo.weight.T", wo)])  # (B, L, d)
    return _layer_norm(w, x, "final_norm.weight", base.final_norm.weight, eps)  # (B, L, d)


def _pool(w: _Writer, hidden: str, layout: dict[str, str], mode: str) -> str:
    """(B, L, d) zero-at-pads states to (B, d) as :func:`~modernalbert.model.modeling.pool`: mean over real
    tokens, or the first real token (a one-hot row of the mask's first 1), both as one batched MatMul."""
    from onnx import TensorProto

    mask, one = layout["mask"], w.const("one", np.array([1]))
    if mode == "mean":
        weights = w.op("Div", [mask, w.op("Max", [w.op("Cast", [w.op("Unsqueeze", [layout["lengths64"], one])],
                                                        to=TensorProto.FLOAT),
                                                  w.const("one_f", np.array([1.0], np.float32))])])  # (B, L)
    else:
        first = w.op("ArgMax", [mask], axis=1, keepdims=1)  # (B, 1)
        pos = w.op("Range", [w.const("scalar0", np.array(0)),
                             w.op("Squeeze", [layout["L"], w.const("zero", np.array([0]))]),
                             w.const("scalar1", np.array(1))])  # (L,)
        weights = w.op("Cast", [w.op("Equal", [w.op("Unsqueeze", [pos, w.const("zero", np.array([0]))]), first])],
                       to=TensorProto.FLOAT)  # (B, L) one-hot
    pooled = w.op("MatMul", [w.op("Unsqueeze", [weights, one]), hidden])  # (B, 1, d)
    return w.op("Squeeze", [pooled, one])  # (B, d)


def _head(w: _Writer, model: Any, x: str) -> str:
    """PredictionHead then the classifier: (..., d) to (..., C)."""
    cfg = model.config
    z = _linear(w, x, "head.dense.weight.T", model.head.dense.weight)
    z = w.op(ACTIVATIONS[cfg.classifier_activation], [z], domain=MS_DOMAIN)
    z = _layer_norm(w, z, "head.norm.weight", model.head.norm.weight, float(cfg.norm_eps))
    return w.op("Add", [_linear(w, z, "classifier.weight.T", model.classifier.weight),
                        w.const("classifier.bias", model.classifier.bias)])


def build_deployment_graph(model: Any, *, pooling: str = "mean", input_dtype: str = "int64",
                           max_length: int | None = None, token_type_ids: bool = False) -> Any:
    """The deployment graph of ``model`` as an ``onnx.ModelProto`` (not written; see :func:`write_deployment_graph`).

    Args:
        model: A merged or plain ``ModernAlbertModel``, ``ModernAlbertForSequenceClassification`` or
            ``ModernAlbertForTokenClassification``, fp32.
        pooling: The encoder's ``sentence_embedding``: ``"mean"`` or ``"cls"`` (heads: mean).
        input_dtype: ``"int64"`` or ``"int32"`` inputs.
        max_length: Longest sequence the RoPE tables cover (default ``config.max_position_embeddings``).
        token_type_ids: Also take a ``token_type_ids`` input (accepted and ignored, as export_onnx's), for feeding
            a BERT-family tokenizer's output as it is.

    Raises:
        ValueError: Another class, routed groups (merge first), a dtype other than fp32, an unsupported activation
            or a dynamic RoPE type, an unknown pooling or input dtype.
    """
    from onnx import TensorProto, helper

    base = check_deployable(model, pooling, input_dtype)
    cfg = base.config
    max_len = max_length or cfg.max_position_embeddings
    itype = TensorProto.INT64 if input_dtype == "int64" else TensorProto.INT32
    names = ("input_ids", "attention_mask", *(("token_type_ids",) if token_type_ids else ()))
    inputs = [helper.make_tensor_value_info(n, itype, ["batch", "sequence"]) for n in names]
    w = _Writer()
    layout = _layout(w)
    with torch.no_grad():
        hidden = _encoder(w, base, layout, max_len)  # (B, L, d)
        keep = w.op("Unsqueeze", [layout["mask"], w.const("axis2", np.array([2]))])  # (B, L, 1)
        hidden = w.op("Mul", [hidden, keep])  # (B, L, d), zero at pads as the model returns it
        d = cfg.hidden_size
        if isinstance(model, ModernAlbertModel):
            outputs = {"last_hidden_state": (hidden, ["batch", "sequence", d]),
                       "sentence_embedding": (_pool(w, hidden, layout, pooling), ["batch", d])}
        elif isinstance(model, ModernAlbertForSequenceClassification):
            pooled = _pool(w, hidden, layout, cfg.classifier_pooling)  # (B, d)
            outputs = {"logits": (_head(w, model, pooled), ["batch", cfg.num_labels]),
                       "sentence_embedding": (_pool(w, hidden, layout, "mean") if cfg.classifier_pooling != "mean"
                                              else pooled, ["batch", d])}
        else:  # token classification: zero at pads, as the model scatters its real-token logits
            logits = w.op("Mul", [_head(w, model, hidden), keep])  # (B, L, C)
            outputs = {"logits": (logits, ["batch", "sequence", cfg.num_labels])}
    for name, (value, _) in outputs.items():
        w.op("Identity", [value], outputs=[name])
    graph = helper.make_graph(
        w.nodes, "modernalbert_deployment", inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, (_, shape) in outputs.items()],
        list(w.initializers.values()))
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                         helper.make_opsetid(MS_DOMAIN, 1)],
                                   producer_name="modernalbert.export.ort_graph")
    onnx_model.ir_version = 10
    # META_POOLING as export_onnx writes it (the encoder's pooling; "" for heads, whose outputs are their own), and
    # the pooling of whatever sentence_embedding output the graph has.
    embedding_pooling = (pooling if isinstance(model, ModernAlbertModel)
                         else "mean" if "sentence_embedding" in outputs else "")
    helper.set_model_props(onnx_model, {
        META_ARCHITECTURE: type(model).__name__,
        META_POOLING: pooling if isinstance(model, ModernAlbertModel) else "",
        META_EMBEDDING_POOLING: embedding_pooling, "modernalbert.graph": "deployment",
        "modernalbert.padding": "right"})
    return onnx_model


def write_deployment_graph(model: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`build_deployment_graph` ``(model, **kwargs)`` to ``path`` (one file; weights beside it in
    ``<name>.data`` above protobuf's 2 GB), checked with ``onnx.checker`` and ONNX Runtime before it is moved into
    place atomically.

    Returns:
        The written path.

    Raises:
        ValueError: See :func:`build_deployment_graph`.
        OnnxExportError: The written graph does not load (nothing is left at ``path``).
    """
    import onnx

    onnx_model = build_deployment_graph(model, **kwargs)
    external = onnx_model.ByteSize() > 2**31 - 2**24  # protobuf's limit, with room for the graph itself

    def write(tmp: Path) -> None:
        onnx.save(onnx_model, str(tmp), save_as_external_data=external, location=f"{tmp.name}.data")
        check_graph(tmp, what="deployment graph")

    return write_atomically(Path(path), write)


def encoder_matmuls(path: str | os.PathLike) -> list[str]:
    """Names of the MatMul nodes of a deployment graph whose weight is an encoder initializer (not the head's)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights
            and not n.input[1].startswith(HEAD_PREFIXES)]


def quantize_deployment_graph(path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """int8 form of a deployment graph: per-channel dynamic int8 on the encoder's weight MatMuls (see the module
    notes); checked and written atomically by :func:`~modernalbert.export.onnx.quantize_int8`."""
    return quantize_int8(path, out_path, per_channel=True, nodes_to_quantize=encoder_matmuls(path))


__all__ = ["META_EMBEDDING_POOLING", "build_deployment_graph", "check_deployable", "encoder_matmuls",
           "quantize_deployment_graph", "write_deployment_graph"]
