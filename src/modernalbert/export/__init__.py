"""Deployment: expert merging, and ONNX export (fp32 and int8) checked with ONNX Runtime."""

from .merge import measure_routing, merge_experts
from .onnx import compare_onnx, export_onnx, quantize_int8, verify_onnx

__all__ = ["compare_onnx", "export_onnx", "measure_routing", "merge_experts", "quantize_int8", "verify_onnx"]
