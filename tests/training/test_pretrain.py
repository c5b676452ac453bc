"""Pretraining end to end on CPU: exact resume after SIGKILL, interrupted saves, DDP = single process, bad input.

Every run is a subprocess (the driver), as a user's run would be; a tiny randomly initialised BERT teacher, a
word-level tokenizer and a text-file corpus keep it offline and fast.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from modernalbert.training.checkpoint import latest_checkpoint, load_checkpoint
from modernalbert.training.recipe import Recipe
from modernalbert.training.trainer import pretrain
from tests.conftest import WORDS, make_tokenizer

DRIVER = Path(__file__).with_name("driver.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    tok = make_tokenizer()
    tok.save_pretrained(root / "teacher")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=128, pad_token_id=0)
    BertModel(cfg).save_pretrained(root / "teacher")
    rng = random.Random(0)
    (root / "corpus").mkdir()
    for i in range(40):
        (root / "corpus" / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 160))))
    recipe = {
        "model": {"preset": "test", "overrides": {"mol_mixing": "weight", "max_position_embeddings": 128}},
        "teacher": {"name": str(root / "teacher"), "init": False},
        "data": {"corpus": {"sources": [{"files": str(root / "corpus" / "*.txt")}], "held_out": 0.1},
                 "block_size": 32},
        "optim": {"warmup_steps": 2, "decay_steps": 4},
        "train": {"steps": 10, "batch_size": 4, "eval_every": 5, "save_every": 4, "log_every": 2,
                  "eval_batches": 2},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def run(setup, out, *extra, torchrun: int = 0, check=True):
    # This checkout's package first (src/), then the tests; the subprocess must run the code under test.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                 "--master_port", "29517"] if torchrun else [sys.executable])
    cmd = [*launcher, str(DRIVER), str(setup / "recipe.yaml"), f"output_dir={out}", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def step_losses(out, rank=0):
    """Last record per step (a resumed run repeats the steps after its checkpoint)."""
    records = {}
    for line in (Path(out) / f"steps-rank{rank}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        records[rec["step"]] = rec
    return records


def test_sigkill_then_resume_gives_bit_identical_losses(setup, tmp_path):
    straight = step_losses(run(setup, tmp_path / "a") and tmp_path / "a")
    killed = run(setup, tmp_path / "b", "--kill-at-step", "6", check=False)
    assert killed.returncode == -9  # SIGKILL
    assert max(step_losses(tmp_path / "b")) == 6 and latest_checkpoint(tmp_path / "b").name == "step-0000004"
    run(setup, tmp_path / "b")  # resumes from step 4 by itself (train.resume: auto)
    resumed = step_losses(tmp_path / "b")
    assert sorted(resumed) == list(range(1, 11))
    assert resumed == straight  # bit-identical, every loss part of every step
    a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(setup, tmp_path):
    killed = run(setup, tmp_path / "c", "--kill-in-save", "8", check=False)
    assert killed.returncode == -9
    assert (tmp_path / "c" / "checkpoints" / ".step-0000008.tmp").exists()  # the half-written one
    latest = latest_checkpoint(tmp_path / "c")
    assert latest.name == "step-0000004"
    assert load_checkpoint(latest, rank=0)["trainer"]["step"] == 4
    run(setup, tmp_path / "c")
    straight = step_losses(run(setup, tmp_path / "d") and tmp_path / "d")
    assert step_losses(tmp_path / "c") == straight


def test_two_processes_give_the_single_process_gradients(setup, tmp_path):
    # Router losses are per-process statistics (as in Switch / GShard), so they are off for exact equality.
    common = ["model.overrides.router_aux_loss_coef=0", "model.overrides.router_z_loss_coef=0", "train.steps=1"]
    run(setup, tmp_path / "single", *common, "train.batch_size=4", "--grads", str(tmp_path / "g1.safetensors"))
    run(setup, tmp_path / "ddp", *common, "train.batch_size=2", "--grads", str(tmp_path / "g2.safetensors"),
        torchrun=2)
    # Gradient accumulation: two micro-batches of 2 in one process give the same step as well.
    run(setup, tmp_path / "accum", *common, "train.batch_size=2", "train.grad_accum=2", "--grads",
        str(tmp_path / "g3.safetensors"))
    g1, g2 = load_file(str(tmp_path / "g1.safetensors")), load_file(str(tmp_path / "g2.safetensors"))
    g3 = load_file(str(tmp_path / "g3.safetensors"))
    assert g1.keys() == g2.keys() == g3.keys() and len(g1) > 10
    assert any("lora_B1" in k for k in g1) and any("router" in k for k in g1)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=0, atol=1e-5, msg=k)
        torch.testing.assert_close(g3[k], g1[k], rtol=0, atol=1e-5, msg=k)


def _recipe(setup, tmp_path, **changes):
    values = yaml.safe_load((setup / "recipe.yaml").read_text())
    for dotted, value in changes.items():
        node = values
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    values["output_dir"] = str(tmp_path / "out")
    return Recipe.from_dict(values)


def test_bad_input_gives_clear_errors(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="Teacher"):
        pretrain(_recipe(setup, tmp_path, teacher__name=str(tmp_path / "nowhere")))
    gpt = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40)).save_pretrained(gpt)
    make_tokenizer().save_pretrained(gpt)
    with pytest.raises(ValueError, match="encoder"):
        pretrain(_recipe(setup, tmp_path, teacher__name=str(gpt)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises((ValueError, FileNotFoundError), match=r"a\.txt"):
        pretrain(_recipe(setup, tmp_path, data__corpus={"sources": [{"files": str(empty / "*.txt")}],
                                                        "held_out": 0.1}))
    # A diverging run stops with a clear message before applying a non-finite update.
    with pytest.raises(FloatingPointError, match="Non-finite"):
        pretrain(_recipe(setup, tmp_path / "nan", optim__lr=1e30, optim__clip_grad_norm=1e30, train__steps=6))
    # A corrupt checkpoint is refused with its name and the way out.
    out = tmp_path / "corrupt"
    run(setup, out, "train.steps=4")
    (out / "checkpoints" / "step-0000004" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        pretrain(Recipe.load(setup / "recipe.yaml", [f"output_dir={out}", "train.steps=6"]))
    shutil.rmtree(out)
