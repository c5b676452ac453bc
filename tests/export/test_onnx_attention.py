"""ONNX export of ModernBERT's attention pattern: a student loaded from Hugging Face ModernBERT at its default
attention pattern (global every third layer, a 128-token window elsewhere, RoPE bases 160,000 / 10,000), exported and
run by ONNX Runtime, reproduces the teacher's MLM logits on rows longer than the window. The graph runs the traced
path: padded global layers and the blocked local-attention kernel."""

import pytest
import torch
from transformers import ModernBertForMaskedLM

from modernalbert import ModernAlbertForMaskedLM, load_modernbert_weights
from modernalbert.export import export_onnx
from modernalbert.export.onnx import inference_session
from tests.model.test_parity_modernbert import default_teacher_config, long_batch, student_config

pytest.importorskip("onnxruntime")


def test_onnx_graph_reproduces_modernbert_with_local_layers(tmp_path):
    # Two layers keep the export short (its time grows with the graph): the default pattern's first two, a global
    # then a local layer, each through the traced path.
    teacher = ModernBertForMaskedLM(default_teacher_config(num_hidden_layers=2)).eval()
    with torch.no_grad():
        teacher.decoder.bias.normal_()
    student = ModernAlbertForMaskedLM(student_config(num_hidden_layers=2, max_position_embeddings=8192)).eval()
    load_modernbert_weights(student, teacher)
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    session = inference_session(export_onnx(student, tmp_path / "mlm.onnx"))
    ids, mask = long_batch()
    (logits,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(torch.from_numpy(logits)[real], ref[real], rtol=0, atol=1e-5)
