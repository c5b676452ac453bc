"""What the training tests share: a tiny offline workspace (a randomly initialised BERT teacher, a word-level tokenizer,
a text-file corpus, a 10-step recipe), runs in this process or in a forked child, and one uninterrupted reference
run to compare resumed runs with."""

import contextlib
import os
import random
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from modernalbert.training.recipe import Recipe
from modernalbert.training.trainer import pretrain
from tests.conftest import WORDS, make_tokenizer

# 10 steps of 4 blocks of 32 tokens; checkpoints at steps 4, 8 and 10 (the two newest kept); warm-up 2, decay over
# the last 4 steps, so that a run resumed at step 8 continues in the decay.
RECIPE = {
    "model": {"preset": "test", "overrides": {"mol_mixing": "weight", "max_position_embeddings": 128}},
    "data": {"block_size": 32},
    "optim": {"warmup_steps": 2, "decay_steps": 4},
    "train": {"steps": 10, "batch_size": 4, "eval_every": 5, "save_every": 4, "log_every": 2, "eval_batches": 2,
              "keep_freed_memory": False},
}


@contextlib.contextmanager
def one_thread():
    """One intra-op thread whatever an earlier test left (runs compared for bit-equality must use the same count),
    and no OpenMP team that a forked child would wait for (libgomp's threads do not survive a fork)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
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
    recipe = {**RECIPE, "teacher": {"name": str(root / "teacher"), "init": False},
              "data": {**RECIPE["data"], "corpus": {"sources": [{"files": str(root / "corpus" / "*.txt")}],
                                                    "held_out": 0.1}}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def recipe(workspace: Path, out: Path, *overrides: str) -> Recipe:
    """The workspace recipe writing to ``out``, with ``section.key=value`` overrides."""
    return Recipe.load(workspace / "recipe.yaml", [f"output_dir={out}", *overrides])


def train(workspace: Path, out: Path, *overrides: str, **kwargs) -> dict[int, dict[str, float]]:
    """Run (or resume) in this process; returns this invocation's losses by step."""
    losses: dict[int, dict[str, float]] = {}
    pretrain(recipe(workspace, out, *overrides), on_step_end=lambda s, parts: losses.__setitem__(s, dict(parts)),
             **kwargs)
    return losses


def fork(work, report: Path | None = None) -> int:
    """Run ``work()`` in a forked copy of this process (everything is imported already: a run there costs its steps
    only); returns the child's pid. A child that raises writes its traceback to ``report`` and exits with 1."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            torch.set_num_threads(1)  # sequential BLAS: the parent's OpenMP threads are not in this process
            work()
        except BaseException:
            code = 1
            if report is not None:
                report.write_text(traceback.format_exc())
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 300.0) -> int:
    """The child's exit code, or minus the signal that killed it (as ``subprocess`` reports it); a child still running
    after ``timeout`` seconds is killed and the test fails (a hung child must not hang the suite)."""
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"forked child {pid} still ran after {timeout} s: killed")
        time.sleep(0.02)
    status = done[1]
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def in_child(work, report: Path | None = None) -> int:
    """:func:`fork` and :func:`wait`."""
    return wait(fork(work, report))


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="session")
def reference(workspace, tmp_path_factory) -> dict:
    """The uninterrupted run: ``{"out": folder, "losses": {step: parts}}``."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with one_thread():  # session fixtures come before the per-test pin
        losses = train(workspace, out)
    assert sorted(losses) == list(range(1, 11))
    return {"out": out, "losses": losses}
