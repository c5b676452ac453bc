"""transformers' Trainer with every head: gradient accumulation equals the large batch, checkpointing, evaluation
with the tutorial's ``compute_metrics``, and the router losses reaching the optimiser.

Each case runs one optimiser step (SGD, constant learning rate, no clipping) on the same four examples, once as a
batch of 4 and once as 2 micro-batches of 2 (``gradient_accumulation_steps=2``); the parameter updates must agree
to 1e-5 of their size. HF ModernBERT runs in the same harness as a reference for the harness itself.
"""

import copy

import numpy as np
import pytest
import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM, Trainer, TrainingArguments

from modernalbert import (
    ModernAlbertConfig,
    ModernAlbertForMaskedLM,
    ModernAlbertForMultipleChoice,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
)

HEADS = [
    ModernAlbertForMaskedLM,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForMultipleChoice,
]
LENGTHS = (7, 3, 5, 6)  # four examples, padded differently in the large batch and in each micro-batch


@pytest.fixture(autouse=True)
def _no_collection_after_training(monkeypatch):
    # Trainer ends every train() with accelerate's free_memory(), a gc.collect() that takes ~0.4 s in a test process
    # full of objects; these tests run ~30 one-step trainings. Collection changes nothing they check.
    monkeypatch.setattr("accelerate.utils.memory.gc.collect", lambda *args: 0)


def _config(**overrides) -> ModernAlbertConfig:
    base = dict(vocab_size=64, hidden_size=32, embedding_size=16, num_attention_heads=4, intermediate_size=40,
                num_hidden_layers=4, group_depth=2, mol_groups=[1], num_experts=4, lora_rank=4, lora_alpha=8.0,
                max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                sep_token_id=2, mask_token_id=3, num_labels=3)
    return ModernAlbertConfig(**{**base, **overrides})


def _model(cls, **overrides):
    torch.manual_seed(0)
    model = cls(_config(**overrides))
    with torch.no_grad():  # experts that act on the outputs (their B start at zero)
        for name, p in model.named_parameters():
            if name.endswith(("lora_B1", "lora_B2")):
                p.normal_(0.0, 0.05)
    return model


