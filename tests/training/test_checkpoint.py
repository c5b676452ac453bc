"""Checkpoint integrity: resume finds the newest verified checkpoint without trusting ``latest``, and refuses, naming
the file and the way out, every checkpoint that is damaged, edited or does not fit the run; nothing non-finite is
ever saved.

Each case damages a copy of one run stopped after step 8 (checkpoints step-0000004 and step-0000008, no final model).
"""

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from modernalbert.training.checkpoint import (
    MANIFEST,
    CheckpointError,
    latest_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from modernalbert.training.trainer import fit, pretrain, save, setup
from modernalbert.utils.io import hash_file
from tests.conftest import small_config
from tests.training.conftest import one_thread, recipe, train

STEP4, STEP8 = "step-0000004", "step-0000008"


@pytest.fixture(scope="module")
def stopped(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "run"
    with one_thread():
        train(workspace, out, stop_after_steps=8)
    return out


@pytest.fixture
def run_copy(stopped, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    return out


def test_checkpoints_are_readable_by_all(stopped):
    # As save_pretrained's files would be under the same umask; safetensors (0.8) itself writes 0600.
    mask = os.umask(0)
    os.umask(mask)
    paths = [stopped, *stopped.rglob("*")]
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~mask}
    assert not wrong


def _digests(out):
    return {p.relative_to(out).as_posix(): hash_file(p).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}


def _refusal(workspace, out, *overrides) -> str:
    """Resuming is refused with a CheckpointError (a ValueError: one line on the command line); nothing changes."""
    before = _digests(out / "checkpoints")
    with pytest.raises(CheckpointError) as err:
        pretrain(recipe(workspace, out, *overrides))
    assert _digests(out / "checkpoints") == before
    message = str(err.value)
    assert "delete" not in message.lower()  # the way out never destroys anything
    return message


def _resumes_from(workspace, out, *overrides) -> int:
    with setup(recipe(workspace, out, *overrides)) as run:
        return run.start


@pytest.mark.parametrize("damage", ["missing", "garbage", "names a removed checkpoint", "names an older one"])
def test_resume_finds_the_newest_checkpoint_when_latest_is_missing_or_damaged(workspace, run_copy, damage, capsys):
    pointer = run_copy / "checkpoints" / "latest"
    if damage == "missing":  # e.g. lost to a full disk when it was first written
        pointer.unlink()
    elif damage == "garbage":
        pointer.write_bytes(b"\x00\xff{not json")
    else:
        pointer.write_text(json.dumps({"checkpoint": "step-0000012" if "removed" in damage else STEP4}))
    assert _resumes_from(workspace, run_copy) == 8  # never silently from step 0
    note = capsys.readouterr().out
    assert f"{pointer} is" in note or f"{pointer} names" in note
    assert f"resuming from the newest checkpoint, {STEP8}" in note


def test_a_pointer_without_checkpoints_is_refused(workspace, run_copy):
    for ckpt in (STEP4, STEP8):
        shutil.rmtree(run_copy / "checkpoints" / ckpt)
    assert "holds no checkpoint folder" in _refusal(workspace, run_copy)


def _flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _edit_step(path):
    state = json.loads(path.read_text())
    state["step"] = 6
    path.write_text(json.dumps(state))


DAMAGES = {  # file (in step-0000008) -> (damage, what the message says)
    "model.safetensors": (_flip_a_bit, "model.safetensors does not match its SHA-256"),
    "trainer_state.json": (_edit_step, "trainer_state.json does not match its SHA-256"),
    "state/shard-00001-model-00001-of-00001.safetensors": (lambda p: p.unlink(), "is missing (listed in"),
    "optimizer.json": (lambda p: p.unlink(), "optimizer.json is missing"),
    "rng-rank0.safetensors": (lambda p: p.unlink(), "rng-rank0.safetensors is missing"),
    "buffers-rank0.safetensors": (lambda p: p.unlink(), "buffers-rank0.safetensors is missing"),
    MANIFEST: (lambda p: p.unlink(), "has no manifest.json, so it cannot be verified"),
    "state/extra.safetensors": (lambda p: save_file({"x": torch.zeros(1)}, str(p)), "does not list"),
}


@pytest.mark.parametrize("file", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_way_out(workspace, run_copy, file):
    damage, says = DAMAGES[file]
    ckpt = run_copy / "checkpoints" / STEP8
    damage(ckpt / file)
    message = _refusal(workspace, run_copy)
    assert says in message and str(ckpt) in message
    if file != "state/extra.safetensors":
        assert f"to resume from the previous checkpoint, {STEP4}" in message
    shutil.move(ckpt, run_copy / "damaged")  # the way out it names
    assert _resumes_from(workspace, run_copy) == 4


def _rewrite(ckpt, edit):
    """Edit trainer_state.json and re-sign the manifest (a checkpoint another version could have written)."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    edit(state)
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    manifest = json.loads((ckpt / MANIFEST).read_text())
    write_manifest(ckpt, manifest["step"], state.get("world_size", 1))


def test_a_consistent_but_wrong_checkpoint_is_refused(workspace, run_copy):
    ckpt = run_copy / "checkpoints" / STEP8
    assert "other data or batch settings (global_batch_size: checkpoint 4, this run 2" in \
        _refusal(workspace, run_copy, "train.batch_size=2")
    _rewrite(ckpt, lambda s: s["data"].update(offset=s["data"]["offset"] + 1))
    assert "trainer_state.json is inconsistent: step 8 implies data position" in _refusal(workspace, run_copy)
    _rewrite(ckpt, lambda s: s.pop("data"))
    assert "trainer_state.json lacks ['data']" in _refusal(workspace, run_copy)
    shutil.rmtree(ckpt)
    (run_copy / "checkpoints" / STEP4).rename(run_copy / "checkpoints" / "step-0000006")
    assert "its folder name says step 6, manifest.json step 4" in _refusal(workspace, run_copy)


def test_resuming_beyond_train_steps_is_refused_and_overwrites_nothing(workspace, run_copy):
    assert f"{STEP8} is at step 8, beyond train.steps=4" in _refusal(workspace, run_copy, "train.steps=4")
    assert verify_checkpoint(run_copy / "checkpoints" / STEP4)["step"] == 4


def test_a_changed_process_count_is_refused_unless_reseeding_is_asked_for(workspace, run_copy, capsys):
    ckpt = run_copy / "checkpoints" / STEP8
    for name in ("rng-rank0.safetensors", "rng-rank0.json", "buffers-rank0.safetensors"):
        shutil.copy(ckpt / name, ckpt / name.replace("rank0", "rank1"))
    _rewrite(ckpt, lambda s: s.update(world_size=2))  # as if written by 2 processes of 2 blocks each
    message = _refusal(workspace, run_copy)
    assert "written by 2 process(es), this run has 1" in message and "train.resume_rng=reseed" in message
    assert _resumes_from(workspace, run_copy, "train.resume_rng=reseed") == 8
    assert "random states reseeded" in capsys.readouterr().out


def test_resume_never_an_older_checkpoint_or_a_model_folder_are_refused(workspace, run_copy, tmp_path):
    assert "train.resume=never, but" in _refusal(workspace, run_copy, "train.resume=never")
    older = run_copy / "checkpoints" / STEP4
    assert f"checkpoints after step 4 (['{STEP8}'])" in _refusal(workspace, run_copy, f"train.resume={older}")
    other = shutil.copytree(run_copy, tmp_path / "other")  # another run's folder: its checkpoints are not these
    assert "holds another run's checkpoints (up to step-0000008): resuming" in \
        _refusal(workspace, other, f"train.resume={older}")
    model = workspace / "teacher"  # a user's model is not a checkpoint: refused, and never called disposable
    before = _digests(model)
    message = _refusal(workspace, tmp_path / "new", f"train.resume={model}")
    assert f"{model} is not a training checkpoint" in message and _digests(model) == before


def test_non_finite_weights_or_optimizer_state_are_never_saved(workspace, tmp_path):
    out = tmp_path / "run"
    with setup(recipe(workspace, out)) as run:
        fit(run, stop_after_steps=4)  # checkpoint step-0000004
        weight = run.distiller.student.model.groups[1].mlp.lora_B1
        with torch.no_grad():
            saved = weight[0, 0, 0].item()
            weight[0, 0, 0] = float("nan")
        with pytest.raises(FloatingPointError, match=rf"step 5 \(in \['student.model.groups.1.mlp.lora_B1'\]\).*"
                                                     rf"The last checkpoint is .*{STEP4}"):
            save(run, 5)
        with torch.no_grad():
            weight[0, 0, 0] = saved
        moments = run.optimizer.optimizer.state[weight]["exp_avg_sq"]
        moments.view(-1)[0] = float("inf")
        with pytest.raises(FloatingPointError, match=r"lora_B1\.exp_avg_sq"):
            save(run, 5)
    assert latest_checkpoint(out).name == STEP4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", STEP4]  # nothing half-written


def test_a_nan_forward_in_training_leaves_the_routing_average_finite():
    from modernalbert import ModernAlbertForMaskedLM

    model = ModernAlbertForMaskedLM(small_config()).train()
    ids = torch.randint(5, 100, (2, 12))
    model(input_ids=ids)
    mol = next(m for m in model.modules() if hasattr(m, "routing_ema"))
    before = (mol.routing_ema.clone(), mol.routing_ema_updates.clone())
    with torch.no_grad():
        model.model.embeddings.tok_embeddings.weight.fill_(float("nan"))
    model(input_ids=ids)  # the router's probabilities are NaN: the moving average must not take them in
    assert torch.equal(mol.routing_ema, before[0]) and torch.equal(mol.routing_ema_updates, before[1])
    assert torch.isfinite(mol.routing_ema).all()


def test_checkpoint_weights_load_as_a_model(stopped):
    from modernalbert import ModernAlbertForMaskedLM

    ckpt = stopped / "checkpoints" / STEP8
    model = ModernAlbertForMaskedLM.from_pretrained(ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
