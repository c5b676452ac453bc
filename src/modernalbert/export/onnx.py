"""ONNX export of any ModernAlbert model (merged or not), checked with ONNX Runtime, and int8 dynamic quantisation.

The graph takes ``input_ids`` and ``attention_mask`` ((batch, sequence), or (batch, choices, sequence) for multiple
choice; every axis dynamic), int64 by default (what tokenizers return with ``return_tensors="np"``) or int32
(``input_dtype="int32"``, for runtimes that hold token ids in 32 bits): an ONNX graph input has one element type, so
the choice is made at export; :func:`run_onnx` casts a batch to whatever the graph declares. With
``token_type_ids=True`` the graph also takes ``token_type_ids`` (BERT-family tokenizers return them), accepted and
ignored: ModernAlbert has no segment embedding. ``modernalbert export onnx`` declares exactly the inputs the model's
tokenizer returns (its ``model_input_names``), so ``session.run(None, dict(tokenizer(texts, return_tensors="np")))``
works as it is. The graph returns the head's natural outputs (router statistics are not exported):

========================================  ======================================================================
class                                     outputs
========================================  ======================================================================
``ModernAlbertModel``                     ``last_hidden_state`` (B, L, d); plus ``sentence_embedding`` (B, d)
                                          with ``pooling="mean"`` (mean over real tokens) or ``"cls"``
``ModernAlbertForMaskedLM``               ``logits`` (B, L, V)
``ModernAlbertForSequenceClassification`` ``logits`` (B, C)
``ModernAlbertForTokenClassification``    ``logits`` (B, L, C)
``ModernAlbertForQuestionAnswering``      ``start_logits``, ``end_logits`` (B, L)
``ModernAlbertForMultipleChoice``         ``logits`` (B, C)
========================================  ======================================================================

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` capture, then onnxscript translation) at
opset 18 by default (its lowest; higher ones are accepted). It is torch's default and supported exporter (the
TorchScript one, ``dynamo=False``, still runs in torch 2.13 but is deprecated), its ``dynamic_shapes`` make the
axes symbolic rather than traced at one size, and it keeps the unpadded execution of the model: the real tokens
are found with ``NonZero`` in the graph, so the N token rows are a data-dependent axis and no work is spent on
pads, exactly as in eager mode. Routed (MoL/MoA) groups export as they are: their executors are dense and
static-shape (top-k gate as an (N, E) matrix). The graph does not re-check inputs: token ids must lie in
``[0, vocab_size)`` and sequences must not exceed ``max_position_embeddings``, as the tokenizer ensures.

Weights reach every matrix product as initializers: the exporter leaves a reshape or transpose of a large weight
(the stacked experts ``lora_A1.view(E*r, d)``, above its 8192-element folding limit) as a node computed at run time,
which ONNX Runtime's int8 quantiser cannot quantise and, where one weight serves two recursion positions, rewrote
into an invalid graph ("Duplicate definition of name"). Such weight-only layout nodes are folded into initializers
after the export (:func:`fold_weight_layouts`), and every int8 graph is checked (``onnx.checker`` and an ONNX
Runtime session) before it is moved into place.

Files: the graph and its weights are one ``.onnx`` file while the weights fit the 2 GB protobuf limit; above it
they go to ``<name>.data`` beside the graph (ONNX external data, referenced by that relative name, so the two must
stay together). Both are written into a temporary folder next to the destination and moved into place with
``os.replace``, data first and graph last, so a reader never sees a partial or data-less graph.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model import modeling
from ..model.modeling import ModernAlbertModel, ModernAlbertPreTrainedModel
from ..utils.io import staging_folder, usual_permissions

DEFAULT_OPSET = 18
POOLINGS = ("mean", "cls")
INPUT_NAMES = ("input_ids", "attention_mask")
TOKEN_TYPE_IDS = "token_type_ids"  # accepted and ignored (ModernAlbert has no segment embedding)
INPUT_DTYPES = {"int64": torch.int64, "int32": torch.int32}
# Weight-only nodes that only rearrange a weight: folded into initializers after the export (see the module notes).
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice", "Split",
                        "Identity", "Cast"})

logger = logging.getLogger(__name__)

# Head class name -> output names, in the graph's order.
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "ModernAlbertModel": ("last_hidden_state",),
    "ModernAlbertForMaskedLM": ("logits",),
    "ModernAlbertForSequenceClassification": ("logits",),
    "ModernAlbertForTokenClassification": ("logits",),
    "ModernAlbertForQuestionAnswering": ("start_logits", "end_logits"),
    "ModernAlbertForMultipleChoice": ("logits",),
}

# Keys of the ONNX metadata that make an exported file self-describing (read back by verify_onnx).
META_ARCHITECTURE = "modernalbert.architecture"
META_POOLING = "modernalbert.pooling"

_MERGE_HINT = "merge the experts first (`modernalbert merge IN OUT --form fold`) and export the merged model"


class OnnxExportError(RuntimeError):
    """The model could not be exported (the message says why and what to do)."""


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime outputs differ from PyTorch by more than the tolerance."""


