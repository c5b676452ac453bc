"""The recovery study: the gap arithmetic and the discrimination ratio, the recipe's checks, the reference's
measures, the hidden distance, and a toy study through the real pipeline (reference build, init from it, KD to it,
every measure, merging, summary, ledger, report, resuming)."""

import copy
import json
import math

import pytest
import torch
import yaml

from modernalbert.experiments.recovery import (
    RecoveryRecipe,
    RecoveryStudy,
    flatness,
    gap_fraction,
    hidden_distance,
    layer_distinctness,
    load_reference_recipe,
    measure_gap,
    reference_flat,
    reference_ready,
    reference_sensitivity,
    seed_fractions,
)

# ============================================================================================ gap arithmetic


def test_the_gap_is_judged_in_units_of_the_larger_seed_spread():
    g = measure_gap([6.0, 6.1, 5.9], [5.0, 5.02, 4.98])  # ALBERT-style, reference: held-out MLM
    assert g.gap == pytest.approx(-1.0) and g.spread == pytest.approx(0.1)
    assert g.discrimination == pytest.approx(10.0) and g.resolved
    tie = measure_gap([6.0, 6.3, 5.7], [5.9, 5.92, 5.88])  # gap 0.1 against a spread of 0.3: a tie
    assert tie.discrimination == pytest.approx(1 / 3) and not tie.resolved
    assert measure_gap([1.0, 1.0], [2.0, 2.0]).discrimination == math.inf  # no spread at all
    with pytest.raises(ValueError, match="at least two seeds"):
        measure_gap([6.0], [5.0, 5.1])


def test_gap_fractions_run_from_the_albert_style_model_to_the_reference():
    assert gap_fraction(6.0, lower=6.0, upper=5.0) == 0.0
    assert gap_fraction(5.0, lower=6.0, upper=5.0) == 1.0
    assert gap_fraction(5.75, lower=6.0, upper=5.0) == pytest.approx(0.25)  # a loss: lower is better
    assert gap_fraction(0.70, lower=0.60, upper=0.80) == pytest.approx(0.5)  # an accuracy: higher is better
    assert gap_fraction(6.5, lower=6.0, upper=5.0) == pytest.approx(-0.5)  # worse than ALBERT-style
    with pytest.raises(ValueError, match="no gap"):
        gap_fraction(1.0, 2.0, 2.0)
    # per seed against the same seed's ends; seeds missing on a side, or without a gap, are left out
    fr = seed_fractions({0: 5.5, 1: 5.6, 2: 5.0, 3: 1.0}, {0: 6.0, 1: 6.2, 2: 5.0}, {0: 5.0, 1: 5.2, 2: 5.0})
    assert fr == pytest.approx([0.5, 0.6])


# ============================================================================================ reference measures


def test_flatness_is_the_relative_change_over_the_last_quarter():
    curve = [[50, 6.0], [100, 5.0], [150, 4.5], [200, 4.41]]
    assert flatness(curve) == pytest.approx((4.41 - 4.5) / 4.5)  # from step 150 (= 0.75 * 200) to the end
    assert flatness([[10, 3.0]]) is None


def _attempt(ref_steps, ref_mlm, *, gap=-0.2, group_depth=2, tokens=102400):
    return {"kind": "study", "output_dir": "runs/x", "overrides": [], "seeds": [0, 1, 2], "group_depth": group_depth,
            "tokens_per_run": tokens, "held_out": {"blocks": "all", "mask_seed": 0}, "gap": gap,
            "reference": {"steps": ref_steps, "tokens": ref_steps * 1024, "held_out_mlm": ref_mlm}}


