"""The distillation objective: each loss part, its normalisation across processes and micro-batches, errors."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, BertModel

from modernalbert import ModernAlbertForMaskedLM
from modernalbert.distill.losses import DistillConfig, Distiller, uniform_layer_map
from tests.conftest import small_config


def _teacher(cls=BertModel, **kw):
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=512, hidden_size=kw.pop("hidden_size", 48), num_hidden_layers=3,
                     num_attention_heads=4, intermediate_size=96, max_position_embeddings=64, pad_token_id=0, **kw)
    return cls(cfg).eval()


def _batch(B=4, L=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 512, (B, L), generator=g)
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(B, L, generator=g) < 0.3
    labels[chosen] = ids[chosen]
    inputs = ids.masked_fill(chosen, 3)
    return inputs, torch.ones_like(ids), labels


def test_uniform_layer_map_aligns_the_last_layers():
    assert uniform_layer_map(4, 2) == {2: 1, 4: 2}
    assert uniform_layer_map(3, 6) == {1: 2, 2: 4, 3: 6}
    assert uniform_layer_map(4, 4) == {1: 1, 2: 2, 3: 3, 4: 4}


def test_parts_follow_their_definitions():
    student = ModernAlbertForMaskedLM(small_config(sparse_prediction=True))
    teacher = _teacher(BertForMaskedLM)
    d = Distiller(student, teacher, DistillConfig(hidden_loss="mse", temperature=2.0))
    assert set(d.projections) == {"1", "3", "4"}  # 4 -> 3 layers, widths 64 -> 48: one projection per pair
    ids, mask, labels = _batch()
    out = d(ids, mask, labels)
    sel = labels != -100
    s = student(ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    t = teacher(ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(out.parts["mlm"], F.cross_entropy(s.logits, labels[sel]))
    hidden = torch.stack([F.mse_loss(d.projections[str(i)](s.hidden_states[i].flatten(0, 1)),
                                     t.hidden_states[j].flatten(0, 1)) for i, j in d.layer_map.items()]).mean()
    torch.testing.assert_close(out.parts["hidden"], hidden)
    kl = F.kl_div(F.log_softmax(s.logits / 2, -1), F.log_softmax(t.logits[sel] / 2, -1), log_target=True,
                  reduction="batchmean") * 4
    torch.testing.assert_close(out.parts["logits"], kl)
    cfg = student.config
    expected = (out.parts["mlm"] + 3 * out.parts["hidden"] + 5 * out.parts["logits"]
                + cfg.router_aux_loss_coef * out.parts["router_aux"] + cfg.router_z_loss_coef * out.parts["router_z"])
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in d.projections.parameters())
    assert all(p.grad is None for p in teacher.parameters())  # frozen


def test_global_normalisation_makes_shards_sum_to_the_whole():
    """Two halves with masked_per_rank = total / 2 average to the single-batch gradient, whatever their counts."""
    torch.manual_seed(0)
    student = ModernAlbertForMaskedLM(small_config(sparse_prediction=True, router_aux_loss_coef=0.0,
                                                   router_z_loss_coef=0.0))
    d = Distiller(student, _teacher(), DistillConfig())
    ids, mask, labels = _batch(B=4)
    whole = torch.autograd.grad(d(ids, mask, labels).loss, list(student.parameters()), allow_unused=True)
    total = (labels != -100).sum()
    halves = [torch.autograd.grad(d(ids[i:i + 2], mask[i:i + 2], labels[i:i + 2], masked_per_rank=total / 2).loss,
                                  list(student.parameters()), allow_unused=True) for i in (0, 2)]
    for w, a, b in zip(whole, *halves):
        if w is not None:
            torch.testing.assert_close((a + b) / 2, w, rtol=1e-5, atol=1e-7)
    # micro-batches: summed (not averaged) gradients of two micro steps equal the whole step
    micro = [torch.autograd.grad(d(ids[i:i + 2], mask[i:i + 2], labels[i:i + 2], masked_per_rank=total,
                                   micro_batches=2).loss, list(student.parameters()), allow_unused=True)
             for i in (0, 2)]
    for w, a, b in zip(whole, *micro):
        if w is not None:
            torch.testing.assert_close(a + b, w, rtol=1e-5, atol=1e-7)


def test_attention_kl_needs_eager_attention_and_is_zero_against_itself():
    student = ModernAlbertForMaskedLM(small_config())
    with pytest.raises(ValueError, match="eager"):
        Distiller(student, _teacher(), DistillConfig(attention_weight=3.0))
    eager = ModernAlbertForMaskedLM(small_config(attn_implementation="eager", sparse_prediction=True))
    teacher = _teacher(attn_implementation="eager")
    d = Distiller(eager, teacher, DistillConfig(attention_weight=3.0, hidden_weight=0.0))
    ids, mask, labels = _batch()
    out = d(ids, mask, labels)
    assert out.parts["attention"] > 0 and "hidden" not in out.parts
    out.loss.backward()
    assert eager.model.groups[0].attn.Wqkv.weight.grad.abs().sum() > 0


def test_bad_configuration_is_refused():
    student = ModernAlbertForMaskedLM(small_config())
    with pytest.raises(ValueError, match="vocabulary"):
        Distiller(student, BertModel(BertConfig(vocab_size=600, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32)))
    with pytest.raises(ValueError, match="out of range"):
        Distiller(student, _teacher(), DistillConfig(layer_map={5: 1}))
    with pytest.raises(ValueError, match="hidden_loss"):
        DistillConfig(hidden_loss="kl")
    with pytest.raises(ValueError, match="Unknown distill option"):
        DistillConfig.from_dict({"hiden_weight": 1})
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0)


def test_a_student_initialised_from_modernbert_has_no_hidden_state_loss():
    """A group_depth=1 student with the teacher's depth, initialised from a ModernBERT teacher (global attention in
    every layer: the student's pattern), reproduces every teacher hidden state, the last one (after the final
    norm, transformers' convention on both sides) included: the hidden-state loss compares like with like."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from modernalbert import ModernAlbertConfig, load_modernbert_weights

    ids_cfg = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    torch.manual_seed(0)
    teacher = ModernBertForMaskedLM(ModernBertConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        global_attn_every_n_layers=1, **ids_cfg)).eval()
    student = ModernAlbertForMaskedLM(ModernAlbertConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        group_depth=1, embedding_size=None, mask_token_id=3, **ids_cfg))
    assert load_modernbert_weights(student, teacher).fresh == []
    d = Distiller(student.eval(), teacher, DistillConfig(hidden_loss="mse"))
    assert d.layer_map == {1: 1, 2: 2, 3: 3}  # the last pair is each model's final, normed state
    # fp32 rounding only; with the student's last state taken before its final norm it is ~1e-4 here
    assert d(*_batch()).parts["hidden"] < 1e-8