# ================================================================================================== the graph


class _ExportModule(nn.Module):
    """Plain-tensor view of a ModernAlbert model: (input_ids, attention_mask[, token_type_ids]) -> tuple of named
    outputs."""

    def __init__(self, model: ModernAlbertPreTrainedModel, pooling: str | None, token_type_ids: bool = False):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.is_base = isinstance(model, ModernAlbertModel)
        self.names = output_names(model, pooling)
        self.input_names = (*INPUT_NAMES, TOKEN_TYPE_IDS) if token_type_ids else INPUT_NAMES

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        # token_type_ids is a graph input so that a BERT-family tokenizer's output feeds the graph as it is; it is
        # not read (no segment embedding). int32 ids become int64 inside the graph (a no-op for int64 inputs).
        input_ids, attention_mask = input_ids.long(), attention_mask.long()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        if self.is_base:
            hidden = out.last_hidden_state  # (B, L, d)
            if self.pooling is None:
                return (hidden,)
            return hidden, modeling.pool(hidden, attention_mask, self.pooling)  # (B, L, d), (B, d)
        return tuple(getattr(out, name) for name in self.names)


def _architecture(model: nn.Module) -> str:
    """The ModernAlbert class ``model`` is (or derives from): it decides the graph's outputs."""
    if isinstance(model, ModernAlbertPreTrainedModel):
        for cls in type(model).__mro__:
            if cls.__module__ == modeling.__name__ and cls.__name__ in OUTPUT_NAMES:
                return cls.__name__
    raise ValueError(f"Cannot export {type(model).__name__}: expected a ModernAlbert model or head "
                     f"({', '.join(OUTPUT_NAMES)}).")


def output_names(model: ModernAlbertPreTrainedModel, pooling: str | None = None) -> tuple[str, ...]:
    """Names of the graph outputs that :func:`export_onnx` gives ``model`` (with ``pooling`` for the base model).

    Raises:
        ValueError: Unknown model class or pooling, or pooling asked of a head model.
    """
    arch = _architecture(model)
    if pooling is None:
        return OUTPUT_NAMES[arch]
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}: use one of {POOLINGS}.")
    if arch != "ModernAlbertModel":
        raise ValueError(f"pooling={pooling!r} adds a sentence embedding to the base model only; {arch} already "
                         "has its own outputs (export the base ModernAlbertModel, or drop --pooling).")
    return (*OUTPUT_NAMES[arch], "sentence_embedding")


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'modernalbert[export]' "
                          "(onnx, onnxruntime, onnxscript).")


def _routed_groups(model: ModernAlbertPreTrainedModel) -> list[int]:
    base = model.base_model
    return [g for g, blk in enumerate(base.groups) if getattr(blk.mlp, "routed", False)]


