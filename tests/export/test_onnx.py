"""ONNX export: ONNX Runtime matches PyTorch on padded batches of new shapes, int8 keeps the embeddings, CLI."""

import copy
import json
import stat

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
from modernalbert.export.onnx import OnnxExportError, OnnxMismatchError, inference_session, run_onnx
from tests.conftest import make_tokenizer, padded_batch, randomize_adapters, small_config

# Two-layer variants, for smaller graphs (faster exports): two groups of one layer with MoL at group 1, and one
# MoL group applied twice (recursion through the routed FFN). The merged base model keeps the full `test` preset.
SHALLOW = {"num_hidden_layers": 2, "group_depth": 1}
# E * r * d = 8 * 32 * 64 > 8192 elements: above the exporter's own constant-folding limit, the stacked experts stayed
# a reshape computed in the graph, and the one MoL group serving two positions made the int8 graph invalid
# ("Duplicate definition of name").
RECURSIVE_MOL = {"num_hidden_layers": 2, "group_depth": 2, "mol_groups": [0], "num_experts": 8, "lora_rank": 32}
MOL_OUTPUT, MOL_WEIGHT = {**RECURSIVE_MOL, "mol_mixing": "output"}, {**RECURSIVE_MOL, "mol_mixing": "weight"}
BASELINES = {**SHALLOW, "ffn_variants": ["rrt", "moa"]}  # RRT (fixed LoRA per position) and MoA (routed adapters)
PLAIN = {**SHALLOW, "mol_groups": []}

# case -> (class, config overrides, merge form or None, pooling, expected outputs); every model form is one case:
# unmerged MoL (both mixings), RRT and MoA, merged low-rank, folded, plain.
CASES = {
    "model-fold-mean": (ModernAlbertModel, {}, "fold", "mean", ("last_hidden_state", "sentence_embedding")),
    "mlm-lowrank": (ModernAlbertForMaskedLM, SHALLOW, "lowrank", None, ("logits",)),
    "seqcls-mol-output": (ModernAlbertForSequenceClassification, MOL_OUTPUT, None, None, ("logits",)),
    "tokcls-mol-weight": (ModernAlbertForTokenClassification, MOL_WEIGHT, None, None, ("logits",)),
    "qa-fold": (ModernAlbertForQuestionAnswering, SHALLOW, "fold", None, ("start_logits", "end_logits")),
    "mc-mol": (ModernAlbertForMultipleChoice, SHALLOW, None, None, ("logits",)),
    "model-rrt-moa": (ModernAlbertModel, BASELINES, None, None, ("last_hidden_state",)),
    "seqcls-plain-int32-token-types": (ModernAlbertForSequenceClassification, PLAIN, None, None, ("logits",)),
}
# Export options of a case (default: int64 input_ids and attention_mask).
EXPORT_OPTIONS = {"seqcls-plain-int32-token-types": {"input_dtype": "int32", "token_type_ids": True}}


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
            cache[case] = (model, export_onnx(model, root / f"{case}.onnx", pooling=CASES[case][3],
                                              **EXPORT_OPTIONS.get(case, {})))
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


@pytest.mark.parametrize("case", list(CASES))
def test_int8_graph_is_valid_for_every_model_form(exported, case, tmp_path):
    model, path = exported(case)
    graph = onnx.load(str(path)).graph
    activations = {i.name for i in graph.input}  # values that depend on the inputs (nodes are in graph order)
    for node in graph.node:
        if any(name in activations for name in node.input):
            activations.update(node.output)
    weights = {i.name for i in graph.initializer}
    # Every matrix product multiplies activations by activations (attention) or by a stored weight, never by a
    # weight rearranged at run time (which the int8 quantiser leaves in fp32, or duplicated into an invalid graph).
    computed = [n.input[1] for n in graph.node
                if n.op_type in ("Gemm", "MatMul") and n.input[1] not in activations | weights]
    assert not computed, f"weights computed in the graph instead of stored: {computed}"
    int8 = quantize_int8(path, tmp_path / "model.int8.onnx")
    onnx.checker.check_model(str(int8), full_check=True)
    stats = compare_onnx(path, int8, _batches(isinstance(model, ModernAlbertForMultipleChoice))[:3])
    assert min(v["min_cosine"] for v in stats.values()) > 0.98  # opens and runs in ONNX Runtime, and is close


