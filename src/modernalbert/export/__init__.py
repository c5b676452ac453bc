"""Deployment: expert merging, ONNX export (fp32 and int8) checked with ONNX Runtime, and the deployment graph
written with ONNX Runtime's fused operators."""

from .merge import measure_routing, merge_experts
from .onnx import compare_onnx, export_onnx, quantize_int8, verify_onnx
from .ort_graph import quantize_deployment_graph, write_deployment_graph

__all__ = ["compare_onnx", "export_onnx", "measure_routing", "merge_experts", "quantize_deployment_graph",
           "quantize_int8", "verify_onnx", "write_deployment_graph"]
