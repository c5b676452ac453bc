"""Merging and ONNX export keep the model's dtype; merge arithmetic is fp32 inside (PEFT's practice)."""

import copy

import numpy as np
import onnx
import pytest
import torch

from modernalbert import ModernAlbertForMaskedLM, ModernAlbertModel, merge_experts
from modernalbert.export.onnx import export_onnx, synthetic_batches, verify_onnx
from tests.conftest import randomize_adapters, small_config

FORMS = [("lowrank", None), ("svd", 16), ("svd", 8), ("fold", None)]  # 16 = E * r: full rank


def _mol_model(cls=ModernAlbertForMaskedLM, **overrides):
    torch.manual_seed(0)
    model = cls(small_config(mol_mixing="weight", **overrides)).eval()
    randomize_adapters(model, 0.1)
    return model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("form", "rank"), FORMS, ids=["lowrank", "svd-full", "svd-rank8", "fold"])
def test_merge_keeps_the_dtype_and_computes_in_fp32(form, rank, dtype):
    model = _mol_model().to(dtype)
    merged = merge_experts(model, form=form, rank=rank)
    assert {p.dtype for p in merged.parameters()} == {dtype}
    assert merged.model.rotary_emb.full_attention_inv_freq.dtype == torch.float32
    # fp32 inside: the same as merging the fp32 upcast of the 16-bit weights, then rounding once.
    upcast = merge_experts(copy.deepcopy(model).float(), form=form, rank=rank)
    for (name, got), (_, want) in zip(merged.state_dict().items(), upcast.state_dict().items(), strict=True):
        assert torch.equal(got, want.to(got.dtype)), name


def test_folded_bf16_checkpoint_is_smaller_than_the_unmerged_one(tmp_path):
    model = _mol_model().to(torch.bfloat16)
    model.save_pretrained(tmp_path / "unmerged")
    merge_experts(model, form="fold").save_pretrained(tmp_path / "folded")
    unmerged = (tmp_path / "unmerged" / "model.safetensors").stat().st_size
    folded = (tmp_path / "folded" / "model.safetensors").stat().st_size
    # Folding removes the experts and the router; an fp32 result would be about twice the unmerged size.
    assert folded < unmerged
    loaded = ModernAlbertForMaskedLM.from_pretrained(tmp_path / "folded")
    assert loaded.dtype == torch.bfloat16


def test_merge_refuses_a_fold_that_overflows_fp16():
    model = _mol_model(ModernAlbertModel).half()
    with torch.no_grad():
        model.groups[1].mlp.Wi.weight[0, 0] = 65000.0  # near fp16's largest finite value, 65504
        model.groups[1].mlp.lora_B1.fill_(5000.0)  # delta = s * mean_e(B_e A_e) = 2 * 4 * 5000 * 0.1 = 4000
        model.groups[1].mlp.lora_A1.fill_(0.1)
    with pytest.raises(ValueError, match=r"non-finite value.*overflows fp16.*model.float\(\)"):
        merge_experts(model, form="fold")
    merge_experts(model.float(), form="fold")  # in fp32 it fits


def test_onnx_export_keeps_fp16_and_refuses_bf16_before_writing(tmp_path):
    # Two effective layers (one MoL group, folded) keep the export short; the dtype handling does not depend on depth.
    unmerged = _mol_model(ModernAlbertModel, num_hidden_layers=2, group_depth=1, mol_groups=[1])
    folded = merge_experts(unmerged, form="fold")
    with pytest.raises(ValueError, match=r"bf16 model.*model\.float\(\)"):
        export_onnx(copy.deepcopy(folded).to(torch.bfloat16), tmp_path / "bf16.onnx")
    assert not (tmp_path / "bf16.onnx").exists()
    model = folded.half()
    path = export_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path))
    assert [o.type.tensor_type.elem_type for o in graph.graph.output] == [onnx.TensorProto.FLOAT16]
    weights = {i.name: i.data_type for i in graph.graph.initializer if i.data_type != onnx.TensorProto.INT64}
    fp16 = sum(t == onnx.TensorProto.FLOAT16 for t in weights.values())
    assert fp16 > sum(t == onnx.TensorProto.FLOAT for t in weights.values())
    # Two fp16 implementations of the same graph: each rounds its outputs (|y| <= ~4 after the final norm) to
    # fp16, 2^-9 absolute there, and accumulates in its own order; 8 such units bound their difference.
    diffs = verify_onnx(model, path, synthetic_batches(model), atol=8 * 2.0**-9)
    assert np.isfinite(list(diffs.values())).all()
