"""Model invariants: sharing, parameter counts, heads, attention paths, checkpointing, bad input, learning."""

import pytest
import torch

from modernalbert import (
    ModernAlbertConfig,
    ModernAlbertForMaskedLM,
    ModernAlbertForMultipleChoice,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
    count_parameters,
)
from tests.conftest import padded_batch, randomize_adapters, small_config

HEADS = [
    ModernAlbertModel,
    ModernAlbertForMaskedLM,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForMultipleChoice,
]


# ------------------------------------------------------------------------------------------- sharing, counts


def test_layers_of_a_group_run_the_same_parameter_objects():
    model = ModernAlbertModel(small_config(num_hidden_layers=6, group_depth=3, mol_groups=[1]))
    calls = []
    for block in model.groups:
        block.register_forward_hook(lambda mod, inp, out, calls=calls: calls.append(mod))
    ids, mask = padded_batch(lengths=(5, 3))
    model(ids, attention_mask=mask)
    assert len(calls) == 6
    assert calls[0] is calls[1] is calls[2] is model.groups[0]
    assert calls[3] is calls[4] is calls[5] is model.groups[1]
    assert calls[0].attn.Wqkv.weight is model.groups[0].attn.Wqkv.weight


def test_state_dict_holds_unique_parameters_only():
    model = ModernAlbertForMaskedLM(small_config(num_hidden_layers=8, group_depth=4))
    keys = list(model.state_dict())
    assert sorted({k.split(".")[2] for k in keys if k.startswith("model.groups.")}) == ["0", "1"]
    n_params = sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once
    assert count_parameters(model).unique == n_params
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight
    assert model.unembed.weight is model.model.embeddings.proj.weight


def closed_form_unique(cfg: ModernAlbertConfig) -> int:
    V, e, d, f, E, r, G = (cfg.vocab_size, cfg.embedding_size, cfg.hidden_size, cfg.intermediate_size,
                           cfg.num_experts, cfg.lora_rank, cfg.group_depth)
    emb = V * (e or d) + (e * d if e else 0) + d
    lora = r * d + 2 * f * r + r * f + d * r
    variant = {"glu": 0, "mol": E * lora + E * d, "rrt": G * lora, "moa": E * 2 * r * d + E * d}
    blocks = 0
    for g, v in enumerate(cfg.ffn_variants):
        attn_norm = d if (g > 0 or G > 1) else 0
        blocks += 4 * d * d + attn_norm + d + 3 * d * f + variant[v]
    return emb + blocks + d


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"embedding_size": None, "group_depth": 1, "mol_groups": []},
        {"ffn_variants": ["rrt", "moa"]},
        {"num_hidden_layers": 8, "group_depth": 1, "mol_groups": [2, 5], "num_experts": 3, "num_experts_per_tok": 1},
    ],
)
def test_unique_parameter_count_matches_closed_form(overrides):
    cfg = small_config(**overrides)
    model = ModernAlbertModel(cfg)
    count = count_parameters(model)
    assert count.unique == closed_form_unique(cfg)
    d = cfg.hidden_size
    mlm = count_parameters(ModernAlbertForMaskedLM(cfg)).unique
    assert mlm == count.unique + d * d + d + cfg.vocab_size  # head dense + norm + decoder bias (weights tied)


def test_effective_count_unrolls_the_recursion():
    cfg = small_config(num_hidden_layers=6, group_depth=3, ffn_variants=["rrt", "mol"])
    count = count_parameters(ModernAlbertModel(cfg))
    rrt = count.per_group[0]
    rrt_lora = 3 * (cfg.lora_rank * (2 * cfg.hidden_size + 3 * cfg.intermediate_size))
    assert count.effective == count.unique + 2 * (rrt - rrt_lora) + 2 * count.per_group[1]


# -------------------------------------------------------------------------------------------------- outputs


def test_hidden_states_have_one_entry_per_effective_layer():
    model = ModernAlbertModel(small_config(num_hidden_layers=6, group_depth=3)).eval()
    ids, mask = padded_batch(lengths=(5, 3))
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == 7
    assert out.expert_usage.shape == (3, 4)  # MoL group 1 runs at 3 effective layers
    final = model.final_norm(out.hidden_states[-1][mask.bool()])
    torch.testing.assert_close(final, out.last_hidden_state[mask.bool()])


@pytest.mark.parametrize("cls", HEADS)
def test_every_head_runs_with_labels_and_adds_router_losses(cls):
    cfg = small_config(num_labels=3)
    model = cls(cfg)
    ids, mask = padded_batch(lengths=(6, 4))
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if cls is ModernAlbertForMultipleChoice:
        kwargs = {"input_ids": ids[None].repeat(2, 1, 1), "attention_mask": mask[None].repeat(2, 1, 1),
                  "labels": torch.tensor([0, 1])}
    elif cls is ModernAlbertForMaskedLM:
        kwargs["labels"] = ids.masked_fill(mask == 0, -100)
    elif cls is ModernAlbertForSequenceClassification:
        kwargs["labels"] = torch.tensor([0, 2])
    elif cls is ModernAlbertForTokenClassification:
        kwargs["labels"] = torch.randint(0, 3, ids.shape)
    elif cls is ModernAlbertForQuestionAnswering:
        kwargs.update(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 3]))
    out = model(**kwargs)
    assert out.router_aux_loss is not None and out.expert_usage is not None
    if cls is not ModernAlbertModel:
        assert out.loss.isfinite()
        out.loss.backward()
        assert model.model.groups[1].mlp.router.weight.grad is not None  # router losses reach the router


