"""Mixed precision: every FFN variant and every head in bf16 / fp16 (autocast and 16-bit weights) against fp32.

Tolerance. Outputs and losses must agree with the fp32 model within a relative (Frobenius) error of
``2 (L + 2) u``, where u is the unit roundoff of the 16-bit format (2^-8 for bf16, 2^-11 for fp16) and L = 4 the
effective depth of the `test` preset. Why: each of the two residual branches of an effective layer ends in a 16-bit
GEMM whose result joins a 16-bit residual stream (CPU autocast keeps LayerNorm in its input dtype), about two
roundings of relative size u per layer; the head adds two more (dense, then decoder / classifier); first-order
errors add at worst linearly with depth. Gradients get twice that bound: the backward rounds again (two GEMMs per
forward GEMM) on top of the forward's roundings. Measured on this matrix: at most 5u on CPU (bf16: outputs 1.4e-2,
gradients 1.1e-2; fp16: outputs 2.1e-3, gradients 2.4e-3), 40 % of the bound; on CUDA (H200, torch 2.11) at most
13.8u, in the gradients of one fp16-weights case (6.7e-3: 58 % of the gradients' bound). The experts are set so
that their terms move the fp32 outputs by 8 % (merged forms) to 40 % (MoL, RRT): 1.8 to 8.6 times the bf16 bound
and 14 to 69 times the fp16 one (checked below), so an expert term that is dropped, mis-scaled or mis-cast fails.

Attention. The `test` preset mixes layer types (layers 0 and 3 global, 1 and 2 local, 4 tokens each way) and the
9-token rows reach past the window, so every mode runs the blocked sliding-window kernel besides global attention
(checked below).

Routing. A 16-bit model routes exactly as an fp32 computation on its own (rounded) router inputs and weights: its
gate equals a float64 recomputation to fp32 accuracy, and its top-k choices equal the float64 ones except where
the k-th and (k+1)-th probabilities tie to within fp32 resolution.

Device. The matrix runs on CPU in CI. ``MODERNALBERT_TEST_DEVICE=cuda`` runs the same matrix (models, batches and
autocast) on a GPU: ``scripts/gpu_check.sh`` does so.
"""

import copy
import functools
import os

import pytest
import torch
import torch.nn.functional as F

