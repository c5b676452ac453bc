"""The ablation harness: recipe validation, budget matching and enforcement, the tie rule, tables, and a micro study
through the real pipeline (pretraining, held-out and out-of-domain MLM, RT fine-tuning, merging, speed, report,
resuming)."""

import copy
import json
import math

import pytest

from modernalbert.experiments.ablation import (
    READING_END,
    READING_START,
    AblationRecipe,
    AblationStudy,
    compare,
    comparison_table,
    format_mean_std,
    merge_overrides,
    plan_budget,
    render_report,
    results_table,
    run_key,
)

# preset "test": d=64, 4 heads, f=96, e=32, L=4, G=2, MoL at group 1, E=4, k=2, r=4 (vocabulary given explicitly)
BUDGET_RECIPE = {
    "model": {"preset": "test", "overrides": {}},
    "budget": {"reference": "mol"},
    "variants": [
        {"name": "full", "overrides": {"group_depth": 1, "mol_groups": []}, "exempt": True},
        {"name": "albert", "overrides": {"mol_groups": []}, "match": "intermediate_size"},
        {"name": "rrt", "overrides": {"ffn_variants": ["glu", "rrt"]}, "match": "lora_rank"},
        {"name": "moa", "overrides": {"ffn_variants": ["glu", "moa"]}, "match": "lora_rank"},
        {"name": "mol", "overrides": {"mol_mixing": "weight"}},
    ],
    "pretrain": {"train": {"steps": 10, "batch_size": 4}, "data": {"block_size": 32}},
    "speed": {"baseline": "full"},
}


def recipe(**changes) -> AblationRecipe:
    values = copy.deepcopy(BUDGET_RECIPE)
    values.update(changes)
    return AblationRecipe.from_dict(values)


# ============================================================================================== the tie rule


def test_differences_within_the_spread_are_ties():
    c = compare([6.00, 6.10, 5.90], [6.05, 6.15, 5.95], higher_is_better=False)
    assert c.verdict == "tie" and c.delta == pytest.approx(-0.05) and c.spread == pytest.approx(0.1)


def test_differences_beyond_the_spread_are_wins_or_losses_in_the_metric_direction():
    low, high = [5.0, 5.1, 4.9], [6.0, 6.1, 5.9]
    assert compare(low, high, higher_is_better=False).verdict == "better"  # lower loss
    assert compare(low, high, higher_is_better=True).verdict == "worse"  # lower accuracy
    assert compare(high, low, higher_is_better=True).verdict == "better"
    # the larger of the two spreads decides: a noisy side turns the same gap into a tie
    assert compare([5.0, 6.5, 3.5], high, higher_is_better=False).verdict == "tie"


def test_one_seed_has_no_spread_and_no_verdict():
    assert compare([5.0], [6.0, 6.1], higher_is_better=False).verdict == "n/a"


def test_mean_std_formatting():
    assert format_mean_std([0.5, 0.6, 0.7]) == "0.600 ± 0.100"
    assert format_mean_std([0.5, 0.6, 0.7], scale=100, digits=1) == "60.0 ± 10.0"
    assert format_mean_std([0.25]) == "0.250"
    assert format_mean_std([]) == "—"


# ============================================================================================== budgets


def test_knobs_are_solved_into_the_budget_and_counts_are_exact():
    from modernalbert import ModernAlbertConfig, ModernAlbertForMaskedLM, count_parameters

    r = recipe()
    rows = {row.name: row for row in plan_budget(r, vocab=512)}
    ref = rows["mol"].non_embedding
    for name in ("albert", "rrt", "moa"):
        assert abs(rows[name].relative) <= 0.05 and rows[name].knob_value >= 1
        assert abs(rows[name].non_embedding - ref) <= abs(rows[name].relative) * ref + 1
    assert rows["full"].exempt and rows["full"].relative is None and rows["full"].group_depth == 1
    # RRT keeps the reference LoRA scale alpha / r while its rank moves
    rrt = rows["rrt"].overrides
    assert rrt["lora_alpha"] / rrt["lora_rank"] == pytest.approx(8.0 / 4)
    # the planned counts are those of real (not meta) models built from the resolved overrides
    model = ModernAlbertForMaskedLM(ModernAlbertConfig.from_preset("test", **rows["albert"].overrides))
    c = count_parameters(model)
    assert (c.unique, c.effective) == (rows["albert"].unique, rows["albert"].effective)
    assert model.config.intermediate_size == rows["albert"].knob_value


def test_a_variant_outside_the_budget_without_a_knob_stops_the_study():
    variants = copy.deepcopy(BUDGET_RECIPE["variants"])
    variants[1] = {"name": "wide", "overrides": {"mol_groups": [], "intermediate_size": 300}}
    with pytest.raises(ValueError, match=r"Budget: variant 'wide'.*outside ±5%.*names no knob"):
        plan_budget(recipe(variants=variants), vocab=512)


