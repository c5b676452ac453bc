"""bf16 end to end on CPU: `pretrain` tracks its fp32 run; transformers' Trainer(bf16=True) trains a head.

Loss-curve tolerance: every step's total loss of the bf16-autocast run is within 1 % (about 2.5 bf16 unit
roundoffs, u = 2^-8) of the fp32 run's, while the curve itself falls by more than 20 %. Per step, the bf16 forward
perturbs a loss averaged over hundreds of tokens by well under u (measured <= 1.4e-3 relative over 20 steps); the
two runs' parameters drift apart only through those perturbations of the updates.
"""

import random

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

from modernalbert import ModernAlbertForSequenceClassification
from modernalbert.training.recipe import Recipe
from modernalbert.training.trainer import pretrain
from tests.conftest import WORDS, make_tokenizer, small_config

STEPS = 20


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> dict:
    """A tiny KD recipe: the `test` preset student, a 2-layer BERT MLM teacher (logit and hidden KD), text files."""
    root = tmp_path_factory.mktemp("precision")
    tok = make_tokenizer()
    tok.save_pretrained(root / "teacher")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=96, max_position_embeddings=128, pad_token_id=0)
                    ).save_pretrained(root / "teacher")
    rng = random.Random(0)
    (root / "corpus").mkdir()
    for i in range(20):
        (root / "corpus" / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 160))))
    return {
        "model": {"preset": "test", "overrides": {"mol_mixing": "output", "max_position_embeddings": 128}},
        "teacher": {"name": str(root / "teacher"), "init": False},
        "data": {"corpus": {"sources": [{"files": str(root / "corpus" / "*.txt")}], "held_out": 0.1},
                 "block_size": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 2, "decay_steps": 2},
        "train": {"steps": STEPS, "batch_size": 4, "eval_every": STEPS, "save_every": 1000, "log_every": 5,
                  "eval_batches": 1, "keep_freed_memory": False},
        "output_dir": str(root / "runs"),
    }


def _run(recipe: dict, precision: str, out) -> tuple[list[dict], dict]:
    steps: list[dict] = []
    values = {**recipe, "output_dir": str(out), "train": {**recipe["train"], "precision": precision}}
    result = pretrain(Recipe.from_dict(values), on_step_end=lambda step, losses: steps.append(losses))
    return steps, result.last_eval


def test_bf16_pretraining_tracks_fp32(tiny_recipe, tmp_path):
    fp32, eval32 = _run(tiny_recipe, "fp32", tmp_path / "fp32")
    bf16, eval16 = _run(tiny_recipe, "bf16", tmp_path / "bf16")  # in the same process, after an fp32 run

    def total(parts: dict) -> float:
        return parts["mlm"] + 3 * parts["hidden"] + 5 * parts["logits"]

    assert len(fp32) == len(bf16) == STEPS
    curve32, curve16 = [total(p) for p in fp32], [total(p) for p in bf16]
    assert curve32[-1] < 0.8 * curve32[0]  # the curve moves far more than the tolerance
    for a, b in zip(curve32, curve16, strict=True):
        assert abs(b - a) <= 1e-2 * a
    held32, held16 = ({k.removeprefix("eval_"): v for k, v in e.items()} for e in (eval32, eval16))
    assert abs(total(held16) - total(held32)) <= 1e-2 * total(held32)  # the held-out loss too


def test_transformers_trainer_trains_a_head_in_bf16(tmp_path):
    torch.manual_seed(0)
    model = ModernAlbertForSequenceClassification(small_config(num_labels=2))
    rng = random.Random(0)
    data = []
    for _ in range(32):
        ids = [rng.randrange(8, 512) for _ in range(rng.randint(5, 12))]
        label = rng.random() < 0.5
        if label:
            ids[rng.randrange(len(ids))] = 7
        data.append({"input_ids": [1, *ids, 2], "labels": int(label)})
    seen = []
    hook = model.classifier.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, max_steps=6,
                             per_device_train_batch_size=8, learning_rate=1e-3, report_to=[], logging_steps=1,
                             save_strategy="no", disable_tqdm=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pad = lambda feats: {  # noqa: E731 - right padding with the attention mask
        "input_ids": torch.tensor([f["input_ids"] + [0] * (16 - len(f["input_ids"])) for f in feats]),
        "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (16 - len(f["input_ids"])) for f in feats]),
        "labels": torch.tensor([f["labels"] for f in feats]),
    }
    result = Trainer(model=model, args=args, train_dataset=data, data_collator=pad).train()
    hook.remove()
    assert result.global_step == 6 and torch.isfinite(torch.tensor(result.training_loss))
    assert set(seen) == {torch.bfloat16}  # autocast was on for every forward
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights stay fp32
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert "model.groups.1.mlp.router.weight" in moved and "model.groups.1.mlp.lora_A1" in moved