@pytest.mark.parametrize(("previous_mlm", "flat"), [(3.06, True), (3.05 + 0.05 + 1e-9, False)])
def test_the_reference_has_flattened_when_more_training_moves_it_less_than_its_share_of_the_gap(previous_mlm,
                                                                                                  flat):
    attempts = [_attempt(800, 3.5), _attempt(1600, previous_mlm), _attempt(2400, 3.05),
                _attempt(1800, 2.0, group_depth=3)]  # another sharing factor: not this setting's reference
    got = reference_flat(attempts[2], attempts, -0.2, within=0.25)
    assert got["flat"] is flat and got["previous"]["steps"] == 1600  # the next smaller budget of the same setting
    assert got["gain"] == pytest.approx(previous_mlm - 3.05) and got["allowed"] == pytest.approx(0.05)


def test_the_reference_flatness_cannot_be_judged_without_a_smaller_budget_or_a_gap():
    assert reference_flat(_attempt(1600, 3.0), [_attempt(1600, 3.0)], -0.2, within=0.25)["flat"] is None
    assert reference_flat(None, [_attempt(800, 3.3), _attempt(1600, 3.0)], None, 0.25)["flat"] is None


def _fractions(mol, rrt, std=(0.01, 0.01), resolved=True):
    return {"mol": {"held_out_mlm": {"mean": mol, "std": std[0], "resolved": resolved}},
            "rrt": {"held_out_mlm": {"mean": rrt, "std": std[1], "resolved": resolved}}}


def _budgets(*cells):
    """Ledger entries of one students' setting at reference budgets of (steps, fractions)."""
    return [{**_attempt(steps, 3.0), "gap_fractions": fr} for steps, fr in cells]


def test_gap_fractions_are_compared_across_reference_budgets_by_the_tie_rule():
    # binary fractions throughout, so that the boundary cases are exact
    attempts = _budgets((2400, _fractions(0.0, 0.125)),
                        (1600, _fractions(0.5, 0.5, std=(0.25, 0.0625))),  # out of order: sorted by tokens
                        (4800, _fractions(0.3125, 0.75, std=(0.0625, 0.125))))
    sens = reference_sensitivity(attempts[2], attempts, ["held_out_mlm"])
    assert sens["steps"] == [1600, 2400, 4800] and sens["tokens"] == [1600 * 1024, 2400 * 1024, 4800 * 1024]
    mol, rrt = sens["variants"]["mol"]["held_out_mlm"], sens["variants"]["rrt"]["held_out_mlm"]
    assert [f["mean"] for f in mol["fractions"]] == [0.5, 0.0, 0.3125] and mol["resolved"] == [True] * 3
    assert mol["moves"] is False  # |Δ| = 0.1875 <= the larger std (0.25, not the smaller 0.0625): a tie
    assert rrt["moves"] is True  # |Δ| = 0.25 > max(0.0625, 0.125)
    attempts[2]["gap_fractions"] = _fractions(0.75, 0.375, std=(0.0625, 0.125))
    sens = reference_sensitivity(attempts[2], attempts, ["held_out_mlm"])
    assert sens["variants"]["mol"]["held_out_mlm"]["moves"] is False  # |Δ| = 0.25 = the larger std: still a tie
    assert sens["variants"]["rrt"]["held_out_mlm"]["moves"] is False  # |Δ| = 0.125 = the larger std