def test_a_budget_no_knob_value_can_meet_is_refused():
    # one unit of lora_rank moves RRT by far more than 0.01 % of the budget
    with pytest.raises(ValueError, match=r"Budget: variant 'rrt'.*even the closest lora_rank="):
        plan_budget(recipe(budget={"reference": "mol", "tolerance": 0.0001}), vocab=512)


def test_the_total_basis_counts_the_embedding_table():
    rows = {row.name: row for row in plan_budget(recipe(budget={"reference": "mol", "basis": "total"}), vocab=512)}
    assert abs(rows["albert"].unique - rows["mol"].unique) <= 0.05 * rows["mol"].unique


def test_variant_overrides_replace_the_other_form_of_ffn_placement():
    assert merge_overrides({"mol_groups": [1], "x": 1}, {"ffn_variants": ["glu", "rrt"]}) == \
        {"x": 1, "ffn_variants": ["glu", "rrt"]}
    assert merge_overrides({"ffn_variants": ["glu", "mol"]}, {"mol_groups": []}) == {"mol_groups": []}


# ============================================================================================== recipes


@pytest.mark.parametrize("change, message", [
    ({"sedes": [0]}, r"Unknown key\(s\) \['sedes'\]"),
    ({"inits": ["random", "warm"]}, "inits="),
    ({"seeds": [0, 0]}, "lists a seed twice"),
    ({"pretrain": {"model": {"preset": "mini"}}}, "harness-owned"),
    ({"pretrain": {"train": {"steps": 0}}}, r"train.steps"),
    ({"budget": {"reference": "nope"}}, "budget.reference='nope' is not a variant"),
    ({"budget": {"reference": "albert"}}, "without a knob"),
    ({"finetune": {"config": {"seed": 3}}}, "finetune.config.seed"),
    ({"finetune": {"config": {"learnin_rate": 1e-4}}}, r"Unknown key\(s\) \['learnin_rate'\]"),
    ({"merge": {"options": [{"weights": "router", "space": "deltas", "form": "squash"}]}}, "form='squash'"),
    ({"ood": {"sources": ["wikipedia"]}}, "not a packaged text source"),
    ({"teacher": {"name": None}}, "teacher.name is empty"),
    ({"speed": {"baseline": "nope"}}, "speed.baseline='nope'"),
])
def test_invalid_recipes_name_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        recipe(**change)


def test_duplicate_variants_and_bad_knobs_are_refused():
    variants = copy.deepcopy(BUDGET_RECIPE["variants"])
    with pytest.raises(ValueError, match="appear more than once"):
        recipe(variants=[*variants, variants[0]])
    variants[2]["match"] = "lora_alpha"
    with pytest.raises(ValueError, match="match='lora_alpha'"):
        recipe(variants=variants)


def test_every_run_shares_the_pretraining_recipe_and_only_init_differs(tmp_path):
    r = recipe()
    rows = {row.name: row for row in plan_budget(r, vocab=512)}
    a = r.run_recipe(r.variant("mol"), rows["mol"].overrides, "random", 3, tmp_path / "a").to_dict()
    b = r.run_recipe(r.variant("albert"), rows["albert"].overrides, "distill", 3, tmp_path / "b").to_dict()
    assert a["teacher"]["init"] is False and b["teacher"]["init"] is True
    assert a["seed"] == b["seed"] == 3
    for section in ("data", "optim", "train", "distill"):
        assert a[section] == b[section]
    assert r.tokens_per_run == 10 * 4 * 32


def test_overrides_from_the_command_line(tmp_path):
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(BUDGET_RECIPE))
    r = AblationRecipe.load(path, ["seeds=[4]", "pretrain.train.steps=3", "finetune.max_train_examples=5"])
    assert r.seeds == [4] and r.pretrain["train"]["steps"] == 3 and r.finetune.max_train_examples == 5
    with pytest.raises(ValueError, match="key=value"):
        AblationRecipe.load(path, ["seeds"])


# ============================================================================================== tables


def fake_results(r: AblationRecipe) -> dict:
    rows = plan_budget(r, vocab=512)
    from dataclasses import asdict

    losses = {"full": [5.0, 5.02, 4.98], "albert": [6.0, 6.3, 5.7], "rrt": [5.9, 6.0, 5.8], "moa": [6.1, 6.1, 6.1],
              "mol": [5.5, 5.52, 5.48]}
    runs = {}
    for v, vals in losses.items():
        for seed, loss in enumerate(vals):
            runs[run_key(v, "random", seed)] = {
                "variant": v, "init": "random", "seed": seed, "held_out_mlm": loss, "ood": {"milton": loss + 1},
                "rt": {"validation": 0.6 + 0.01 * seed, "test": 0.6}, "merged": {},
                "curves": {"train": [[1, 7.0], [2, loss]], "eval": [[2, loss]]}, "expert_usage": None,
                "cost": {"total": {"wall_s": 1.0, "cpu_s": 2.0}}}
    return {"runs": runs, "budget": [asdict(x) for x in rows]}


