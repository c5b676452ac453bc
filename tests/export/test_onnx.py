"""ONNX export: ONNX Runtime matches PyTorch on padded batches of new shapes, int8 keeps the embeddings, CLI."""

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from modernalbert import (
    ModernAlbertForMaskedLM,
    ModernAlbertForMultipleChoice,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
)
from modernalbert.cli.main import main
from modernalbert.export import compare_onnx, export_onnx, merge_experts, quantize_int8, verify_onnx
from modernalbert.export.onnx import OnnxExportError, OnnxMismatchError
from tests.conftest import make_tokenizer, padded_batch, randomize_adapters, small_config

# Two-layer variants, for smaller graphs (faster exports): two groups of one layer with MoL at group 1, and one
# MoL group applied twice (recursion through the routed FFN). The merged base model keeps the full `test` preset.
SHALLOW = {"num_hidden_layers": 2, "group_depth": 1}
RECURSIVE_MOL = {"num_hidden_layers": 2, "group_depth": 2, "mol_groups": [0]}
MOL_OUTPUT, MOL_WEIGHT = {**RECURSIVE_MOL, "mol_mixing": "output"}, {**RECURSIVE_MOL, "mol_mixing": "weight"}

# case -> (class, config overrides, merge form or None, pooling, expected outputs)
CASES = {
    "model-fold-mean": (ModernAlbertModel, {}, "fold", "mean", ("last_hidden_state", "sentence_embedding")),
    "mlm-lowrank": (ModernAlbertForMaskedLM, SHALLOW, "lowrank", None, ("logits",)),
    "seqcls-mol-output": (ModernAlbertForSequenceClassification, MOL_OUTPUT, None, None, ("logits",)),
    "tokcls-mol-weight": (ModernAlbertForTokenClassification, MOL_WEIGHT, None, None, ("logits",)),
    "qa-fold": (ModernAlbertForQuestionAnswering, SHALLOW, "fold", None, ("start_logits", "end_logits")),
    "mc-mol": (ModernAlbertForMultipleChoice, SHALLOW, None, None, ("logits",)),
}


def _build(case: str):
    cls, overrides, form, _, _ = CASES[case]
    torch.manual_seed(1)
    model = cls(small_config(num_labels=3, **overrides))
    randomize_adapters(model, std=0.1)
    if form is not None:
        model = merge_experts(model, form=form)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (model, path of its graph); each case is exported once for the whole file."""
    root = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(case: str):
        if case not in cache:
            model = _build(case)
            cache[case] = (model, export_onnx(model, root / f"{case}.onnx", pooling=CASES[case][3]))
        return cache[case]

    return get


def _batches(multiple_choice: bool):
    """Shapes unlike the export example's (2, 8): ragged, unpadded, with an all-pad row, and all padding."""
    plans = [(3, 11, 5, 2, 6), (6, 6, 6), (9, 0, 4)]
    batches = []
    for i, lengths in enumerate(plans):
        if multiple_choice:  # (B, C=3, L) rows; the ragged plan also gives each choice a length of its own
            lengths = tuple(max(n - j, 0) if i == 0 else n for n in lengths for j in range(3))
        ids, mask = padded_batch(lengths=lengths, seed=i)
        if multiple_choice:
            ids, mask = ids.view(-1, 3, ids.shape[-1]), mask.view(-1, 3, mask.shape[-1])  # (B, C, L)
        batches.append({"input_ids": ids, "attention_mask": mask})
    shape = (2, 3, 4) if multiple_choice else (2, 4)  # not a single real token: runs to zeros / pad scores
    nothing = torch.zeros(shape, dtype=torch.long)
    batches.append({"input_ids": nothing, "attention_mask": nothing})
    return batches


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_runtime_matches_pytorch_on_new_shapes(exported, case):
    model, path = exported(case)
    graph = onnx.load(str(path))
    assert tuple(o.name for o in graph.graph.output) == CASES[case][4]  # no router outputs
    for inp in graph.graph.input:  # every input axis is symbolic, none frozen to the example's size
        assert all(d.dim_param and not d.HasField("dim_value") for d in inp.type.tensor_type.shape.dim)
    batches = _batches(isinstance(model, ModernAlbertForMultipleChoice))
    assert batches[1]["attention_mask"].all() and not batches[2]["attention_mask"][1].any()
    diffs = verify_onnx(model, path, batches, atol=1e-4)
    assert set(diffs) == set(CASES[case][4])
    assert max(diffs.values()) <= 1e-4


