"""The benchmark scripts' arithmetic and a smoke run of each at tiny sizes (their timings are never asserted)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ModernBertConfig

from modernalbert import PRESETS
from modernalbert.model.modeling import GeGLU

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import encoder  # noqa: E402
import mol_ffn  # noqa: E402


def _addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]  # (m, k) @ (k, n)


def _cpu_attention_flops(q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    B, h, Lq, dh = q_shape
    return 4 * B * h * Lq * k_shape[2] * dh  # scores (Lq x Lk x dh) and the weighted sum, 2 FLOPs a product


def counted_flops(fn) -> int:
    # The counter knows addmm but not its in-place form (the MoL executor accumulates its B terms with it), nor
    # the CPU flash-attention kernel: both counted here as what they multiply.
    mapping = {torch.ops.aten.addmm_: _addmm_flops,
               torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def test_mol_ffn_rows_are_the_presets_geometries():
    rows = mol_ffn.preset_geometries([], k=2, rank=16)
    # medium, base and large share one FFN geometry: one row, named after all three
    assert "tiny" in rows and "medium/base/large" in rows
    for label in ("tiny", "medium/base/large"):
        preset = PRESETS[label.split("/")[0]]
        assert all(rows[label][key] == preset[key] for key in mol_ffn.GEOMETRY_KEYS)
    assert rows["off-preset: tiny's d, f with E = 8"]["num_experts"] == 8


def test_mol_ffn_geometry_flag_is_validated():
    assert mol_ffn.preset_geometries(["64,96,4"], k=2, rank=8)["d=64, f=96, E=4"]["lora_rank"] == 8
    with pytest.raises(SystemExit, match="expected three integers d,f,E"):
        mol_ffn.preset_geometries(["64,96"], k=2, rank=8)


@pytest.mark.parametrize("experts", [4, 8])
def test_dense_flop_ratio_matches_counted_flops(experts):
    """The printed FLOP floor of the dense weight-mixing executor is what the module actually multiplies."""
    geo = dict(hidden_size=64, intermediate_size=96, num_experts=experts, num_experts_per_tok=2, lora_rank=8,
               lora_alpha=16.0)
    mol = mol_ffn.build("weight", geo)
    plain = GeGLU(mol.config).eval()
    x = torch.randn(32, 64)
    ratio = counted_flops(lambda: mol(x)) / counted_flops(lambda: plain(x))
    assert ratio == pytest.approx(mol_ffn.dense_flop_ratio(geo), rel=1e-9)


def test_mol_ffn_smoke(tmp_path):
    out = tmp_path / "mol.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mol_ffn.py"), "--tokens", "32", "--rounds", "2", "--threads",
         "1", "--geometry", "64,96,4", "--only", "d=64, f=96, E=4", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    row = json.loads(out.read_text())["rows"]["d=64, f=96, E=4"]
    assert set(row["results"]) == {"plain GeGLU", "MoL weight mixing", "MoL output mixing"}
    assert row["results"]["plain GeGLU"]["ratio"] == 1.0
    assert all(len(r["times_s"]) == 2 for r in row["results"].values())
    assert "| d=64, f=96, E=4 |" in run.stdout


def tiny_geometry_args() -> argparse.Namespace:
    return argparse.Namespace(d=64, f=96, layers=2, heads=4, vocab=512, seq=32, device="cpu", dtype="float32")


@pytest.mark.parametrize("lengths", [[32, 32], [32, 17, 5]])
def test_encoder_model_flops_match_counted_flops(lengths):
    """MFU's numerator: the analytic forward FLOPs of the geometry models equal the FLOPs their forward runs
    (ours: on real tokens only, whatever the padding; HF ModernBERT: on a batch without padding)."""
    hf, ours = encoder.geometry_models(tiny_geometry_args())
    w = encoder.make_workload("w", lengths, seed=0, device=torch.device("cpu"), vocab=512)
    for entry in (hf, ours) if len(set(lengths)) == 1 else (ours,):
        model = entry.model.eval()
        counted = counted_flops(lambda model=model: model(input_ids=w.input_ids, attention_mask=w.attention_mask))
        assert counted == entry.forward_flops(w.lengths), entry.name


def test_encoder_smoke(tmp_path):
    out = tmp_path / "enc.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "encoder.py"), "--sections", "geometry", "--d", "64", "--f", "96",
         "--heads", "4", "--layers", "2", "--vocab", "512", "--seq", "32", "--fixed-batch", "2", "--var-batch", "3",
         "--var-mean", "16", "--var-std", "4", "--min-len", "4", "--rounds", "2", "--train-rounds", "1",
         "--threads", "1", "--no-memory", "--peak-size", "128", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    text = json.dumps(report)
    assert "ModernBERT (HF)" in text and "ModernAlbert G=1" in text


def test_train_step_smoke(tmp_path):
    out = tmp_path / "train.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--d", "64", "--heads", "4", "--f", "96",
         "--layers", "2", "--vocab", "1000", "--batch", "2", "--seq", "32", "--rounds", "2", "--warmup", "1",
         "--threads", "1", "--no-tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"ModernBERT", "ModernAlbert G=1"}
    assert results["ModernBERT"]["throughput_vs_modernbert"] == 1.0
    assert all(len(r["step_ms"]) == 2 and r["last_loss"] > 0 for r in results.values())


def test_deploy_smoke(tmp_path):
    """benchmarks/deploy.py at tiny geometry: every row, both workloads, the RT accuracy lines and the acceptance
    verdicts are reported (timings are not asserted)."""
    out = tmp_path / "deploy.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "deploy.py"), "--geometry", "tiny", "--pattern", "modernbert",
         "--n", "8", "--n-fixed", "2", "--fixed-length", "64", "--rounds", "2", "--threads", "1",
         "--rt-sentences", "32", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert set(report["workloads"]) == {"variable", "fixed"}
    rows = report["workloads"]["variable"]["rows"]
    assert list(rows) == ["HF, input order", "HF, our batching", "ours PyTorch", "ours ONNX fp32", "ours ONNX int8"]
    assert rows["HF, input order"]["vs HF, input order"]["ratio"] == 1.0
    assert rows["ours ONNX fp32"]["cosine_min"] > 0.9999  # the fp32 graph is the model (parity: tests/export)
    assert "sliding_attention" in report["layer_types"]
    assert report["rt"]["ONNX fp32"]["agreement"] == 1.0 and set(report["acceptance"]) == {
        "int8 cosine >= 0.99", "int8 same predictions >= 99%"}


def test_window_pairs_counts_the_sliding_window_scores():
    """A local layer's useful scores: the (query, key) pairs at most w apart, counted against a dense band."""
    for n, w in [(1, 4), (5, 0), (5, 2), (9, 4), (9, 20), (300, 64)]:
        i = torch.arange(n)
        assert encoder.window_pairs(n, w) == int(((i[:, None] - i[None, :]).abs() <= w).sum()), (n, w)