def test_tables_carry_spread_and_call_small_differences_ties():
    r = recipe(seeds=[0, 1, 2], inits=["random"], speed={"enabled": False})
    results = fake_results(r)
    main = results_table(results, r)
    assert "6.000 ± 0.300" in main and "5.500 ± 0.020" in main and "60.0 ± 0.0" in main
    verdicts = {line.split("|")[2].strip(): line for line in comparison_table(results, r).splitlines()[2:]}
    assert "tie (Δ -0.500, spread 0.300)" not in verdicts["mol vs albert"]  # 0.5 > 0.3: a real difference
    assert "**MoL better** (Δ -0.500, spread 0.300)" in verdicts["mol vs albert"]
    assert "**MoL worse** (Δ +0.500, spread 0.020)" in verdicts["mol vs full"]
    assert "**MoL better**" in verdicts["mol vs moa"]  # std 0 on one side: the other side's spread decides
    assert "tie (Δ +0.0, spread 0.0)" in verdicts["mol vs rrt"].split("|")[-2]  # identical test accuracy
    rrt_mlm = verdicts["mol vs rrt"].split("|")[3]
    assert "**MoL better** (Δ -0.400, spread 0.100)" in rrt_mlm


def test_the_report_keeps_the_hand_written_reading():
    r = recipe(seeds=[0, 1, 2], inits=["random"], speed={"enabled": False})
    results = fake_results(r)
    images = {"loss": "loss.png", "usage": None}
    text = render_report(results, r, images, "modernalbert experiment ablation x.yaml", reading="Our reading.")
    assert text.count("modernalbert experiment ablation x.yaml") == 1
    assert f"{READING_START}\nOur reading.\n{READING_END}" in text
    assert "## Budgets" in text and "tokens" in text and "![loss curves](loss.png)" in text


# ============================================================================================== the real pipeline

MICRO = {
    "seeds": [0],
    "inits": ["random"],
    "teacher": {"name": "all-MiniLM-L6-v2"},
    "model": {"preset": "mini", "overrides": {
        "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "embedding_size": 32,
        "num_hidden_layers": 4, "group_depth": 2, "mol_groups": [1], "lora_rank": 4, "lora_alpha": 8.0}},
    "budget": {"reference": "mol"},
    "variants": [{"name": "albert", "overrides": {"mol_groups": []}, "match": "intermediate_size"},
                 {"name": "mol", "overrides": {"mol_mixing": "weight"}}],
    "pretrain": {"data": {"corpus": {"sources": ["kjv"], "held_out": 0.02}, "block_size": 32},
                 "distill": {"hidden_weight": 0.0}, "optim": {"warmup_steps": 1, "decay_steps": 1},
                 "train": {"steps": 3, "batch_size": 4, "eval_every": 3, "eval_batches": 1, "save_every": 3,
                           "log_every": 1}},
    "finetune": {"config": {"batch_size": 8, "epochs": 1.0, "max_length": 32}, "max_train_examples": 24,
                 "max_eval_examples": 16},
    "merge": {"options": [{"weights": "router", "space": "deltas", "form": "fold"}], "rt_splits": ["test"]},
    "ood": {"sources": ["milton"], "blocks": 4, "batch_size": 4},
    "speed": {"examples": 4, "max_length": 32, "repeats": 2, "baseline": "albert"},
}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    values = copy.deepcopy(MICRO)
    values["output_dir"] = str(out / "study")
    values["report"] = {"results_md": str(out / "docs" / "results.md"), "command": "modernalbert experiment x"}
    lines: list[str] = []
    results = AblationStudy(AblationRecipe.from_dict(values), log=lines.append).run()
    return out, values, results, lines