def test_verify_reports_a_graph_that_no_longer_matches(exported):
    model, path = exported("mlm-lowrank")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.decoder.bias.add_(0.1)
    with pytest.raises(OnnxMismatchError, match="logits max \\|diff\\|"):
        verify_onnx(changed, path, _batches(False)[:1])


def test_int8_keeps_mean_pooled_embeddings(exported, tmp_path):
    model, path = exported("model-fold-mean")
    int8 = quantize_int8(path, tmp_path / "model.int8.onnx")
    assert int8.stat().st_size < path.stat().st_size
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(int8)).graph.node)
    batches = _batches(False)
    # The fp32 embeddings of different texts must differ, or a high cosine would prove nothing.
    with torch.no_grad():
        emb = model(**batches[0]).last_hidden_state.mean(1)  # (B, d)
    sim = torch.nn.functional.cosine_similarity(emb[:, None], emb[None, :], dim=-1)  # (B, B)
    assert sim[~torch.eye(len(emb), dtype=torch.bool)].max() < 0.95
    stats = compare_onnx(path, int8, batches)
    assert stats["sentence_embedding"]["min_cosine"] >= 0.99
    assert np.isfinite(stats["last_hidden_state"]["max_abs_diff"])


def test_graphs_with_external_data_verify_and_quantize(exported, tmp_path):
    # Graphs over 2 GB keep their weights in `<name>.data` beside them; the same path, on a small graph.
    model, path = exported("tokcls-mol-weight")
    big = tmp_path / "big" / "model.onnx"
    big.parent.mkdir()
    onnx.save(onnx.load(str(path)), str(big), save_as_external_data=True, location="model.onnx.data")
    assert verify_onnx(model, big, _batches(False)[:1])["logits"] <= 1e-4
    int8 = quantize_int8(big, big.parent / "model.int8.onnx")
    assert {p.name for p in big.parent.iterdir()} == {"model.onnx", "model.onnx.data", "model.int8.onnx",
                                                      "model.int8.onnx.data"}
    assert compare_onnx(big, int8, _batches(False)[:1])["logits"]["min_cosine"] > 0.9


def test_export_failure_of_a_routed_model_names_merging(monkeypatch, tmp_path):
    model = ModernAlbertModel(small_config(**SHALLOW)).eval()

    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(OnnxExportError, match="modernalbert merge IN OUT --form fold"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_pooling_on_a_head_and_old_opsets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="base model only"):
        export_onnx(ModernAlbertForSequenceClassification(small_config(**SHALLOW)), tmp_path / "m.onnx",
                    pooling="mean")
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(ModernAlbertModel(small_config(**SHALLOW)), tmp_path / "m.onnx", opset=13)


def test_cli_exports_int8_and_copies_config_and_tokenizer(tmp_path, capsys):
    model = ModernAlbertModel(small_config(**SHALLOW))
    randomize_adapters(model, std=0.1)
    model.save_pretrained(tmp_path / "in")
    make_tokenizer().save_pretrained(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["export", "onnx", str(tmp_path / "in"), str(out), "--int8", "--pooling", "mean"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "config.json", "tokenizer.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary left behind
    printed = capsys.readouterr().out
    report = json.loads(next(line for line in printed.splitlines() if line.startswith("{")))
    assert max(report["model.onnx"]["max_abs_diff"].values()) <= 1e-4
    assert report["model.int8.onnx"]["sentence_embedding"]["min_cosine"] >= 0.99


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["export", "onnx", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "No model folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_pooling_on_a_head_checkpoint_exports_its_encoder(tmp_path, capsys):
    ModernAlbertForSequenceClassification(small_config(**SHALLOW)).save_pretrained(tmp_path / "cls")
    assert main(["export", "onnx", str(tmp_path / "cls"), str(tmp_path / "out"), "--pooling", "cls"]) == 0
    assert "exporting the encoder" in capsys.readouterr().out
    import onnx

    outputs = [o.name for o in onnx.load(tmp_path / "out" / "model.onnx").graph.output]
    assert outputs == ["last_hidden_state", "sentence_embedding"]