def test_the_budget_comparison_keeps_other_settings_out_and_skips_what_it_cannot_judge():
    base = _budgets((1600, _fractions(0.0, 0.05)), (4800, _fractions(0.5, 0.5)))
    others = [{**_attempt(2400, 3.0, group_depth=3), "gap_fractions": _fractions(0.9, 0.9)},  # other sharing
              {**_attempt(2400, 3.0), "kind": "pilot", "gap_fractions": _fractions(0.9, 0.9)},  # a pilot
              {**_attempt(2400, 3.0), "seeds": [0, 1], "gap_fractions": _fractions(0.9, 0.9)},  # other seeds
              {**_attempt(2400, 3.0), "overrides": ["pretrain.optim.lr=1e-3"],  # students trained otherwise
               "gap_fractions": _fractions(0.9, 0.9)},
              {**_attempt(2400, 3.0), "overrides": ["output_dir=runs/y", "recovery.reference_overrides=[a=1]"],
               "gap_fractions": _fractions(0.1, 0.1)},  # only anchored elsewhere: the same students
              {**_attempt(800, 3.3)},  # no fractions recorded
              {**_attempt(4800, 2.9), "gap_fractions": _fractions(0.2, 0.2)}]  # the same budget again: the later
    attempts = base + others
    sens = reference_sensitivity(base[1], attempts, ["held_out_mlm"])
    assert sens["steps"] == [1600, 2400, 4800]
    assert [f["mean"] for f in sens["variants"]["mol"]["held_out_mlm"]["fractions"]] == [0.0, 0.1, 0.2]
    assert reference_sensitivity(None, attempts, ["held_out_mlm"])["steps"] == []
    # a gap within the spread at one end: compared between the budgets that resolved it
    attempts[-1]["gap_fractions"] = _fractions(0.2, 0.2, resolved=False)
    mol = reference_sensitivity(base[1], attempts, ["held_out_mlm"])["variants"]["mol"]["held_out_mlm"]
    assert mol["resolved"] == [True, True, False] and mol["moves"] is True  # 0.0 -> 0.1
    # a variant measured under one budget only cannot move
    attempts[-1]["gap_fractions"] = {"mol": _fractions(0.2, 0.2)["mol"]}
    attempts[-3]["gap_fractions"] = {"mol": _fractions(0.1, 0.1)["mol"]}
    rrt = reference_sensitivity(base[1], attempts, ["held_out_mlm"])["variants"]["rrt"]["held_out_mlm"]
    assert rrt["fractions"][1:] == [None, None] and rrt["moves"] is None


def test_the_ledger_keeps_references_of_other_budgets_apart(tmp_path):
    from modernalbert.experiments.recovery.report import update_ledger

    path = tmp_path / "attempts.json"
    update_ledger(path, _attempt(1600, 3.02))
    update_ledger(path, _attempt(2400, 2.95))
    entries = update_ledger(path, _attempt(2400, 2.94))  # the same setting again: replaced
    assert [(e["reference"]["steps"], e["reference"]["held_out_mlm"]) for e in entries] == [(1600, 3.02),
                                                                                           (2400, 2.94)]


def test_layer_distinctness_is_zero_for_identical_layers_and_about_0_71_for_independent_ones():
    from modernalbert import ModernAlbertConfig, ModernAlbertModel

    torch.manual_seed(0)
    model = ModernAlbertModel(ModernAlbertConfig.from_preset("test", group_depth=1, mol_groups=[]))
    blocks = model.groups
    with torch.no_grad():
        for blk in blocks:
            for name in ("attn.Wqkv.weight", "attn.Wo.weight", "mlp.Wi.weight", "mlp.Wo.weight"):
                blk.get_parameter(name).normal_()  # independent matrices of one scale
        for name, p in blocks[1].named_parameters():
            p.copy_(blocks[0].get_parameter(name)) if name != "attn_norm.weight" else None  # layers 0, 1 identical
    rows = layer_distinctness(model, groups=2)  # chunks [0, 1] and [2, 3]
    assert [(r["layer"], r["group"]) for r in rows] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert rows[0]["mean"] == pytest.approx(0.0, abs=1e-12) and rows[1]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert rows[2]["mean"] == pytest.approx(math.sqrt(0.5), abs=0.03)  # ||(W2 - W3) / 2|| / ||W2||