def test_encoder_long_context_smoke(tmp_path):
    """The long-context section at a tiny geometry (``--sections long`` alone): both models at ModernBERT's default
    pattern (layers 0 and 3 global, 1 and 2 local), fixed and variable lengths, inference and training, memory."""
    out = tmp_path / "long.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "encoder.py"), "--sections", "long", "--d", "64", "--f", "96",
         "--heads", "4", "--layers", "4", "--vocab", "512", "--long-seq", "96", "--long-window", "16",
         "--long-var-batch", "3", "--long-var-mean", "48", "--long-var-std", "12", "--long-min-len", "8",
         "--rounds", "1", "--train-rounds", "1", "--threads", "1", "--peak-size", "128", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {(r["section"], r["mode"], r["workload"], r["model"]) for r in rows} == {
        ("long", mode, workload, model) for mode in ("inference", "training") for workload in ("fixed 96", "variable")
        for model in ("ModernBERT (HF)", "ModernAlbert G=1")}
    assert all(r["peak_mib"] is not None and r["ratio"] > 0 for r in rows)
    assert "2 global + 2 local layers, window 16" in report["long_geometry"]
    assert "### Long context" in run.stdout


def test_long_context_models_share_modernberts_default_pattern():
    args = argparse.Namespace(**{**vars(tiny_geometry_args()), "layers": 4}, long_every=3, long_window=128,
                              long_seq=8192)
    hf, ours = encoder.long_models(args)
    assert hf.model.config.layer_types == ours.model.config.layer_types == ModernBertConfig().layer_types[:4]
    assert ours.model.config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert ours.local_layers == 2 and ours.half_window == 64