from modernalbert import ModernAlbertConfig, ModernAlbertModel, merge_experts
from modernalbert.model import modeling as M
from tests.conftest import padded_batch, small_config

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ["bf16-autocast", "fp16-autocast", "bf16-weights", "fp16-weights"]
DEPTH = 4  # effective layers of the `test` preset
# (config overrides, merge form): merged low-rank and folded come from merging a weight-mixing MoL model.
VARIANTS = {
    "glu": ({"ffn_variants": ["glu", "glu"]}, None),
    "mol-output": ({"mol_mixing": "output"}, None),
    "mol-weight": ({"mol_mixing": "weight"}, None),
    "rrt": ({"ffn_variants": ["glu", "rrt"]}, None),
    "moa": ({"ffn_variants": ["glu", "moa"]}, None),
    "lora": ({"mol_mixing": "weight"}, "lowrank"),
    "folded": ({"mol_mixing": "weight"}, "fold"),
}
ROUTED = ("mol-output", "mol-weight", "moa")
DEVICE = torch.device(os.environ.get("MODERNALBERT_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    # The bound below assumes fp32 accumulation inside 16-bit GEMMs, as on CPU; cuBLAS may reduce in 16 bits (split-K)
    # by default, which adds error the bound does not count (measured: 1.15x the fp16 bound in one case of the matrix).
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
HEADS = [
    M.ModernAlbertModel,
    M.ModernAlbertForMaskedLM,
    M.ModernAlbertForSequenceClassification,
    M.ModernAlbertForTokenClassification,
    M.ModernAlbertForQuestionAnswering,
    M.ModernAlbertForMultipleChoice,
]


def tolerance(dtype: torch.dtype) -> float:
    """2 (L + 2) u: see the module docstring."""
    u = torch.finfo(dtype).eps / 2  # unit roundoff: half the gap between 1 and the next number
    return 2 * (DEPTH + 2) * u


def strong_experts(model: torch.nn.Module) -> None:
    """Experts (and routers) whose terms exceed the tolerance (B = 0 at init), yet a well-conditioned model: much
    larger experts or routers amplify the gradients' rounding errors well beyond what trained models show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if leaf in ("lora_B1", "lora_B2"):
                p.normal_(0.0, 0.25)
            elif leaf in ("adapter_down", "adapter_up"):
                p.normal_(0.0, 2.5)
            elif ".router." in name:
                p.normal_(0.0, 0.3)  # token-dependent routing (logits of std ~2)


def build(variant: str, head: type, experts: bool = True) -> torch.nn.Module:
    overrides, form = VARIANTS[variant]
    torch.manual_seed(0)
    model = head(small_config(num_labels=3, **overrides))
    if experts:
        strong_experts(model)
    return merge_experts(model, form=form) if form else model


def inputs(head: type) -> dict[str, torch.Tensor]:
    ids, mask = padded_batch(lengths=(9, 4, 7))  # (3, 9), right padded
    B, L = ids.shape
    g = torch.Generator().manual_seed(1)
    if head is M.ModernAlbertForMultipleChoice:
        rows = torch.tensor([[0, 2], [1, 0]])  # two examples of two different choices each
        ids, mask = ids[rows], mask[rows]  # (2, 2, L)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([1, 0])}
    batch = {"input_ids": ids, "attention_mask": mask}
    if head is M.ModernAlbertForMaskedLM:
        batch["labels"] = torch.where(torch.rand(B, L, generator=g) < 0.4, ids, -100)
    elif head is M.ModernAlbertForSequenceClassification:
        batch["labels"] = torch.tensor([0, 2, 1])
    elif head is M.ModernAlbertForTokenClassification:
        batch["labels"] = torch.randint(0, 3, (B, L), generator=g)
    elif head is M.ModernAlbertForQuestionAnswering:
        batch["start_positions"], batch["end_positions"] = torch.tensor([1, 2, 3]), torch.tensor([3, 3, 5])
    return batch


def main_output(out, head: type, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's output on real tokens (pads hold dtype-dependent fillers) as fp32."""
    mask = batch["attention_mask"].bool()
    if head is M.ModernAlbertModel:
        y = out.last_hidden_state[mask]  # (N, d)
    elif head is M.ModernAlbertForQuestionAnswering:
        y = torch.stack([out.start_logits[mask], out.end_logits[mask]])  # (2, N)
    elif head in (M.ModernAlbertForMaskedLM, M.ModernAlbertForTokenClassification):
        y = out.logits[mask]  # (N, C)
    else:
        y = out.logits  # (B, C)
    return y.float()


def run(model: torch.nn.Module, head: type, mode: str) -> dict:
    """Forward + backward in ``mode`` ("fp32" or one of MODES); router inputs and gates recorded."""
    batch = {k: v.to(DEVICE) for k, v in inputs(head).items()}
    dtype = DTYPES.get(mode.split("-")[0])
    model = model.to(DEVICE)
    if mode.endswith("weights"):
        model = model.to(dtype)
    routes = []
    hooks = [m.register_forward_hook(lambda mod, args, out: routes.append((mod, args[0].detach(), out)))
             for m in model.modules() if isinstance(m, M.Router)]
    with torch.autocast(DEVICE.type, dtype=dtype or torch.bfloat16, enabled=mode.endswith("autocast")):
        out = model(**batch, output_router_logits=True)
    for h in hooks:
        h.remove()
    y = main_output(out, head, batch)
    loss = getattr(out, "loss", None)
    if loss is None:  # the base model: a fixed random projection of its output (well-conditioned gradients)
        loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y.device)).sum()
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return {"out": out, "y": y.detach(), "loss": loss.detach(), "grads": grads, "routes": routes}