def test_hidden_distance_is_zero_against_itself_and_refuses_other_depths():
    from modernalbert import ModernAlbertConfig, ModernAlbertForMaskedLM
    from tests.conftest import padded_batch

    torch.manual_seed(0)
    cfg = ModernAlbertConfig.from_preset("test", group_depth=1, mol_groups=[])
    a, b = ModernAlbertForMaskedLM(cfg).eval(), ModernAlbertForMaskedLM(cfg).eval()
    ids, mask = padded_batch(512, lengths=(9, 4))
    labels = torch.full_like(ids, -100)
    labels[0, 2], ids[0, 2] = ids[0, 2], 3  # a masked position: the distance is taken on the original text
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": labels}]
    same = hidden_distance(a, a, batches)
    assert len(same["layers"]) == 4 and max(same["layers"]) == pytest.approx(0.0, abs=1e-6)
    other = hidden_distance(a, b, batches)
    assert other["final"] == other["layers"][-1] > 0.01
    deeper = ModernAlbertForMaskedLM(ModernAlbertConfig.from_preset("test", num_hidden_layers=6, group_depth=1,
                                                                    mol_groups=[]))
    with pytest.raises(ValueError, match="layer by layer"):
        hidden_distance(deeper, a, batches)


# ============================================================================================ recipes

GEOM = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "embedding_size": 32,
        "num_hidden_layers": 4, "lora_rank": 4, "lora_alpha": 8.0, "num_experts": 2, "max_position_embeddings": 64}
DATA = {"corpus": {"sources": ["kjv"], "held_out": 0.02}, "block_size": 32}
TRAIN = {"batch_size": 4, "eval_batches": 1, "log_every": 1}


def reference_recipe(folder) -> dict:
    """A toy reference: MLM only from a fresh G = 1 model (its distillation from MiniLM is the pretraining
    machinery's, tested there)."""
    return {"output_dir": str(folder / "reference"), "seed": 0,
            "model": {"preset": "mini", "overrides": {**GEOM, "group_depth": 1, "mol_groups": []}},
            "teacher": {"name": None, "tokenizer": "all-MiniLM-L6-v2"}, "data": DATA,
            "optim": {"warmup_steps": 1, "decay_steps": 1},
            "train": {**TRAIN, "steps": 2, "eval_every": 1, "save_every": 1}}


def study_values(folder) -> dict:
    (folder / "reference.yaml").write_text(yaml.safe_dump(reference_recipe(folder)))
    return {
        "output_dir": str(folder / "study"), "seeds": [0, 1],
        "teacher": {"layer_assignment": "average"},
        "model": {"preset": "mini", "overrides": {**GEOM, "group_depth": 2}},
        "recovery": {"reference_recipe": str(folder / "reference.yaml"), "primary_metric": "held_out_mlm",
                     "summary_json": str(folder / "docs" / "results" / "recovery.json"),
                     "attempts_json": str(folder / "docs" / "results" / "attempts.json"), "held_out_blocks": 8},
        "budget": {"reference": "mol"},
        "variants": [{"name": "full", "overrides": {"group_depth": 1}, "ffn": "glu", "exempt": True},
                     {"name": "albert", "ffn": "glu", "match": "intermediate_size"},
                     {"name": "mol", "ffn": "mol", "overrides": {"mol_mixing": "weight"}}],
        "pretrain": {"data": DATA, "distill": {"hidden_weight": 1.0, "logit_weight": 0.0},
                     "optim": {"warmup_steps": 1, "decay_steps": 1},
                     "train": {**TRAIN, "steps": 2, "eval_every": 2, "save_every": 2}},
        "finetune": {"config": {"batch_size": 8, "epochs": 1.0, "max_length": 32}, "max_train_examples": 16,
                     "max_eval_examples": 16},
        "merge": {"options": [{"weights": "router", "space": "deltas", "form": "fold"}], "rt_splits": ["test"]},
        "ood": {"sources": ["milton"], "blocks": 4, "batch_size": 4},
        "speed": {"enabled": False},
        "report": {"results_md": str(folder / "docs" / "recovery.md"), "title": "Toy recovery",
                   "command": "modernalbert experiment recovery toy.yaml"},
    }