def _examples(cls, lengths=LENGTHS) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n in lengths:
        ids = torch.randint(4, 64, (n,), generator=g)
        ex = {"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.long)}
        if cls is ModernAlbertForMultipleChoice:  # two choices of one length: (C, L) per example
            ex = {"input_ids": torch.stack([ids, ids.roll(1)]), "attention_mask": torch.ones(2, n, dtype=torch.long),
                  "labels": torch.randint(0, 2, (), generator=g)}
        elif cls is ModernAlbertForQuestionAnswering:
            ex["start_positions"] = torch.randint(0, n, (), generator=g)
            ex["end_positions"] = torch.randint(0, n, (), generator=g)
        elif cls is ModernAlbertForSequenceClassification:
            ex["labels"] = torch.randint(0, 3, (), generator=g)
        else:  # token-level targets, a different number per example (what num_items_in_batch must account for)
            labels = torch.randint(0, 3, (n,), generator=g) if cls is ModernAlbertForTokenClassification else ids
            ex["labels"] = labels.masked_fill(torch.rand(n, generator=g) < 0.4, -100)
        out.append(ex)
    return out


def _collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad the last dimension of every sequence field (labels with -100); stack the rest."""
    batch = {}
    for key in examples[0]:
        values = [ex[key] for ex in examples]
        if values[0].dim() == 0:
            batch[key] = torch.stack(values)
            continue
        width = max(v.shape[-1] for v in values)
        fill = -100 if key == "labels" else 0
        batch[key] = torch.stack([torch.nn.functional.pad(v, (0, width - v.shape[-1]), value=fill) for v in values])
    return batch


def _step(model, examples, tmp_path, batch_size, accumulation=1, **args) -> dict[str, torch.Tensor]:
    """One optimiser step with transformers' Trainer; returns every parameter's update."""
    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_steps=1, learning_rate=0.5, lr_scheduler_type="constant", optim="sgd", weight_decay=0.0,
        max_grad_norm=0.0, train_sampling_strategy="sequential", report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, **args)
    Trainer(model=model, args=arguments, train_dataset=examples, data_collator=_collate).train()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def _assert_same_updates(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    scale = max(float(u.abs().max()) for u in b.values())
    assert scale > 0
    worst = max(float((a[n] - b[n]).abs().max()) for n in b)
    assert worst <= 1e-5 * scale, f"updates differ by {worst / scale:.2e} of their size"


@pytest.mark.parametrize("cls", HEADS)
def test_gradient_accumulation_equals_the_large_batch(cls, tmp_path):
    """Router losses off: the task losses alone, normalised by Trainer's ``num_items_in_batch``."""
    model = _model(cls, router_aux_loss_coef=0.0, router_z_loss_coef=0.0)
    examples = _examples(cls)
    large = _step(model, examples, tmp_path, batch_size=4)
    _assert_same_updates(_step(model, examples, tmp_path, batch_size=2, accumulation=2), large)
    # Activation checkpointing through Trainer (non-reentrant, transformers' default) changes nothing.
    _assert_same_updates(_step(model, examples, tmp_path, batch_size=4, activation_checkpointing=True), large)


@pytest.mark.parametrize("cls", HEADS)
def test_router_losses_reach_the_optimiser_with_their_weight_under_accumulation(cls, tmp_path):
    """The same two examples twice: the large batch and each micro-batch then have the same routing statistics,
    so accumulation equals the large batch exactly only if each micro-batch's router losses weigh its share (1/2)
    of the accumulated batch. The experts' B start at zero, so the router's update comes from its losses alone;
    with reentrant checkpointing too."""
    model = cls(_config(router_aux_loss_coef=0.5, router_z_loss_coef=0.1))
    examples = _examples(cls, lengths=(7, 3))
    examples = examples + examples
    large = _step(model, examples, tmp_path, batch_size=4)
    router = [u for n, u in large.items() if "router" in n]
    assert router and all(u.abs().max() > 0 for u in router)
    _assert_same_updates(_step(model, examples, tmp_path, batch_size=2, accumulation=2), large)
    reentrant = {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": True}}
    _assert_same_updates(_step(model, examples, tmp_path, batch_size=4, **reentrant), large)


def test_hf_modernbert_in_the_same_harness(tmp_path):
    """The reference the harness is checked against: HF ModernBERT's MaskedLM also gives equal updates."""
    torch.manual_seed(0)
    config = ModernBertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=40,
                              num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                              sep_token_id=2, global_attn_every_n_layers=1)
    model = ModernBertForMaskedLM(config)
    examples = _examples(ModernAlbertForMaskedLM)
    _assert_same_updates(_step(model, examples, tmp_path, batch_size=2, accumulation=2),
                         _step(model, examples, tmp_path, batch_size=4))


@pytest.mark.parametrize("router_outputs", [False, True])
@pytest.mark.parametrize("cls", HEADS)
def test_evaluation_with_compute_metrics(cls, router_outputs, tmp_path):
    """``compute_metrics`` receives each head's logits alone (start and end logits for QA), also when the config asks
    for router outputs (``keys_to_ignore_at_inference``); for classification, transformers' tutorial metric."""
    model = _model(cls, output_router_logits=router_outputs)
    examples = _examples(cls)
    seen = {}

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        seen["logits"] = logits
        if cls is ModernAlbertForSequenceClassification:  # the tutorial's
            return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}
        return {}

    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[],
                                  use_cpu=True, disable_tqdm=True)
    metrics = Trainer(model=model, args=arguments, eval_dataset=examples, data_collator=_collate,
                      compute_metrics=compute_metrics).evaluate()
    assert np.isfinite(metrics["eval_loss"])
    logits = seen["logits"]
    if cls is ModernAlbertForQuestionAnswering:
        assert isinstance(logits, tuple) and [a.shape for a in logits] == [(4, 7), (4, 7)]
    else:
        assert isinstance(logits, np.ndarray) and logits.shape[0] == 4
    if cls is ModernAlbertForSequenceClassification:
        assert logits.shape == (4, 3) and 0.0 <= metrics["eval_accuracy"] <= 1.0