def test_loss_includes_weighted_router_losses():
    cfg = small_config(router_aux_loss_coef=0.5, router_z_loss_coef=0.25, num_labels=2)
    model = ModernAlbertForSequenceClassification(cfg).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    ce = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1]))
    torch.testing.assert_close(out.loss, ce + 0.5 * out.router_aux_loss + 0.25 * out.router_z_loss)


def test_sparse_prediction_scores_only_labelled_positions():
    model = ModernAlbertForMaskedLM(small_config()).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1] = 7, 9
    dense = model(ids, attention_mask=mask, labels=labels)
    model.config.sparse_prediction = True
    sparse = model(ids, attention_mask=mask, labels=labels)
    assert sparse.logits.shape == (2, 512)
    torch.testing.assert_close(sparse.logits, dense.logits[labels != -100])
    torch.testing.assert_close(sparse.loss, dense.loss)


def test_inputs_embeds_equal_input_ids():
    model = ModernAlbertModel(small_config()).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    embeds = model.embeddings.tok_embeddings(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state,
                               model(ids, attention_mask=mask).last_hidden_state)


def test_padding_side_and_mask_free_batch():
    model = ModernAlbertModel(small_config()).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    alone = model(ids[1:, :4]).last_hidden_state  # no mask, no padding: the fast path
    together = model(ids, attention_mask=mask).last_hidden_state[1, :4]
    torch.testing.assert_close(together, alone[0], rtol=1e-5, atol=1e-5)
    # Left padding with matching position ids gives the same real-token outputs.
    left = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[1:, :4]], 1)
    lmask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    pos = torch.tensor([[0, 0, 0, 1, 2, 3]])
    out = model(left, attention_mask=lmask, position_ids=pos).last_hidden_state[0, 2:]
    torch.testing.assert_close(out, alone[0], rtol=1e-5, atol=1e-5)


def test_eager_matches_sdpa_and_returns_probabilities():
    cfg = small_config()
    sdpa = ModernAlbertModel(cfg).eval()
    randomize_adapters(sdpa)
    eager = ModernAlbertModel(small_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    ids, mask = padded_batch(lengths=(6, 4, 2))
    a = sdpa(ids, attention_mask=mask).last_hidden_state
    b = eager(ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(a, b.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert len(b.attentions) == cfg.num_hidden_layers
    probs = b.attentions[0]  # (B, h, L, L)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert probs[1, :, :4, 4:].abs().max() == 0  # real queries never attend to pads
    with pytest.raises(ValueError, match="eager"):
        sdpa(ids, attention_mask=mask, output_attentions=True)


def test_flash_attention_without_gpu_is_a_clear_error():
    with pytest.raises((ImportError, ValueError), match=r"flash_attention_2.*sdpa"):
        model = ModernAlbertModel(small_config(attn_implementation="flash_attention_2"))
        model(torch.tensor([[1, 2, 3]]))  # with flash-attn installed: CPU tensors are refused at forward


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    cfg = small_config()
    ref = ModernAlbertForMaskedLM(cfg)
    randomize_adapters(ref)
    ckpt = ModernAlbertForMaskedLM(cfg)
    ckpt.load_state_dict(ref.state_dict())
    ckpt.activation_checkpointing_enable()
    assert ckpt.model.groups[0].gradient_checkpointing
    ids, mask = padded_batch(lengths=(6, 4))
    labels = ids.masked_fill(mask == 0, -100)
    ref(ids, attention_mask=mask, labels=labels).loss.backward()
    ckpt.train()(ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ModernAlbertForSequenceClassification(small_config()).eval()


def test_token_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match="vocab_size=512"):
        model(torch.tensor([[1, 512, 3]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[1, -1, 3]]))


def test_sequences_longer_than_the_maximum(model):
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        model(torch.ones(1, 257, dtype=torch.long))


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_empty_batch(model, shape):
    with pytest.raises(ValueError, match="Empty batch"):
        model(torch.ones(shape, dtype=torch.long))


def test_malformed_inputs(model):
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=torch.zeros(2, 4, 32))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="integer token ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="shape"):
        model(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="width 32"):
        model(inputs_embeds=torch.zeros(2, 4, 64))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_all_pad_rows_give_finite_results(pooling):
    model = ModernAlbertForSequenceClassification(small_config(classifier_pooling=pooling)).eval()
    ids, mask = padded_batch(lengths=(5, 3))
    mask[1] = 0  # a row with no real token at all
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    assert out.logits.isfinite().all() and out.loss.isfinite() and out.router_aux_loss.isfinite()
    base = model.model(ids, attention_mask=torch.zeros_like(mask))  # nothing real in the whole batch
    assert torch.count_nonzero(base.last_hidden_state) == 0 and base.router_aux_loss.isfinite()


# ------------------------------------------------------------------------------------------------- learning


def test_small_masked_lm_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(small_config(mol_mixing="weight"))
    ids, mask = padded_batch(lengths=(24, 20, 24, 16), seed=1)
    labels = ids.masked_fill(mask == 0, -100)
    inputs = ids.clone()
    inputs[:, 1::3] = 3  # mask every third token
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = model(inputs, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])