@pytest.mark.parametrize("change, message", [
    ({"inits": ["random", "distill"]}, "inits must be \\[distill\\]"),
    ({"teacher": {"name": "all-MiniLM-L6-v2"}}, "teacher.name is set by the study"),
    ({"recovery": {"primary_metric": "accuracy"}}, "primary_metric='accuracy' is not measured"),
    ({"recovery": {"upper": "mol"}}, "must be the exempt full-parameter variant"),
    ({"recovery": {"upper": "albert"}}, "name the same variant"),
    ({"recovery": {"lower": "nope"}}, "recovery.lower='nope' is not a variant"),
    ({"recovery": {"min_discrimination": 0}}, "min_discrimination=0"),
    ({"recovery": {"held_out_blocks": -1}}, "held_out_blocks=-1 is invalid"),
    ({"recovery": {"flat_within": 0}}, "flat_within=0.0 is invalid"),
    ({"recovery": {"flat_within": float("nan")}}, "flat_within=nan is invalid"),
    ({"seeds": [0]}, "needs at least 2 seeds"),
    ({"recovry": {}}, "Unknown key\\(s\\) \\['recovry'\\] in recovery recipe \\(top level\\).*'recovery'"),
    ({"recovery": {"reference_recipe": "no/such.yaml"}}, "recovery.reference_recipe='no/such.yaml': .*does not exist"),
    ({"model": {"preset": "mini", "overrides": {**GEOM, "num_hidden_layers": 6}}}, "depth and width must match"),
])
def test_invalid_recovery_recipes_name_what_is_wrong(tmp_path, change, message):
    values = study_values(tmp_path)
    for key, value in change.items():
        if key == "recovery":
            values["recovery"].update(value)
        else:
            values[key] = value
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        RecoveryRecipe.from_dict(values)


def test_the_reference_must_be_a_full_parameter_model_and_its_folder_its_own(tmp_path):
    values = reference_recipe(tmp_path)
    values["model"]["overrides"]["group_depth"] = 2
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match="full-parameter model"):
        load_reference_recipe(tmp_path / "shared.yaml")
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(reference_recipe(tmp_path)))
    recipe = load_reference_recipe(tmp_path / "ref.yaml")
    assert not reference_ready(recipe)
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "recipe.json").write_text(json.dumps({**recipe.to_dict(), "seed": 7}))
    with pytest.raises(ValueError, match="trained with another recipe"):
        reference_ready(recipe)


def test_variants_place_one_ffn_kind_at_every_group_of_their_own_geometry(tmp_path):
    r = RecoveryRecipe.from_dict(study_values(tmp_path)).study
    assert r.variant_overrides(r.variant("mol"))["ffn_variants"] == ["mol", "mol"]  # K = 4 / 2
    assert r.variant_overrides(r.variant("full"))["ffn_variants"] == ["glu"] * 4  # K = 4 / 1
    values = study_values(tmp_path)
    values["variants"][2]["overrides"]["mol_groups"] = [1]
    with pytest.raises(ValueError, match="ffn='mol' places the FFN variant of every group"):
        RecoveryRecipe.from_dict(values)


def test_the_shipped_recipe_is_valid_and_meets_its_budget():
    from pathlib import Path

    from modernalbert.experiments.ablation import plan_budget

    root = Path(__file__).resolve().parents[2]
    import os

    cwd = os.getcwd()
    os.chdir(root)  # the recipe names its reference recipe relative to the checkout
    try:
        r = RecoveryRecipe.load("recipes/recovery-cpu.yaml")
    finally:
        os.chdir(cwd)
    rows = plan_budget(r.study, vocab=30522)
    assert len(r.study.seeds) >= 3 and r.recovery.primary_metric == "held_out_mlm"
    assert {row.name for row in rows} == {"full", "albert", "rrt", "moa", "mol-output", "mol-weight"}
    assert all(row.exempt or abs(row.relative) <= r.study.budget.tolerance for row in rows)
    assert r.reference.model.overrides["group_depth"] == 1


