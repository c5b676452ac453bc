"""Inference: ``predict`` (labels, scores, entity spans) and ``encode`` (sentence embeddings) over files of any size,
from a PyTorch model folder or an exported ONNX folder, with length-bucketed batching that keeps the input order.

Modules: :mod:`.runners` (a model behind one batch call), :mod:`.streaming` (bucketed batches over a stream, in input
order), :mod:`.tasks` (logits to labels, scores and spans), :mod:`.writers` (JSON Lines / CSV, ``.npy`` / Parquet),
:mod:`.pipeline` (``predict`` and ``encode``)."""

from .pipeline import encode, predict
from .runners import Runner, load_runner, onnx_runner, torch_runner

__all__ = ["Runner", "encode", "load_runner", "onnx_runner", "predict", "torch_runner"]