def _example_inputs(model: ModernAlbertPreTrainedModel, dtype: torch.dtype = torch.int64,
                    token_type_ids: bool = False) -> tuple[torch.Tensor, ...]:
    """A small padded batch to trace with. Each dynamic axis gets a size >= 2 (torch.export specialises sizes 0
    and 1), and one row is padded so that the trace sees a real mask."""
    cfg = model.config
    L = min(8, cfg.max_position_embeddings)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, L), generator=g)  # (B, L)
    mask = torch.ones(2, L, dtype=torch.long)
    mask[1, L // 2 :] = 0
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id or 0)
    if isinstance(model, modeling.ModernAlbertForMultipleChoice):
        ids, mask = ids[:, None].expand(2, 2, L).contiguous(), mask[:, None].expand(2, 2, L).contiguous()  # (B, C, L)
    inputs = (ids, mask, torch.zeros_like(ids)) if token_type_ids else (ids, mask)
    return tuple(t.to(dtype) for t in inputs)


def _dynamic_shapes(model: ModernAlbertPreTrainedModel, names: Sequence[str] = INPUT_NAMES) -> dict[str, dict]:
    from torch.export import Dim

    # All inputs share the same Dim objects: the model checks that their shapes agree.
    batch = Dim("batch", min=1)
    # The model refuses sequences longer than max_position_embeddings; the bound tells the tracer so.
    sequence = Dim("sequence", min=1, max=model.config.max_position_embeddings)
    if isinstance(model, modeling.ModernAlbertForMultipleChoice):
        axes = {0: batch, 1: Dim("choices", min=1), 2: sequence}
    else:
        axes = {0: batch, 1: sequence}
    return {name: axes for name in names}


def fold_weight_layouts(model: Any) -> bool:
    """Fold every node that only rearranges weights (reshape, transpose, ... of initializers) into an initializer.

    The exporter's own constant folding stops at 8192-element inputs, so e.g. the stacked expert matrix
    ``lora_A1.view(E*r, d)`` of a larger model stays a node computed at run time: ONNX Runtime's int8 quantiser
    then leaves that weight in fp32 and, where the node feeds two matrix products (one weight shared by two
    recursion positions), writes an invalid graph (two ``Transpose`` nodes defining the same name). Folded, every
    matrix product reads an initializer. Weights used elsewhere as they are keep their copy (measured: the folded
    graph is not larger).

    Args:
        model: The exported ``onnx_ir.Model`` (``ONNXProgram.model``), changed in place.

    Returns:
        Whether anything was folded.
    """
    from onnxscript.optimizer import fold_constants, remove_unused_nodes

    sizes = [v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None]
    limit = max(sizes, default=0)

    def layout_only(node: Any) -> bool | None:  # None: the folder's default rules (small constants only)
        return True if node.domain == "" and node.op_type in LAYOUT_OPS else None

    folded = fold_constants(model, input_size_limit=limit, output_size_limit=limit, should_fold=layout_only)
    remove_unused_nodes(model)
    return bool(folded)


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    # Progress for a library user who turns logging on; the command line shows its own stages.
    logger.info("%s ...", what)
    start = time.perf_counter()
    yield
    logger.info("%s: %.1f s", what, time.perf_counter() - start)


