"""Inference: ``predict`` (labels, scores, entity spans) and ``encode`` (sentence embeddings) over files of any size,
from a PyTorch model folder or an exported ONNX folder, with length-bucketed batching that keeps the input order."""
