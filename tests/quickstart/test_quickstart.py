"""The main job end to end on a sliver of real data ("smoke" profile): every stage, the report, and resuming."""

import json

import pytest

from modernalbert.quickstart.pipeline import Quickstart


class InterruptError(Exception):
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Run the job, interrupted once right after the merge stage, then resumed."""
    out = tmp_path_factory.mktemp("qs") / "run"
    first = Quickstart(out, profile_name="smoke", log=lambda s: None)

    def stop():
        raise InterruptError

    first.onnx = stop  # the "interrupt": the stage after merge dies
    with pytest.raises(InterruptError):
        first.run()
    done_before = set(json.loads((out / "state.json").read_text())["stages"])
    lines: list[str] = []
    state = Quickstart(out, profile_name="smoke", log=lines.append).run()
    return out, state, done_before, lines


def test_a_rerun_resumes_instead_of_starting_over(finished):
    _, state, done_before, lines = finished
    assert done_before == {"fetch", "distill", "finetune", "merge"}
    skipped = {line.split("] ")[1].split(":")[0] for line in lines if "skipped" in line}
    assert skipped == done_before
    assert list(state["stages"]) == ["fetch", "distill", "finetune", "merge", "onnx", "speed", "routing", "report"]


def test_report_numbers_are_real_and_consistent(finished):
    out, state, _, _ = finished
    res = {k: v["result"] for k, v in state["stages"].items()}
    report = (out / "report.md").read_text()
    assert (out / "loss_curves.png").stat().st_size > 1000 and (out / "routing" / "routing.png").is_file()
    for name in ("student", "teacher"):
        acc = res["finetune"][name]["test"]["accuracy"]
        assert 0.0 <= acc <= 1.0 and f"{100 * acc:.1f}" in report
    # ONNX Runtime runs the merged model: same predictions as PyTorch, outputs equal to tolerance
    assert res["onnx"]["agreement_with_pytorch"] == 1.0
    assert max(res["onnx"]["max_abs_diff"].values()) < 1e-3
    assert res["merge"]["merge_info"]["form"] == "fold"
    # The smoke profile's student mixes layer types (ModernBERT's pattern, a window shorter than the blocks): every
    # stage ran local layers, and the merged, exported model kept them.
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert merged["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"] * 2
    assert merged["local_attention"] == 32
    assert "global attention at layers 0, 3, a 32-token sliding window at the others" in report
    assert "RT sentiment" in report and "SST-2" in report  # named as the stand-in it is
    for name in ("MoL (PyTorch)", "merged (PyTorch)", "merged (ONNX Runtime)"):
        assert res["speed"][name]["tokens_per_s"] > 0


def test_a_different_profile_in_the_same_folder_is_refused(finished):
    out, _, _, _ = finished
    with pytest.raises(ValueError, match="--force"):
        Quickstart(out, profile_name="quick").run()