def test_every_model_and_seed_is_measured_on_the_same_masked_held_out_text(tmp_path):
    from pathlib import Path

    from modernalbert.experiments.ablation import held_out_batches
    from modernalbert.model.loading import load_tokenizer

    recipe = RecoveryRecipe.from_dict(study_values(tmp_path))
    study = RecoveryStudy(recipe, log=lambda _: None)
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    runs = [recipe.study.run_recipe(v, {}, "distill", seed, Path(tmp_path / "run"))
            for v in recipe.study.variants for seed in (0, 1)]
    measured = [study.held_out(r, tokenizer) for r in runs]
    assert sum(len(b["input_ids"]) for b in measured[0]) == 8  # recovery.held_out_blocks
    for other in measured[1:]:  # the same blocks and masks for every variant and seed
        assert all(torch.equal(a[k], b[k]) for a, b in zip(measured[0], other) for k in ("input_ids", "labels"))
    # the trainer's own held-out evaluation (the ablation's measure) masks with each run's seed
    trainer = [held_out_batches(r, tokenizer) for r in runs[:2]]
    assert not all(torch.equal(a["labels"], b["labels"]) for a, b in zip(*trainer))
    all_blocks = RecoveryStudy(RecoveryRecipe.from_dict({**study_values(tmp_path), "recovery": {
        **study_values(tmp_path)["recovery"], "held_out_blocks": 0}}), log=lambda _: None).held_out(runs[0], tokenizer)
    assert sum(len(b["input_ids"]) for b in all_blocks) > 8  # 0: the whole held-out split


def test_another_output_dir_leaves_the_published_report_alone(tmp_path, monkeypatch):
    from pathlib import Path

    from modernalbert.experiments.ablation import AblationStudy, run_ablation
    from modernalbert.experiments.recovery import run_recovery

    seen = {}
    monkeypatch.setattr(RecoveryStudy, "run", lambda self: seen.update(recovery=self.recovery) or {})
    monkeypatch.setattr(AblationStudy, "run", lambda self: seen.update(ablation=self.recipe) or {})
    run_recovery(RecoveryRecipe.from_dict(study_values(tmp_path)), output_dir=str(tmp_path / "elsewhere"))
    r = seen["recovery"]
    assert r.study.output_dir == str(tmp_path / "elsewhere")
    assert r.study.report.results_md is None and r.recovery.summary_json is None and r.recovery.attempts_json is None
    run_ablation(Path(__file__).resolve().parents[2] / "recipes" / "ablation-cpu.yaml",
                 output_dir=str(tmp_path / "abl"))
    assert seen["ablation"].output_dir == str(tmp_path / "abl") and seen["ablation"].report.results_md is None


# ============================================================================================ the real pipeline


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recovery")
    values = study_values(folder)
    lines: list[str] = []
    results = RecoveryStudy(RecoveryRecipe.from_dict(copy.deepcopy(values)), log=lines.append).run()
    return folder, values, results, lines


def test_a_toy_study_builds_the_reference_and_runs_every_stage(toy):
    folder, _, results, lines = toy
    assert (folder / "reference" / "final" / "model.safetensors").is_file()
    ref = results["reference"]
    assert ref["tokens"] == 2 * 4 * 32 and ref["cost"]["steps"] == 2 and ref["cost"]["cpu_s"] > 0
    assert set(ref["curve"]) >= {"mlm", "eval_mlm"} and len(ref["distinctness"]) == 4
    assert ref["steps"] == 2 and math.isfinite(ref["held_out_mlm"])
    assert set(results["runs"]) == {f"{v}--distill--seed{s}" for v in ("full", "albert", "mol") for s in (0, 1)}
    # the gap's two ends run first in every seed
    started = [line.split("] ")[1].split(" ")[0] for line in lines if line.endswith(" ...")]
    assert started[:2] == ["albert--distill--seed0", "full--distill--seed0"]
    for rec in results["runs"].values():
        assert len(rec["distance"]["layers"]) == 4 and rec["distance"]["final"] == rec["distance"]["layers"][-1]
        assert rec["tokens_seen"] == 2 * 4 * 32 and 0.0 <= rec["rt"]["test"] <= 1.0
    mol = results["runs"]["mol--distill--seed0"]
    assert set(mol["merged"]["router-deltas-fold"]) >= {"held_out_mlm", "distance", "rt"}
    init = (folder / "study" / "runs" / "full--distill--seed0" / "pretrain" / "init_report.txt").read_text()
    assert "init from a modernalbert teacher" in init  # the students start from the reference