# ============================================================================================== atomic writes


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_path)`` in a temporary folder beside ``path``, then move what it wrote into place.

    Files other than the graph (ONNX external data) move first, the graph last. A stale ``<name>.data`` left by an
    earlier, larger export is removed once the new self-contained graph is in place.
    """
    path = Path(path)
    with staging_folder(path) as tmp:
        write(tmp / path.name)
        written = sorted(tmp.iterdir(), key=lambda f: f.name == path.name)  # the graph last
        if not written or written[-1].name != path.name:
            raise OnnxExportError(f"Nothing was written to {path}.")
        for f in written:
            usual_permissions(f)
            os.replace(f, path.parent / f.name)
        stale = path.parent / f"{path.name}.data"
        if stale.exists() and all(f.name != stale.name for f in written):
            stale.unlink()
    return path


# ===================================================================================================== export


def export_onnx(model: ModernAlbertPreTrainedModel, path: str | os.PathLike, *, opset: int | None = None,
                pooling: str | None = None, token_type_ids: bool = False, input_dtype: str = "int64") -> Path:
    """Export a ModernAlbert model or head to ONNX with dynamic batch (and choices) and sequence axes.

    Args:
        model: Any ModernAlbert class; merged or with routed (MoL/MoA) groups. Exported in eval mode, in its own
            dtype: an fp16 model gives an fp16 graph, with routing and RoPE tables in fp32 inside as in PyTorch
            (fp32 is what ONNX Runtime's CPU kernels are fast and exact in; its CPU provider runs fp16 graphs,
            looser by fp16 rounding). A bf16 model is refused before anything is exported: the exporter's bf16
            graph does not pass ONNX's own checker (``ConstantOfShape`` has no bf16 output type) and ONNX
            Runtime's CPU provider has no bf16 GEMM; export ``model.float()`` (or ``model.half()``). Its
            train/eval mode is restored.
        path: Destination ``.onnx`` file (parent folders are created).
        opset: ONNX opset, 18 (the default, the exporter's own) or higher.
        pooling: Base model only: also output ``sentence_embedding`` (B, d), ``"mean"`` over real tokens or
            ``"cls"`` (first real token).
        token_type_ids: Also take a ``token_type_ids`` input (accepted and ignored), as BERT-family tokenizers
            return one.
        input_dtype: Element type of the inputs, ``"int64"`` (the default) or ``"int32"``.

    Returns:
        The path of the written graph (checked with :func:`check_graph` before it was moved into place).

    Raises:
        ValueError: Unknown class, pooling or input dtype, pooling on a head, opset below 18, a bf16 model, or
            an attention implementation that cannot be traced (FlashAttention).
        OnnxExportError: The exporter failed (for models with routed groups the message names merging as the
            fix), or wrote an invalid graph; nothing is written then.
    """
    names = output_names(model, pooling)
    _require("onnxscript", "onnx")
    impl = model.config._attn_implementation or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"Cannot export attn_implementation={impl!r} (a CUDA kernel): load the model with "
                         "attn_implementation='sdpa' to export it.")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < DEFAULT_OPSET:
        # The exporter implements opset 18 and up; below that it silently keeps 18 when conversion fails.
        raise ValueError(f"opset {opset} is not supported: the ONNX exporter writes opset >= {DEFAULT_OPSET}.")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype={input_dtype!r} is invalid: use one of {list(INPUT_DTYPES)}.")
    if model.dtype == torch.bfloat16:
        raise ValueError("Cannot export a bf16 model to ONNX: the exported bf16 graph is not valid ONNX "
                         "(ConstantOfShape has no bf16 output) and ONNX Runtime's CPU provider has no bf16 GEMM. "
                         "Export model.float() (exact, fastest on CPU) or model.half(); nothing was written.")
    wrapper = _ExportModule(model, pooling, token_type_ids)
    example = _example_inputs(model, INPUT_DTYPES[input_dtype], token_type_ids)
    was_training = model.training
    model.eval()
    # The exporter's own notices (deprecations inside torch, dynamic-shape renames, torchvision ops it could not
    # register) say nothing about this model, so they are held back for the call.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry_level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with _stage(f"ONNX export of {type(model).__name__} (torch.export, then ONNX translation)"), \
                warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(
                wrapper, example, None, dynamo=True, opset_version=opset, verbose=False,
                input_names=list(wrapper.input_names), output_names=list(names),
                dynamic_shapes=_dynamic_shapes(model, wrapper.input_names),
            )
    except Exception as err:
        routed = _routed_groups(model)
        hint = (f" The model has unmerged routed groups {routed}: {_MERGE_HINT}." if routed else "")
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else "no message"
        raise OnnxExportError(f"ONNX export of {type(model).__name__} failed: {type(err).__name__}: {first}.{hint}"
                              ) from err
    finally:
        model.train(was_training)
        registry_log.setLevel(registry_level)
    with _stage("folding weight layouts into initializers"):
        fold_weight_layouts(program.model)
    program.model.metadata_props[META_ARCHITECTURE] = _architecture(model)
    program.model.metadata_props[META_POOLING] = pooling or ""

    def write(tmp: Path) -> None:
        program.save(tmp)
        with _stage("checking the graph (onnx.checker, ONNX Runtime)"):
            check_graph(tmp)

    return write_atomically(Path(path), write)


def _has_external_data(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def check_graph(onnx_path: str | os.PathLike, *, what: str = "graph") -> None:
    """Check a written graph the two ways a user's tools will: ``onnx.checker`` (full check, with shape inference)
    and an ONNX Runtime session (when onnxruntime is installed).

    Raises:
        OnnxExportError: The graph is invalid (the message names the file and the checker's or runtime's reason).
    """
    import onnx

    path = Path(onnx_path)
    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: graphs with external data too
        if importlib.util.find_spec("onnxruntime") is not None:
            inference_session(path)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxExportError(f"The {what} written for {path.name} is invalid ({type(err).__name__}: {reason}); "
                              "nothing was written in its place.") from err


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, *, per_channel: bool = False,
                  nodes_to_quantize: Sequence[str] | None = None) -> Path:
    """Dynamic int8 quantisation (ONNX Runtime ``quantize_dynamic``): int8 weights (QInt8), activations quantised
    on the fly per batch. Suits CPU inference; quality is checked with :func:`compare_onnx`.

    With ``nodes_to_quantize`` only those ``MatMul`` nodes are quantised, and only where their weight is a constant
    (ONNX Runtime's ``MatMulConstBOnly``): the recipe of the deployment graph (:mod:`.ort_graph`), whose attention
    products, norms and embedding table stay fp32. ``per_channel`` gives every output channel of a weight its own
    scale (ONNX Runtime's ``per_channel``) instead of one per tensor.

    The int8 graph is checked (:func:`check_graph`) before it is moved into place: an invalid one is never written.

    Args:
        onnx_path: An fp32 graph written by :func:`export_onnx`.
        out_path: Destination of the int8 graph (written atomically).

    Returns:
        The path of the int8 graph.

    Raises:
        FileNotFoundError: ``onnx_path`` does not exist.
        OnnxExportError: The quantiser failed or wrote an invalid graph (nothing is written to ``out_path``).
    """
    _require("onnxruntime", "onnx")
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"No ONNX model at {onnx_path}.")
    external = _has_external_data(onnx_path)

    def write(tmp: Path) -> None:
        # The quantiser logs to the root logger, advising a pre-processing pass (symbolic shape inference) that
        # cannot read this graph's data-dependent token axis, and it notes that the integer index tensors are
        # not quantised; both are expected here, so its warnings are held back for the call.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            with _stage(f"int8 quantisation of {onnx_path.name}"):
                options: dict[str, Any] = {}
                if nodes_to_quantize is not None:
                    options = dict(op_types_to_quantize=["MatMul"], nodes_to_quantize=list(nodes_to_quantize),
                                   extra_options={"MatMulConstBOnly": True,
                                                  "DefaultTensorType": TensorProto.FLOAT})
                quantize_dynamic(onnx_path, tmp, weight_type=QuantType.QInt8, use_external_data_format=external,
                                 per_channel=per_channel, **options)
        except Exception as err:
            raise OnnxExportError(f"int8 quantisation of {onnx_path} failed ({type(err).__name__}: "
                                  f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}); "
                                  "nothing was written.") from err
        finally:
            root.setLevel(level)
        with _stage("checking the int8 graph (onnx.checker, ONNX Runtime)"):
            check_graph(tmp, what="int8 graph")

    return write_atomically(Path(out_path), write)


# ============================================================================================== verification


def inference_session(onnx_path: str | os.PathLike) -> Any:
    """An ONNX Runtime session on the CPU for a model file.

    Raises:
        ImportError: onnxruntime is not installed.
        FileNotFoundError: No file at ``onnx_path``.
    """
    _require("onnxruntime")
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX model at {path}.")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def feed(session: Any, batch: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
    """The inputs of ``session`` from a batch, as the graph declares them.

    Integer arrays are cast to the graph's element type (int32 or int64: either feeds either graph); a
    ``token_type_ids`` the graph does not take is dropped, and one it takes but the batch lacks is zeros (it is
    ignored anyway).

    Args:
        session: An ONNX Runtime session of a graph written by :func:`export_onnx`.
        batch: A mapping (e.g. a tokenizer's output) or an ``(input_ids, attention_mask)`` pair, of tensors or
            arrays.

    Raises:
        ValueError: ``input_ids`` or ``attention_mask`` is missing, or not an integer array.
    """
    items = dict(batch) if isinstance(batch, Mapping) else dict(zip(INPUT_NAMES, batch))
    missing = [n for n in INPUT_NAMES if items.get(n) is None]
    if missing:
        raise ValueError(f"Each batch needs {INPUT_NAMES}; missing {missing}.")
    out = {}
    for inp in session.get_inputs():
        v = items.get(inp.name)
        if v is None and inp.name == TOKEN_TYPE_IDS:
            v = np.zeros(np.shape(items["input_ids"]), dtype=np.int64)
        if v is None:
            raise ValueError(f"The graph takes {inp.name!r}, which the batch lacks.")
        v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"{inp.name} must hold integers, got {v.dtype}.")
        out[inp.name] = v.astype(_NUMPY_TYPES.get(inp.type, np.int64), copy=False)
    return out


def run_onnx(session: Any, batch: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
    """Run a graph written by :func:`export_onnx` on a batch (see :func:`feed`); returns output name -> array."""
    return _run(session, feed(session, batch))


def _run(session: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, batch)))


def verify_onnx(model: ModernAlbertPreTrainedModel, onnx_path: str | os.PathLike,
                batches: Iterable[Mapping[str, Any] | Sequence[Any]], atol: float = 1e-4) -> dict[str, float]:
    """Run the graph with ONNX Runtime (CPU) and the model with PyTorch on each batch and compare every output.

    Args:
        model: The model the graph was exported from.
        onnx_path: The exported graph (its metadata says which pooling was exported).
        batches: Dicts (or ``(input_ids, attention_mask)`` pairs) of tensors or arrays; any batch size and length.
        atol: Largest accepted absolute difference.

    Returns:
        Output name -> largest absolute difference over all batches.

    Raises:
        OnnxMismatchError: Some output differs by more than ``atol`` (or is not finite where PyTorch is).
        ValueError: The graph was exported from another class, or a batch lacks an input.
    """
    session = inference_session(onnx_path)
    meta = session.get_modelmeta().custom_metadata_map
    arch = _architecture(model)
    if meta.get(META_ARCHITECTURE, arch) != arch:
        raise ValueError(f"{onnx_path} was exported from {meta[META_ARCHITECTURE]}, not {arch}.")
    wrapper = _ExportModule(model, meta.get(META_POOLING) or None)
    was_training = model.training
    model.eval()
    diffs: dict[str, float] = {}
    shapes = []
    try:
        for batch in batches:
            inputs = feed(session, batch)
            shapes.append(inputs["input_ids"].shape)
            got = _run(session, inputs)
            with torch.no_grad():
                ref = wrapper(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES))
            for name, r in zip(wrapper.names, ref):
                r = r.float().numpy()
                diff = np.abs(got[name].astype(np.float64) - r.astype(np.float64))
                worst = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
                diffs[name] = max(diffs.get(name, 0.0), worst)
    finally:
        model.train(was_training)
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise OnnxMismatchError(
            f"ONNX Runtime disagrees with PyTorch for {onnx_path} beyond atol={atol}: "
            + ", ".join(f"{k} max |diff| {v:.3g}" for k, v in bad.items())
            + f" (batches of shape {[tuple(s) for s in shapes]})."
        )
    return diffs


def _cosines(ref: np.ndarray, cand: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Cosine similarities of matching vectors of two outputs, over real tokens / non-empty rows only."""
    ref, cand, mask = ref.astype(np.float64), cand.astype(np.float64), mask.astype(bool)
    if ref.ndim == mask.ndim + 1 and ref.shape[: mask.ndim] == mask.shape:
        a, b = ref[mask], cand[mask]  # (N, X): one vector per real token
    elif ref.shape == mask.shape:
        keep = mask.reshape(mask.shape[0], -1).any(-1)  # per-token scores: one vector per row, real tokens only
        a = np.where(mask, ref, 0.0).reshape(ref.shape[0], -1)[keep]  # (B', L)
        b = np.where(mask, cand, 0.0).reshape(cand.shape[0], -1)[keep]
    else:
        keep = mask.reshape(mask.shape[0], -1).any(-1)  # (B,) rows with at least one real token
        a, b = ref.reshape(ref.shape[0], -1)[keep], cand.reshape(cand.shape[0], -1)[keep]  # (B', X)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(norms, 1e-30)


def compare_onnx(reference_path: str | os.PathLike, candidate_path: str | os.PathLike,
                 batches: Iterable[Mapping[str, Any] | Sequence[Any]]) -> dict[str, dict[str, float]]:
    """Compare two graphs of the same model (e.g. fp32 and int8) with ONNX Runtime on the same batches.

    Args:
        reference_path: The reference graph (fp32).
        candidate_path: The graph to judge (int8).
        batches: As for :func:`verify_onnx`.

    Returns:
        Output name -> ``{"max_abs_diff", "mean_cosine", "min_cosine"}``; cosines are taken per real token for
        token outputs, per row (real tokens only) otherwise, and ignore rows without any real token.
    """
    ref_session, cand_session = inference_session(reference_path), inference_session(candidate_path)
    stats: dict[str, dict[str, list[float]]] = {}
    for batch in batches:
        inputs = feed(ref_session, batch)
        ref, cand = _run(ref_session, inputs), _run(cand_session, feed(cand_session, batch))
        for name, r in ref.items():
            s = stats.setdefault(name, {"diff": [], "cos": []})
            s["diff"].append(float(np.abs(r.astype(np.float64) - cand[name]).max()) if r.size else 0.0)
            s["cos"].extend(_cosines(r, cand[name], inputs["attention_mask"]).tolist())
    return {name: {"max_abs_diff": max(s["diff"]),
                   "mean_cosine": float(np.mean(s["cos"])) if s["cos"] else float("nan"),
                   "min_cosine": float(np.min(s["cos"])) if s["cos"] else float("nan")}
            for name, s in stats.items()}


def synthetic_batches(model: ModernAlbertPreTrainedModel, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Padded batches of varied shape for checking an export: one without padding, one with an all-pad row, one
    with ragged lengths; batch sizes and lengths differ from the export example's (2, 8), so the dynamic axes are
    exercised. Multiple-choice models get (B, C, L) batches."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    cap = cfg.max_position_embeddings
    plans = [[min(5, cap)], [min(13, cap), 0, min(6, cap)], [min(n, cap) for n in (11, 3, 7, 1)]]
    choices = 3 if isinstance(model, modeling.ModernAlbertForMultipleChoice) else None
    batches = []
    for lengths in plans:
        rows = lengths * (choices or 1)  # every choice of an example gets the example's length
        L = max(max(rows), 1)
        ids = rng.integers(0, cfg.vocab_size, size=(len(rows), L), dtype=np.int64)
        mask = (np.arange(L)[None, :] < np.asarray(rows)[:, None]).astype(np.int64)  # (B*C, L)
        ids = np.where(mask == 1, ids, cfg.pad_token_id or 0)
        if choices:
            ids = ids.reshape(choices, len(lengths), L).transpose(1, 0, 2).copy()  # (B, C, L)
            mask = mask.reshape(choices, len(lengths), L).transpose(1, 0, 2).copy()
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


__all__ = [
    "DEFAULT_OPSET",
    "INPUT_DTYPES",
    "OUTPUT_NAMES",
    "TOKEN_TYPE_IDS",
    "OnnxExportError",
    "OnnxMismatchError",
    "check_graph",
    "compare_onnx",
    "export_onnx",
    "feed",
    "fold_weight_layouts",
    "inference_session",
    "output_names",
    "quantize_int8",
    "run_onnx",
    "synthetic_batches",
    "verify_onnx",
]
