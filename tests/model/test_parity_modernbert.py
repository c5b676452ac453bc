"""Parity with Hugging Face ModernBERT, and the ModernBERT weight loader."""

import pytest
import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertModel

from modernalbert import (
    ModernAlbertConfig,
    ModernAlbertForMaskedLM,
    ModernAlbertModel,
    load_modernbert_weights,
)
from modernalbert.model import modeling
from tests.conftest import padded_batch

VOCAB, D, HEADS, F, DEPTH = 512, 64, 4, 96, 3


def hf_config(**kw) -> ModernBertConfig:
    return ModernBertConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        global_attn_every_n_layers=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2, max_position_embeddings=256, **kw,
    )


def student_config(**kw) -> ModernAlbertConfig:
    base = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_attention_heads=HEADS,
                num_hidden_layers=DEPTH, group_depth=1, embedding_size=None, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, cls_token_id=1, sep_token_id=2, mask_token_id=3, max_position_embeddings=256)
    base.update(kw)
    return ModernAlbertConfig(**base)


def _non_pad(t, mask):
    return t[mask.bool()]


# ============================================================== ModernBERT's default configuration: local layers


def default_teacher_config(**kw) -> ModernBertConfig:
    """``ModernBertConfig`` at its defaults but for the width (small, for speed) and the test vocabulary: 22 layers,
    global attention every third layer and a 128-token window elsewhere, RoPE bases 160,000 / 10,000."""
    return ModernBertConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_attention_heads=HEADS,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, **kw)


