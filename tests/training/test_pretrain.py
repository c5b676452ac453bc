"""Pretraining end to end on CPU: exact resume after SIGKILL of a real process, DDP = single process, FSDP's sharded
state saved and resumed with DCP (bit-identical losses), bad input.

Runs that must be separate processes (SIGKILL of the command a user starts, torchrun) are subprocesses (the driver);
the rest run in this process (see conftest.py). Faults (kills at seeded points, full disk, concurrent runs) and
damaged checkpoints have their own modules.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from modernalbert.training.checkpoint import CheckpointError, latest_checkpoint, verify_checkpoint
from modernalbert.training.recipe import Recipe
from modernalbert.training.trainer import RUN_LOCK, pretrain
from modernalbert.utils.locking import FolderLock
from tests.conftest import make_tokenizer
from tests.training.conftest import recipe, same_weights, train

DRIVER = Path(__file__).with_name("driver.py")
FSDP_DRIVER = Path(__file__).with_name("fsdp_driver.py")
ROOT = Path(__file__).resolve().parents[2]


def run(workspace, out, *extra, torchrun: int = 0, check=True, driver=DRIVER):
    # This checkout's package first (src/), then the tests; the subprocess must run the code under test.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                 "--master_port", str(free_port())] if torchrun else [sys.executable])
    args = [str(out)] if driver is FSDP_DRIVER else [f"output_dir={out}"]
    cmd = [*launcher, str(driver), str(workspace / "recipe.yaml"), *args, *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "it/s" not in line]  # without progress bars
        first = next((i for i, line in enumerate(errors) if "Traceback" in line or "terminate" in line), 0)
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n" + "\n".join(errors[first:first + 60]))
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_losses(out, rank=0):
    """Last record per step (a resumed run repeats the steps after its checkpoint)."""
    records = {}
    for line in (Path(out) / f"steps-rank{rank}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        records[rec.pop("step")] = rec
    return records


def test_sigkill_then_resume_gives_bit_identical_losses(workspace, reference, tmp_path):
    out = tmp_path / "b"
    killed = run(workspace, out, "--kill-at-step", "6", check=False)
    assert killed.returncode == -9  # SIGKILL
    assert max(step_losses(out)) == 6 and latest_checkpoint(out).name == "step-0000004"
    resumed = run(workspace, out)  # resumes from step 4 by itself (train.resume: auto), taking over the dead lock
    assert f"took over the lock left by pid {killed_pid(out, resumed)}" in resumed.stdout
    assert step_losses(out) == reference["losses"]  # bit-identical, every loss part of every step
    assert same_weights(reference["out"] / "final", out / "final")


def killed_pid(out, resumed) -> int:
    line = next(line for line in resumed.stdout.splitlines() if "took over the lock" in line)
    return int(line.split("left by pid ")[1].split()[0])


def test_two_processes_give_the_single_process_gradients(workspace, tmp_path):
    # Router losses are per-process statistics (as in Switch / GShard), so they are off for exact equality.
    common = ["model.overrides.router_aux_loss_coef=0", "model.overrides.router_z_loss_coef=0", "train.steps=1"]
    run(workspace, tmp_path / "single", *common, "train.batch_size=4", "--grads", str(tmp_path / "g1.safetensors"))
    run(workspace, tmp_path / "ddp", *common, "train.batch_size=2", "--grads", str(tmp_path / "g2.safetensors"),
        torchrun=2)
    # Gradient accumulation: two micro-batches of 2 in one process give the same step as well.
    run(workspace, tmp_path / "accum", *common, "train.batch_size=2", "train.grad_accum=2", "--grads",
        str(tmp_path / "g3.safetensors"))
    g1, g2 = load_file(str(tmp_path / "g1.safetensors")), load_file(str(tmp_path / "g2.safetensors"))
    g3 = load_file(str(tmp_path / "g3.safetensors"))
    assert g1.keys() == g2.keys() == g3.keys() and len(g1) > 10
    assert any("lora_B1" in k for k in g1) and any("router" in k for k in g1)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=0, atol=1e-5, msg=k)
        torch.testing.assert_close(g3[k], g1[k], rtol=0, atol=1e-5, msg=k)


def test_fsdp_saves_and_resumes_the_sharded_state_exactly(workspace, tmp_path):
    """Two CPU processes (gloo) under torchrun with FSDP2 through accelerate: a run stopped after step 6 and resumed
    from its step-4 checkpoint (sharded model and AdamW state through DCP) computes bit-identical losses on every
    process and the same final weights as an uninterrupted run; a run on a locked folder stops on every process."""
    with FolderLock(tmp_path / "locked", name=RUN_LOCK, purpose="test"):
        run(workspace, tmp_path, "train.batch_size=2", torchrun=2, driver=FSDP_DRIVER)
    for rank in (0, 1):  # the main process found the lock held; the other learned it and stopped too
        assert f"pid {os.getpid()}" in (tmp_path / f"locked-rank{rank}.txt").read_text()
        straight, resumed = step_losses(tmp_path / "straight", rank), step_losses(tmp_path / "resumed", rank)
        assert sorted(resumed) == list(range(1, 11)) and resumed == straight  # tolerance: none (bit-identical)
    assert same_weights(tmp_path / "straight" / "final", tmp_path / "resumed" / "final")
    ckpt = tmp_path / "resumed" / "checkpoints" / "step-0000008"
    state = verify_checkpoint(ckpt)
    shards = sorted((ckpt / "state").iterdir())
    assert state["world_size"] == 2 and len(shards) == 2  # one DCP file per process
    exp_avg = "optimizer.state.student.model.groups.1.mlp.lora_B1.exp_avg"
    full = load_file(str(ckpt / "model.safetensors"))["model.groups.1.mlp.lora_B1"].shape
    with safe_open(str(shards[0]), "pt") as a, safe_open(str(shards[1]), "pt") as b:
        halves = [f.get_slice(exp_avg).get_shape() for f in (a, b)]
    assert halves == [[full[0] // 2, *full[1:]]] * 2  # AdamW's moments, sharded along the first dimension


def _recipe(workspace, tmp_path, *overrides):
    return recipe(workspace, tmp_path / "out", *overrides)


def test_bad_input_gives_clear_errors(workspace, tmp_path):
    with pytest.raises(FileNotFoundError, match="Teacher"):
        pretrain(_recipe(workspace, tmp_path, f"teacher.name={tmp_path / 'nowhere'}"))
    gpt = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40)).save_pretrained(gpt)
    make_tokenizer().save_pretrained(gpt)
    with pytest.raises(ValueError, match="encoder"):
        pretrain(_recipe(workspace, tmp_path, f"teacher.name={gpt}"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    corpus = {"sources": [{"files": str(empty / "*.txt")}], "held_out": 0.1}
    with pytest.raises((ValueError, FileNotFoundError), match=r"a\.txt"):
        pretrain(Recipe.load(workspace / "recipe.yaml", [f"output_dir={tmp_path / 'out'}",
                                                         f"data.corpus={json.dumps(corpus)}"]))
    # A diverging run stops with a clear message before applying a non-finite update; its last checkpoint is
    # finite (the weights checked before writing).
    nan = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match=r"Non-finite .* The last checkpoint is .*step-0000001"):
        train(workspace, nan, "optim.lr=1e30", "optim.clip_grad_norm=null", "train.save_every=1")
    assert latest_checkpoint(nan).name == "step-0000001"
    # A corrupt checkpoint is refused with its name and the way out.
    out = tmp_path / "corrupt"
    train(workspace, out, "train.steps=4")
    (out / "checkpoints" / "step-0000004" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its SHA-256"):
        pretrain(recipe(workspace, out, "train.steps=6"))


def test_the_command_line_reports_a_folder_in_use_and_a_bad_checkpoint_in_one_line(workspace, tmp_path, capsys):
    from modernalbert_cli import main

    args = ["pretrain", str(workspace / "recipe.yaml"), f"output_dir={tmp_path}"]
    with FolderLock(tmp_path, name=RUN_LOCK, purpose="pretraining run"):
        assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"modernalbert pretrain: error: {tmp_path} is in use by another ")
    assert main([*args, f"train.resume={workspace / 'teacher'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a training checkpoint" in err[0]
