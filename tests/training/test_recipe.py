"""Recipes, schedule and optimiser groups."""

import itertools
import re
from pathlib import Path

import pytest
import torch
import yaml

from modernalbert import ModernAlbertForMaskedLM
from modernalbert.training.optim import param_groups, wsd_schedule
from modernalbert.training.recipe import OptimSection, Recipe
from tests.conftest import small_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _is_experiment(path: Path) -> bool:
    """Ablation and recovery recipes (tested under tests/experiments) list variants; pretraining recipes do not."""
    return "variants" in yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml") if not _is_experiment(p)))
def test_shipped_recipes_load(name):
    recipe = Recipe.load(RECIPES / name)
    assert recipe.train.steps > 0 and recipe.to_dict()["model"]["preset"]


def test_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  steps: 10\nmodel:\n  preset: test\n")
    r = Recipe.load(path, ["train.steps=20", "optim.lr=5e-4", "output_dir=runs/x", "distill.hidden_weight=0"])
    assert (r.train.steps, r.optim.lr, r.output_dir, r.distill.hidden_weight) == (20, 5e-4, "runs/x", 0)
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['stepz'\] in recipe section 'train'"):
        Recipe.load(path, ["train.stepz=3"])
    with pytest.raises(ValueError, match="Unknown recipe key"):
        Recipe.load(path, ["trian.steps=3"])
    with pytest.raises(ValueError, match="Unknown distill option"):
        Recipe.load(path, ["distill.hiden_weight=3"])
    with pytest.raises(ValueError, match=r"section.key=value"):
        Recipe.load(path, ["train.steps"])
    with pytest.raises(ValueError, match=r"train.precision"):
        Recipe.load(path, ["train.precision=fp16"])
    with pytest.raises(ValueError, match=r"data.block_size"):
        Recipe.load(path, ["data.block_size=2"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Recipe.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        Recipe.load(bad)


def _learning_rates(optim: OptimSection, total: int, start: int = 0) -> list[float]:
    """The factor each optimisation step runs at (peak lr 1), from ``start`` (a resumed run) to the end."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    if start:  # a resumed run: the optimiser state (with its groups' initial_lr) is loaded before the schedule
        opt.param_groups[0]["initial_lr"] = 1.0
    scheduler = wsd_schedule(opt, optim, total, start)
    values = []
    for _ in range(start, total):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return values


def test_warmup_stable_decay():
    values = _learning_rates(OptimSection(warmup_steps=10, decay_steps=20, min_lr_ratio=0.1), 100)
    # transformers.get_wsd_schedule, one step ahead: the first step already trains (with min_lr_ratio > 0 the
    # library's warm-up starts from the floor), the peak is reached at step warmup - 1.
    assert values[0] == pytest.approx(0.1 + 0.9 * 0.1) and values[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in values[10:80])
    assert values[80] == pytest.approx(1.0) and values[99] == pytest.approx(0.1 + 0.9 / 20)
    assert all(a >= b for a, b in itertools.pairwise(values[80:]))
    assert _learning_rates(OptimSection(warmup_steps=10, decay_steps=20, min_lr_ratio=0.1), 100, 37) == values[37:]


@pytest.mark.parametrize(("warmup", "decay", "total"), [(10, 20, 100), (30, 60, 300), (0, 0, 50), (1, 1, 4)])
def test_schedule_keeps_the_learning_rates_of_the_shipped_recipes(warmup, decay, total):
    """With min_lr_ratio 0 (every shipped recipe) each step runs at (s + 1) / warmup in warm-up, 1, then
    (total - s) / decay: the schedule's rates before it was delegated to transformers, so measured runs hold."""
    expected = [(s + 1) / warmup if s < warmup else (total - s) / decay if decay and s >= total - decay else 1.0
                for s in range(total)]
    got = _learning_rates(OptimSection(warmup_steps=warmup, decay_steps=decay), total)
    assert got == pytest.approx(expected, abs=1e-12)


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = ModernAlbertForMaskedLM(small_config())
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] or "embeddings" in names[id(p)] or p.ndim < 2 for p in no_decay["params"])
    assert any("tok_embeddings" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim >= 2 and "embeddings" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert torch.optim.AdamW([decay, no_decay])


@pytest.mark.parametrize(("override", "says"), [
    ("optim.lr=inf", "optim.lr=inf is invalid: expected a finite number > 0"),
    ("optim.lr=.nan", "optim.lr=nan is invalid"),
    ("optim.lr=0", "optim.lr=0.0 is invalid"),
    ("optim.eps=-1e-8", "optim.eps=-1e-08 is invalid"),
    ("optim.weight_decay=-0.01", "optim.weight_decay=-0.01 is invalid: expected a finite number >= 0"),
    ("optim.clip_grad_norm=0", "or null for no clipping"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm=-1.0 is invalid"),
    ("optim.clip_grad_norm=inf", "optim.clip_grad_norm=inf is invalid"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0] is invalid"),
    ("train.resume=''", "train.resume='' is invalid"),
    ("train.resume_rng=fresh", "train.resume_rng"),
])
def test_optimizer_and_resume_settings_are_validated(tmp_path, override, says):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  preset: test\n")
    with pytest.raises(ValueError, match=re.escape(says)):
        Recipe.load(path, [override])


def test_clipping_is_disabled_explicitly(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  clip_grad_norm: null\n")
    assert Recipe.load(path).optim.clip_grad_norm is None
    assert Recipe.load(path, ["optim.clip_grad_norm=0.5"]).optim.clip_grad_norm == 0.5