@pytest.mark.parametrize("mode", MODES)
def test_16bit_local_layers_run_the_blocked_kernel_in_their_compute_dtype(mode, monkeypatch):
    """The local layers of the matrix above take the blocked sliding-window path in 16 bits (no fp32 upcast)."""
    seen = []
    original = M._sdpa_banded

    def spy(qkv, layout, dropout, window):
        seen.append((qkv.dtype, window))
        return original(qkv, layout, dropout, window)

    monkeypatch.setattr(M, "_sdpa_banded", spy)
    run(build("mol-output", M.ModernAlbertModel), M.ModernAlbertModel, mode)
    assert seen == [(DTYPES[mode.split("-")[0]], 4)] * 2  # layers 1 and 2


@functools.cache
def reference(variant: str, head: type) -> tuple[torch.nn.Module, dict]:
    model = build(variant, head)
    return model, run(copy.deepcopy(model), head, "fp32")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_routing_is_fp32(routes: list) -> None:
    """Each recorded router call against a float64 recomputation from its own inputs and weight."""
    assert routes
    for router, x, (gate, onehot, stats) in routes:
        assert gate.dtype == onehot.dtype == stats.z_loss.dtype == stats.aux_loss.dtype == torch.float32
        logits = F.linear(x.double(), router.weight.double())  # (N, E)
        top_l, _ = logits.topk(router.top_k + 1, dim=-1)  # (N, k + 1)
        # A tie: the k-th and (k+1)-th logits closer than fp32 rounding of the logits can resolve.
        tie = (top_l[:, -2] - top_l[:, -1]) <= 1e-5 * logits.abs().amax(-1)  # (N,)
        assert int(tie.sum()) <= max(1, x.shape[0] // 1000)
        probs = logits.softmax(-1)  # (N, E)
        top_p, top_i = probs.topk(router.top_k, dim=-1)  # (N, k)
        ref_gate = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))  # (N, E)
        chosen, ref_chosen = onehot.sum(1).bool(), ref_gate > 0  # (N, E)
        assert torch.equal(chosen[~tie], ref_chosen[~tie])
        # fp32 accuracy: a d-term fp32 dot product is off by at most d u |x|.|w| (Higham, gamma_d); softmax and the
        # top-k renormalisation each at most double a logit error in a gate (p <= 1). A 16-bit router is off by
        # u_16 / u_32 = 2^16 (bf16) or 2^13 (fp16) times more. (A fixed 2e-6 failed on another CPU's BLAS: 2.07e-6.)
        logit_err = x.shape[-1] * 2**-24 * (x.double().abs() @ router.weight.detach().double().abs().T)  # (N, E)
        atol = 4 * float(logit_err.max()) + 16 * 2**-24
        torch.testing.assert_close(gate[~tie].double(), ref_gate[~tie], rtol=0, atol=atol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__.removeprefix("ModernAlbert"))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_16bit_matches_fp32_within_roundoff(variant, head, mode):
    model, ref = reference(variant, head)
    got = run(copy.deepcopy(model), head, mode)
    tol = tolerance(DTYPES[mode.split("-")[0]])
    assert torch.isfinite(got["y"]).all()
    assert rel(got["y"], ref["y"]) <= tol
    if head is not M.ModernAlbertModel:  # losses are fp32 from 16-bit logits
        assert got["loss"].dtype == torch.float32
        assert abs(float(got["loss"]) - float(ref["loss"])) <= tol * abs(float(ref["loss"]))
    assert got["grads"].keys() == ref["grads"].keys()
    flat = torch.cat([got["grads"][n].flatten() for n in ref["grads"]])
    assert torch.isfinite(flat).all()
    # Gradients: the forward's roundings, then the backward's (two GEMMs per forward GEMM): twice the outputs' bound.
    assert rel(flat, torch.cat([g.flatten() for g in ref["grads"].values()])) <= 2 * tol
    out = got["out"]
    if variant in ROUTED:
        assert out.expert_usage.dtype == out.router_probs.dtype == out.router_aux_loss.dtype == torch.float32
        check_routing_is_fp32(got["routes"])
    else:
        assert out.expert_usage is None and not got["routes"]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "glu"])