def test_the_summary_holds_every_metric_its_gap_fraction_and_the_discrimination(toy):
    folder, _, results, _ = toy
    summary = json.loads((folder / "docs" / "results" / "recovery.json").read_text())
    assert summary["primary_metric"]["key"] == "held_out_mlm" and summary["min_discrimination"] == 3.0
    gap = summary["gap"]["held_out_mlm"]
    assert summary["discrimination"] == pytest.approx(abs(gap["gap"]) / gap["spread"])
    # the reference must be the better end (held-out MLM: lower), not just a distant one
    assert summary["upper_better"] == (gap["gap"] < 0)
    assert summary["discriminates"] == (summary["upper_better"] and summary["discrimination"] >= 3.0)
    full, albert = summary["variants"]["full"], summary["variants"]["albert"]
    assert full["gap_fraction"]["held_out_mlm"]["values"] == pytest.approx([1.0, 1.0])  # the ends, by definition
    assert albert["gap_fraction"]["held_out_mlm"]["values"] == pytest.approx([0.0, 0.0])
    mol = summary["variants"]["mol"]
    values = [results["runs"][f"mol--distill--seed{s}"]["held_out_mlm"] for s in (0, 1)]
    assert mol["metrics"]["held_out_mlm"]["values"] == values and mol["seeds"] == [0, 1]
    assert mol["tokens"] == 256 and mol["unique_parameters"] > mol["unique_non_embedding"] > 0
    assert set(mol["metrics"]) == {"held_out_mlm", "ood.milton", "distance.final", "rt.validation", "rt.test"}
    assert len(mol["distance_layers"]) == 4
    assert "mol+router-deltas-fold" in summary["merged"]
    assert summary["cost"]["total"]["cpu_s"] == pytest.approx(summary["cost"]["reference"]["cpu_s"]
                                                              + summary["cost"]["runs"]["cpu_s"])
    (entry,) = summary["attempts"]
    assert entry["kind"] == "study" and entry["group_depth"] == 2 and entry["discrimination"] == \
        summary["discrimination"]
    assert entry["reference"]["steps"] == 2 and entry["reference"]["held_out_mlm"] == \
        summary["reference"]["held_out_mlm"]
    assert summary["reference"]["flat"]["flat"] is None  # one reference budget: nothing to compare it with


def test_the_report_names_the_primary_metric_and_shows_the_reference(toy):
    folder, _, _, _ = toy
    doc = (folder / "docs" / "recovery.md").read_text()
    assert "**Primary metric** (named in the recipe before running): **held-out MLM ↓**" in doc
    assert "modernalbert experiment recovery toy.yaml" in doc and "<!-- reading:start -->" in doc
    assert "*Distinct layers*" in doc and "Fraction of the ALBERT-style → reference gap closed" in doc
    assert "*Held-out MLM of the reference as built*" in doc and "*Flattened* (criterion" in doc
    assert "Merged MoL" in doc and "not SST-2" in doc
    for png in ("recovery_reference_curve.png", "recovery_gap_fractions.png", "recovery_layer_distance.png"):
        assert (folder / "docs" / "results" / png).stat().st_size > 1000


