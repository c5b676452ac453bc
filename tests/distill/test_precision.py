"""Distillation losses are fp32 whatever the student's dtype: teacher values are never rounded to the student's."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from modernalbert import ModernAlbertForMaskedLM
from modernalbert.distill.losses import DistillConfig, Distiller
from tests.conftest import small_config


def _setup(dtype: torch.dtype):
    torch.manual_seed(1)
    teacher = BertForMaskedLM(BertConfig(vocab_size=512, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=96, max_position_embeddings=64, pad_token_id=0)).eval()
    with torch.no_grad():  # a confident teacher (logits of std ~10, as trained MLMs have), not a near-uniform one
        teacher.cls.predictions.transform.LayerNorm.weight.mul_(20.0)
    student = ModernAlbertForMaskedLM(small_config(sparse_prediction=True))
    distiller = Distiller(student, teacher, DistillConfig(temperature=2.0)).to(dtype)  # the teacher stays fp32
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 512, (4, 16), generator=g)
    labels = torch.where(torch.rand(4, 16, generator=g) < 0.3, ids, -100)
    return distiller, ids.masked_fill(labels != -100, 3), torch.ones_like(ids), labels


def _reference_parts(distiller, ids, mask, labels, round_teacher_to=None):
    """Hidden cosine and logit KL in float64 from the student's outputs and the (fp32) teacher's."""
    s = distiller.student(ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    t = distiller.teacher(ids, attention_mask=mask, output_hidden_states=True)

    def teacher_value(v):
        return (v.to(round_teacher_to) if round_teacher_to else v).double()

    hidden = torch.stack([
        (1 - F.cosine_similarity(distiller.projections[str(i)](s.hidden_states[i][mask.bool()]).double(),
                                 teacher_value(t.hidden_states[j][mask.bool()]), dim=-1)).mean()
        for i, j in distiller.layer_map.items()
    ]).mean()
    sel = labels != -100
    kl = F.kl_div(F.log_softmax(s.logits.double() / 2, -1), F.log_softmax(teacher_value(t.logits[sel]) / 2, -1),
                  log_target=True, reduction="batchmean") * 4
    return {"hidden": hidden, "logits": kl}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_kd_losses_of_a_16bit_student_are_fp32(dtype):
    distiller, ids, mask, labels = _setup(dtype)
    out = distiller(ids, mask, labels)
    assert out.loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in out.parts.values())
    ref = _reference_parts(distiller, ids, mask, labels)
    rounded = _reference_parts(distiller, ids, mask, labels, round_teacher_to=dtype)
    # fp32 losses: within a few fp32 unit roundoffs (2^-24) of float64 (measured <= 1.1e-7 relative). Rounding the
    # teacher's values to the student's 16 bits instead moves each part by more (measured 6e-7 to 2e-5 relative),
    # so the check tells the two apart.
    tol = 4 * 2.0**-24
    for name in ("hidden", "logits"):
        assert abs(float(out.parts[name].double() - ref[name])) <= tol * float(ref[name])
        assert abs(float(rounded[name] - ref[name])) > tol * float(ref[name])


def test_kd_under_bf16_autocast_trains():
    distiller, ids, mask, labels = _setup(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distiller(ids, mask, labels)
    assert out.loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in out.parts.values())
    out.loss.backward()
    grads = [p.grad for p in distiller.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