def test_expert_terms_exceed_the_tolerance(variant):
    """The matrix above can fail: the experts move the fp32 outputs by more than the bf16 tolerance and by at least
    three times the fp16 one (the casts under test are the same code for both formats)."""
    _, ref = reference(variant, M.ModernAlbertModel)
    plain = run(build(variant, M.ModernAlbertModel, experts=False), M.ModernAlbertModel, "fp32")
    assert rel(plain["y"], ref["y"]) > max(tolerance(torch.bfloat16), 3 * tolerance(torch.float16))


# ====================================================================================================== router


def _router(**overrides) -> M.Router:
    torch.manual_seed(0)
    router = M.Router(small_config(**overrides))
    torch.nn.init.normal_(router.weight)
    return router


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True], ids=["16bit-weights", "autocast"])
def test_router_routes_16bit_tokens_as_fp32_would(dtype, autocast):
    """16,384 tokens: decisions, gate and statistics equal a float64 computation on the same rounded inputs."""
    router = _router()
    x = torch.randn(16384, router.weight.shape[1]).to(dtype)  # (N, d), the 16-bit router input
    if not autocast:
        router = router.to(dtype)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        gate, onehot, stats = router(x)
    assert all(t.dtype == torch.float32 for t in (gate, onehot, *stats))
    check_routing_is_fp32([(router, x, (gate, onehot, stats))])
    logits = F.linear(x.double(), router.weight.double())  # (N, E)
    torch.testing.assert_close(stats.z_loss.double(), torch.logsumexp(logits, -1).square().mean(), rtol=1e-6, atol=0)
    probs = logits.softmax(-1)
    torch.testing.assert_close(stats.probs.double(), probs.mean(0), rtol=1e-5, atol=0)
    # The check has teeth: logits computed in the 16-bit dtype itself pick other experts for some tokens.
    low = F.linear(x, router.weight.to(dtype)).float().topk(router.top_k, -1).indices.sort(-1).values
    assert (low != logits.topk(router.top_k, -1).indices.sort(-1).values).any(-1).sum() > 0


def test_router_jitter_runs_in_fp32():
    router = _router(router_jitter=0.1).to(torch.bfloat16).train()
    gate, _, stats = router(torch.randn(64, router.weight.shape[1], dtype=torch.bfloat16))
    assert gate.dtype == stats.aux_loss.dtype == torch.float32 and torch.allclose(gate.sum(-1), torch.ones(64))


def test_routing_moving_average_stays_fp32():
    model = ModernAlbertModel(small_config()).train()
    mol = model.groups[1].mlp
    ema = torch.tensor([0.1234567, 0.2, 0.3, 0.3765433])
    mol.routing_ema.copy_(ema)
    mol.routing_ema_updates.fill_(1)
    model.to(torch.bfloat16)
    assert mol.routing_ema.dtype == torch.float32 and torch.equal(mol.routing_ema, ema)  # not rounded
    assert model.groups[1].mlp.Wi.weight.dtype == torch.bfloat16
    ids, mask = padded_batch()
    masses = []
    hook = mol.router.register_forward_hook(lambda mod, args, out: masses.append(out[2].mass))
    model(ids, attention_mask=mask)
    hook.remove()
    expected = ema.clone()
    for mass in masses:  # the G = 2 calls of the group, in order
        assert mass.dtype == torch.float32
        expected = expected * mol.ema_decay + mass * (1 - mol.ema_decay)
    assert mol.routing_ema.dtype == torch.float32
    torch.testing.assert_close(mol.routing_ema, expected, rtol=1e-6, atol=0)


# ======================================================================================================== RoPE