def test_a_rerun_skips_the_reference_and_finished_runs_and_keeps_the_reading(toy):
    folder, values, results, _ = toy
    doc = folder / "docs" / "recovery.md"
    text = doc.read_text()
    start, end = text.index("<!-- reading:start -->") + 22, text.index("<!-- reading:end -->")
    doc.write_text(text[:start] + "\nHand-written.\n" + text[end:])
    lines: list[str] = []
    again = RecoveryStudy(RecoveryRecipe.from_dict(copy.deepcopy(values)), log=lines.append).run()
    assert sum("done earlier, skipped" in line for line in lines) == 6
    assert any("reference:" in line and "skipped" in line for line in lines)
    key = "mol--distill--seed1"
    assert again["runs"][key]["held_out_mlm"] == results["runs"][key]["held_out_mlm"]
    assert "Hand-written." in doc.read_text()
    ledger = json.loads((folder / "docs" / "results" / "attempts.json").read_text())
    assert len(ledger) == 1  # the same setting again: its entry is replaced, not duplicated


def test_the_report_shows_how_the_gap_fractions_move_with_the_reference_budget(toy):
    from modernalbert.experiments.recovery.report import sensitivity_lines

    folder, values, _, _ = toy
    ledger = folder / "docs" / "results" / "attempts.json"
    (entry,) = json.loads(ledger.read_text())
    summary = json.loads((folder / "docs" / "results" / "recovery.json").read_text())
    recorded = entry["gap_fractions"]["mol"]["held_out_mlm"]
    assert recorded["mean"] == summary["variants"]["mol"]["gap_fraction"]["held_out_mlm"]["mean"]
    assert "mol+router-deltas-fold" in entry["gap_fractions"]
    smaller = copy.deepcopy(entry)  # the same students anchored on a reference of half the budget
    smaller["reference"] |= {"steps": 1, "tokens": entry["reference"]["tokens"] // 2}
    smaller["gap_fractions"]["mol"]["held_out_mlm"] |= {"mean": recorded["mean"] + 10.0, "std": 0.0}
    ledger.write_text(json.dumps([smaller, entry]))
    try:
        RecoveryStudy(RecoveryRecipe.from_dict(copy.deepcopy(values)), log=lambda _: None).run()
        summary = json.loads((folder / "docs" / "results" / "recovery.json").read_text())
        doc = (folder / "docs" / "recovery.md").read_text()
    finally:
        ledger.write_text(json.dumps([entry]))
    sens = summary["reference"]["sensitivity"]
    assert sens["steps"] == [1, 2] and sens["tokens"] == [entry["reference"]["tokens"] // 2, 256]
    # compared on the metrics whose gap this study resolved; the report shows a table only for those
    resolved = [k for k, g in summary["gap"].items() if g["resolved"]]
    assert all(set(per_metric) == set(resolved) for per_metric in sens["variants"].values())
    assert ("*The gap fractions under each reference budget*" in doc) == bool(resolved)
    # rendered with the primary metric resolved at both budgets
    both = [copy.deepcopy(smaller), copy.deepcopy(entry)]
    for e in both:
        e["gap_fractions"]["mol"]["held_out_mlm"]["resolved"] = True
    summary["reference"]["sensitivity"] = reference_sensitivity(both[1], both, ["held_out_mlm"])
    text = "\n".join(sensitivity_lines(summary, RecoveryRecipe.from_dict(copy.deepcopy(values))))
    assert "| model | reference 1 steps | reference 2 steps | first → last |" in text and "**moves**" in text
    rows = [line.split("|")[1].strip() for line in text.split("gap closed:")[1].splitlines() if line.startswith("| ")]
    assert "mol" in rows and not {"albert", "full"} & set(rows)  # the gap's two ends are left out
    summary["reference"]["sensitivity"] = reference_sensitivity(both[1], both, [])
    assert sensitivity_lines(summary, RecoveryRecipe.from_dict(copy.deepcopy(values))) == []  # nothing compared


def test_the_command_line_is_registered():
    from modernalbert.cli.main import build_parser

    argv = ["experiment", "recovery", "r.yaml", "seeds=[0,1]", "--pilot"]
    args = build_parser(argv).parse_args(argv)
    assert (args.experiment, args.recipe, args.overrides, args.pilot) == ("recovery", "r.yaml", ["seeds=[0,1]"], True)