def test_a_micro_study_runs_every_stage_for_real(micro):
    out, _, results, lines = micro
    tokens = 3 * 4 * 32
    assert set(results["runs"]) == {"albert--random--seed0", "mol--random--seed0"}
    assert any("tokens" in line and "intermediate_size=" in line for line in lines)  # the budget table is printed
    for rec in results["runs"].values():
        assert rec["tokens_seen"] == tokens
        # the held-out batches are rebuilt exactly: the harness's loss equals the trainer's own evaluation
        assert rec["held_out_mlm"] == pytest.approx(rec["held_out_mlm_trainer"], abs=1e-5)
        assert math.isfinite(rec["ood"]["milton"]) and 0.0 <= rec["rt"]["test"] <= 1.0
        assert rec["curves"]["eval"][-1][0] == 3 and rec["cost"]["total"]["cpu_s"] > 0
        assert not (out / "study" / "runs" / run_key(rec["variant"], "random", 0) / "pretrain" / "checkpoints").exists()
    mol, albert = results["runs"]["mol--random--seed0"], results["runs"]["albert--random--seed0"]
    assert albert["merged"] == {} and albert["expert_usage"] is None and albert["adapter_effect"] is None
    assert 0.0 < mol["adapter_effect"] < 1.0  # 3 steps move the experts' B off zero, a little
    merged = mol["merged"]["router-deltas-fold"]
    # folding is exact for weight mixing under the recorded routing; the MLM loss moves little after 3 steps
    assert abs(merged["held_out_mlm"] - mol["held_out_mlm"]) < 0.05 and set(merged["rt"]) == {"test"}
    assert len(mol["expert_usage"]) == 2 and mol["routing_ema"] is not None  # 2 routed layers (group 1, G = 2)
    speed = results["speed"]["models"]
    assert set(speed) == {"albert", "mol", "mol+router-deltas-lowrank", "mol+router-deltas-fold"}
    assert all(m["tokens_per_s"] > 0 and len(m["ratio"]) == 2 for m in speed.values())


def test_the_report_is_written_with_the_command_budgets_and_plots(micro):
    out, _, _, _ = micro
    doc = (out / "docs" / "results.md").read_text()
    assert "modernalbert experiment x" in doc.split("## Setup")[0]
    assert "| intermediate_size=" in doc and f"{3 * 4 * 32:,}" in doc
    assert "router-deltas-fold" in doc and READING_START in doc
    assert (out / "docs" / "results" / "loss_curves.png").stat().st_size > 1000
    assert (out / "docs" / "results" / "expert_usage.png").is_file()
    assert json.loads((out / "study" / "results.json").read_text())["format"] == 1


def test_a_rerun_skips_finished_runs_and_keeps_the_reading(micro):
    out, values, results, _ = micro
    doc = out / "docs" / "results.md"
    text = doc.read_text()
    start, end = text.index(READING_START) + len(READING_START), text.index(READING_END)
    doc.write_text(text[:start] + "\nHand-written.\n" + text[end:])
    lines: list[str] = []
    again = AblationStudy(AblationRecipe.from_dict(copy.deepcopy(values)), log=lines.append).run()
    assert sum("skipped" in line for line in lines) == 3  # two runs and the speed stage
    assert again["runs"]["mol--random--seed0"]["held_out_mlm"] == results["runs"]["mol--random--seed0"]["held_out_mlm"]
    assert "Hand-written." in doc.read_text()


def test_runs_recorded_with_another_configuration_are_refused(micro):
    _, values, _, _ = micro
    changed = copy.deepcopy(values)
    changed["pretrain"]["optim"]["lr"] = 5e-4
    with pytest.raises(ValueError, match="--force"):
        AblationStudy(AblationRecipe.from_dict(changed), log=lambda s: None).run()


def test_the_command_line_is_registered():
    from modernalbert.cli.main import build_parser

    argv = ["experiment", "ablation", "r.yaml", "seeds=[0]", "--force"]
    args = build_parser(argv).parse_args(argv)  # only the command named in argv gets its arguments
    assert (args.experiment, args.recipe, args.overrides, args.force) == ("ablation", "r.yaml", ["seeds=[0]"], True)


@pytest.mark.parametrize("path, vocab", [("recipes/ablation-cpu.yaml", 30522), ("recipes/ablation-gpu.yaml", 50368)])
def test_the_shipped_recipes_are_valid_and_meet_their_budgets(path, vocab):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = AblationRecipe.load(root / path)
    rows = plan_budget(r, vocab=vocab)
    assert len(r.seeds) >= 3 and set(r.inits) == {"random", "distill"}
    assert {row.name for row in rows} == {"full", "albert", "rrt", "moa", "mol-output", "mol-weight"}
    assert all(row.exempt or abs(row.relative) <= r.budget.tolerance for row in rows)


def test_speed_appears_only_on_the_rows_of_the_init_it_was_measured_on():
    r = recipe(seeds=[0, 1, 2], inits=["random", "distill"], speed={"init": "distill"})
    results = fake_results(r)
    for key, run in list(results["runs"].items()):  # the same runs again, as distillation-initialised ones
        results["runs"][key.replace("random", "distill")] = {**run, "init": "distill"}
    results["speed"] = {"models": {"mol": {"ratio": [1.1, 1.2, 1.3]}}}
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[-2].strip()
            for line in results_table(results, r).splitlines()[2:]}
    label = r.variant("mol").label
    assert rows[(label, "distill")] == "1.200 ± 0.100×"
    assert rows[(label, "random")] == "—"  # not measured on random-init models: no repeated figure