def test_graph_takes_int32_and_int64_ids_and_ignores_token_type_ids(exported):
    model, path = exported("seqcls-plain-int32-token-types")
    session = inference_session(path)
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int32)"), ("attention_mask", "tensor(int32)"), ("token_type_ids", "tensor(int32)")]
    batch = _batches(False)[0]
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    raw = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}
    ones = session.run(None, {**raw, "token_type_ids": np.ones_like(raw["input_ids"])})[0]
    zeros = session.run(None, {**raw, "token_type_ids": np.zeros_like(raw["input_ids"])})[0]
    np.testing.assert_array_equal(ones, zeros)  # accepted and ignored: no segment embedding
    # run_onnx casts a tokenizer's int64 output to what the graph declares, and fills in absent token types.
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    got = run_onnx(session, {"input_ids": ids, "attention_mask": mask})["logits"]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="must hold integers"):
        run_onnx(session, {"input_ids": ids.astype(np.float32), "attention_mask": mask})


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


def test_cli_exports_int8_and_copies_config_and_tokenizer(tmp_path, capsys, umask_022):
    model = ModernAlbertModel(small_config(**SHALLOW))
    randomize_adapters(model, std=0.1)
    model.save_pretrained(tmp_path / "in")
    tokenizer = make_tokenizer(model_input_names=["input_ids", "token_type_ids", "attention_mask"])  # as BERT's
    tokenizer.save_pretrained(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["export", "onnx", str(tmp_path / "in"), str(out), "--int8", "--pooling", "mean"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "config.json", "tokenizer.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary left behind
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # readable by all, as save_pretrained's files
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {n: "0o644" for n in names}
    printed = capsys.readouterr()
    report = json.loads(next(line for line in printed.out.splitlines() if line.startswith("{")))
    assert max(report["model.onnx"]["max_abs_diff"].values()) <= 1e-4
    assert report["model.int8.onnx"]["sentence_embedding"]["min_cosine"] >= 0.99
    # The graph takes what the tokenizer returns, so its output feeds ONNX Runtime as it is.
    assert report["model.onnx"]["inputs"] == ["input_ids (int64)", "attention_mask (int64)", "token_type_ids (int64)"]
    encoded = dict(tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="np"))
    assert inference_session(out / "model.int8.onnx").run(None, encoded)[1].shape == (2, 64)
    # Progress: every stage announced and timed on standard error (the JSON report keeps the durations).
    stages = [line for line in printed.err.splitlines() if line.startswith("[export ")]
    assert len(stages) == 10 and stages[3].startswith("[export 2/5] export to ONNX") and stages[3].endswith(" s")
    assert set(report["seconds"]) == {s.split("] ")[1].rsplit(": ", 1)[0] for s in stages[1::2]}


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


def test_torch_jit_trace_runs_and_generalises_to_new_shapes():
    # torch.jit.trace (and the legacy ONNX exporter built on it) records shapes as tensors: the model must not use
    # them where a Python bool is needed (torch._check), and the traced graph must stay exact for other batches.
    import warnings

    class Encode(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids, mask):
            return self.model(ids, attention_mask=mask).last_hidden_state

    torch.manual_seed(0)
    encode = Encode(ModernAlbertModel(small_config()).eval())
    ids = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about data-dependent shapes, expected here
        traced = torch.jit.trace(encode, (ids, (ids != 0).long()), check_trace=False)
        other = torch.tensor([[1, 5, 6, 9, 8, 2], [1, 7, 2, 0, 0, 0], [1, 2, 0, 0, 0, 0]])
        mask = (other != 0).long()
        torch.testing.assert_close(traced(other, mask), encode(other, mask), atol=1e-5, rtol=0)