def test_rope_tables_stay_fp32_whatever_the_model_dtype(tmp_path):
    cfg = ModernAlbertConfig.from_preset("test")
    exact = {t: M.RotaryEmbedding.compute_default_rope_parameters(cfg, layer_type=t)[0]
             for t in ("full_attention", "sliding_attention")}
    assert not torch.equal(exact["full_attention"], exact["sliding_attention"])  # two bases
    model = ModernAlbertModel(cfg)
    model.save_pretrained(tmp_path)
    for cast in (model.to(torch.bfloat16), model.half(),
                 ModernAlbertModel.from_pretrained(tmp_path, dtype=torch.bfloat16)):
        rope = cast.rotary_emb
        for t, table in exact.items():
            for name in (f"{t}_inv_freq", f"{t}_original_inv_freq"):
                buffer = getattr(rope, name)
                assert buffer.dtype == torch.float32 and torch.equal(buffer, table), name
            cos, sin = rope(torch.empty(0, dtype=torch.bfloat16), torch.arange(200), t)
            assert cos.dtype == sin.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad", [False, True], ids=["in-place", "autograd"])
def test_16bit_rotation_is_computed_in_fp32_and_rounded_once(dtype, grad):
    rope = M.RotaryEmbedding(ModernAlbertConfig.from_preset("test"))
    qkv = torch.randn(50, 3, 4, 16).to(dtype).requires_grad_(grad)  # (N, 3, h, dh)
    cos, sin = M.rope_tables(*rope(torch.empty(0), torch.arange(50) * 3, "full_attention"))  # (N, 1, 1, dh)
    expected = qkv.detach().float().clone()
    half = 8
    q_k = expected[:, :2]
    swapped = torch.cat((q_k[..., half:], q_k[..., :half]), -1)
    expected[:, :2] = q_k * cos + swapped * sin
    got = M.apply_rotary(qkv if grad else qkv.detach().clone(), cos, sin)
    assert got.dtype == dtype
    assert torch.equal(got.detach(), expected.to(dtype))


@pytest.mark.parametrize("mixing", ["weight", "output"])
def test_mol_under_autocast_traces_without_graph_breaks(mixing):
    """The fp32 router region inside bf16 autocast is captured by torch.compile as one graph, equal to eager."""
    torch._dynamo.reset()
    model = build(f"mol-{mixing}", M.ModernAlbertModel).eval()
    mlp, x = model.groups[1].mlp, torch.randn(13, model.config.hidden_size)
    compiled = torch.compile(mlp, fullgraph=True, backend="eager")  # dynamo's capture alone: fast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (y, stats), (ref, ref_stats) = compiled(x), mlp(x)
        explanation = torch._dynamo.explain(mlp)(x)
    assert y.dtype == torch.bfloat16 and stats.z_loss.dtype == torch.float32
    assert torch.equal(y, ref) and torch.equal(stats.probs, ref_stats.probs)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("mixing", ["weight", "output"])
def test_mol_composes_when_autocast_reductions_return_fp32(mixing, monkeypatch):
    """CUDA autocast runs reductions such as ``sum`` in fp32, CPU autocast does not: an fp32 value born that way
    inside MoL must not reach its in-place 16-bit GEMMs (on CUDA, output mixing raised "mat1 and mat2 must have the
    same dtype"). CPU stand-in for CUDA's policy: ``Tensor.sum`` returns fp32 under autocast."""
    model = build(f"mol-{mixing}", M.ModernAlbertModel).eval()
    mlp, x = model.groups[1].mlp, torch.randn(13, model.config.hidden_size)
    original = torch.Tensor.sum

    def fp32_sum(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return out.float() if torch.is_autocast_enabled("cpu") and out.is_floating_point() else out

    with torch.no_grad():
        ref, _ = mlp(x)
        monkeypatch.setattr(torch.Tensor, "sum", fp32_sum)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, stats = mlp(x)
    assert y.dtype == torch.bfloat16 and stats.z_loss.dtype == torch.float32
    assert rel(y.float(), ref) <= tolerance(torch.bfloat16)