def long_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows longer than the window, padded: right-padded rows (300, 170, 1 real tokens), a left-padded one (200) and
    one with pads between its real tokens (transformers counts window distances in padded positions)."""
    lengths = (300, 170, 1, 200, 250)
    ids, mask = padded_batch(VOCAB, lengths=lengths)
    ids[3], mask[3] = ids[3].roll(100), mask[3].roll(100)  # left padding
    mask[4, 100:130] = 0  # a hole
    return ids.masked_fill(mask == 0, 0), mask


def _traced_dispatch(monkeypatch) -> None:
    """The dispatch of a traced graph (ONNX / torch.export): padded global layers, always-masked layout."""
    monkeypatch.setattr(modeling, "_is_exporting", lambda: True)


PATHS = ["sdpa", "sdpa-traced", "eager"]


def _student(cls, attn: str, monkeypatch):
    if attn == "sdpa-traced":
        _traced_dispatch(monkeypatch)
    config = student_config(num_hidden_layers=22, attn_implementation=attn.removesuffix("-traced"),
                            max_position_embeddings=8192)
    return cls(config).eval()


@pytest.mark.parametrize("attn", PATHS)
def test_default_modernbert_hidden_states_are_reproduced_by_every_attention_path(attn, monkeypatch):
    """A G = 1 student loaded from ModernBERT at its default attention pattern takes the teacher's layer types,
    window and RoPE bases, and reproduces every hidden state on real tokens (rows past the window, padded on either
    side or with holes), whichever attention path runs: per-sequence / blocked SDPA, the traced graph's, eager."""
    teacher = ModernBertModel(default_teacher_config()).eval()
    student = _student(ModernAlbertModel, attn, monkeypatch)
    student.config.layer_types = ["full_attention"] * 22  # the student's own pattern is replaced by the teacher's
    report = load_modernbert_weights(student, teacher)
    assert report.fresh == []
    assert student.config.layer_types == teacher.config.layer_types and student.config.local_attention == 128
    assert student.config.rope_parameters == teacher.config.rope_parameters
    assert any("attention pattern from the teacher" in n for n in report.notes)
    ids, mask = long_batch()
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask, output_hidden_states=True)
        out = student(ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == 23
    for h_out, h_ref in zip(out.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(_non_pad(h_out, mask), _non_pad(h_ref, mask), rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn", PATHS)
def test_default_modernbert_mlm_logits_are_reproduced_by_every_attention_path(attn, monkeypatch):
    teacher = ModernBertForMaskedLM(default_teacher_config()).eval()
    with torch.no_grad():
        teacher.decoder.bias.normal_()  # make the bias part of the check
    student = _student(ModernAlbertForMaskedLM, attn, monkeypatch)
    assert load_modernbert_weights(student, teacher).fresh == []
    ids, mask = long_batch()
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).logits
        out = student(ids, attention_mask=mask).logits
    torch.testing.assert_close(_non_pad(out, mask), _non_pad(ref, mask), rtol=0, atol=1e-5)


def test_teacher_pattern_maps_to_another_depth():
    """At another effective depth, ModernBERT's pattern (global every n-th layer) is laid over the student's
    effective layers; a pattern that is not of that form is sampled at floor(i T / L); window and RoPE carry."""
    teacher = ModernBertModel(default_teacher_config(num_hidden_layers=6, local_attention=64)).eval()
    student = ModernAlbertModel(student_config(num_hidden_layers=8, group_depth=2, global_attn_every_n_layers=1))
    report = load_modernbert_weights(student, teacher)
    assert student.config.layer_types == ModernBertConfig(num_hidden_layers=8).layer_types
    assert student.config.sliding_window == 32
    assert "global every 3 layer(s)" in str(report)
    odd = ModernBertConfig(num_hidden_layers=4, layer_types=["full_attention", "full_attention",
                                                             "sliding_attention", "sliding_attention"])
    from modernalbert.model.conversion import teacher_attention_pattern

    fields, _ = teacher_attention_pattern(odd, 8)
    assert fields["layer_types"] == ["full_attention"] * 4 + ["sliding_attention"] * 4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_last_hidden_state_matches_hf_modernbert(attn):
    teacher = ModernBertModel(hf_config(attn_implementation=attn)).eval()
    student = ModernAlbertModel(student_config(attn_implementation=attn)).eval()
    report = load_modernbert_weights(student, teacher)
    assert report.fresh == []
    ids, mask = padded_batch(VOCAB, lengths=(12, 5, 9, 1))
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask, output_hidden_states=True)
        out = student(ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(_non_pad(out.last_hidden_state, mask), _non_pad(ref.last_hidden_state, mask),
                               rtol=0, atol=1e-5)
    # transformers' convention, entry by entry: L + 1 states, the last one being last_hidden_state (after the norm).
    assert len(out.hidden_states) == len(ref.hidden_states) == DEPTH + 1
    for h_out, h_ref in zip(out.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(_non_pad(h_out, mask), _non_pad(h_ref, mask), rtol=0, atol=1e-5)


def test_masked_lm_logits_match_hf_modernbert():
    teacher = ModernBertForMaskedLM(hf_config()).eval()
    with torch.no_grad():
        teacher.decoder.bias.normal_()  # make the bias part of the check
    student = ModernAlbertForMaskedLM(student_config()).eval()
    report = load_modernbert_weights(student, teacher)
    assert report.fresh == [], report
    ids, mask = padded_batch(VOCAB, lengths=(10, 6))
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).logits
        out = student(ids, attention_mask=mask).logits
    torch.testing.assert_close(_non_pad(out, mask), _non_pad(ref, mask), rtol=0, atol=1e-4)


def test_full_rank_factorised_embedding_is_exact():
    """embedding_size = d: the truncated SVD keeps everything, so the factorised student equals the teacher."""
    teacher = ModernBertModel(hf_config()).eval()
    student = ModernAlbertModel(student_config(embedding_size=D)).eval()
    load_modernbert_weights(student, teacher)
    ids, mask = padded_batch(VOCAB, lengths=(8, 3))
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).last_hidden_state
        out = student(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(_non_pad(out, mask), _non_pad(ref, mask), rtol=0, atol=1e-4)


def test_truncated_svd_is_the_best_low_rank_embedding():
    teacher = ModernBertModel(hf_config()).eval()
    student = ModernAlbertModel(student_config(embedding_size=16)).eval()
    report = load_modernbert_weights(student, teacher)
    W = teacher.embeddings.tok_embeddings.weight
    approx = student.embeddings.tok_embeddings.weight @ student.embeddings.proj.weight.T  # (V, d)
    S = torch.linalg.svdvals(W)
    # Eckart-Young: the Frobenius error of the best rank-16 approximation is the norm of the dropped values.
    torch.testing.assert_close((W - approx).norm(), S[16:].norm(), rtol=1e-4, atol=1e-5)
    assert any("energy" in n for n in report.notes)


@pytest.mark.parametrize("assignment", ["pick", "average"])
def test_groups_take_contiguous_teacher_chunks(assignment):
    cfg = hf_config()
    cfg.num_hidden_layers, cfg.layer_types = 4, ["full_attention"] * 4
    teacher = ModernBertModel(cfg).eval()
    student = ModernAlbertModel(student_config(num_hidden_layers=4, group_depth=2, mol_groups=[1])).eval()
    report = load_modernbert_weights(student, teacher, layer_assignment=assignment)
    t = teacher.layers
    for g, chunk in enumerate([[0, 1], [2, 3]]):
        src = chunk[:1] if assignment == "pick" else chunk
        expected = torch.stack([t[i].mlp.Wi.weight for i in src]).mean(0)
        torch.testing.assert_close(student.groups[g].mlp.Wi.weight, expected)
    # Group 0 needs an attention norm at its second position; with "pick" teacher layer 0 has none.
    fresh_or_noted = str(report)
    assert "groups.1.mlp.lora_A1" in fresh_or_noted and "groups.1.mlp.router.weight" in fresh_or_noted
    if assignment == "pick":
        assert torch.equal(student.groups[0].attn_norm.weight, torch.ones(D))
    else:
        torch.testing.assert_close(student.groups[0].attn_norm.weight, t[1].attn_norm.weight)


def test_loads_from_a_saved_checkpoint_folder(tmp_path):
    teacher = ModernBertModel(hf_config()).eval()
    teacher.save_pretrained(tmp_path)
    student = ModernAlbertModel(student_config()).eval()
    load_modernbert_weights(student, str(tmp_path))
    ids, mask = padded_batch(VOCAB, lengths=(6, 4))
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).last_hidden_state
        out = student(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(_non_pad(out, mask), _non_pad(ref, mask), rtol=0, atol=1e-5)


def test_incompatible_teacher_is_refused_with_a_reason():
    teacher = ModernBertModel(hf_config()).eval()
    with pytest.raises(ValueError, match="hidden_size"):
        load_modernbert_weights(ModernAlbertModel(student_config(hidden_size=32, num_attention_heads=4)), teacher)
    with pytest.raises(ValueError, match="layer_assignment"):
        load_modernbert_weights(ModernAlbertModel(student_config()), teacher, layer_assignment="mean")
    biased = ModernBertModel(hf_config(mlp_bias=True)).eval()
    with pytest.raises(ValueError, match="mlp_bias"):
        load_modernbert_weights(ModernAlbertModel(student_config()), biased)
