"""Expert merging: compress each MoL group into one adapter, or fold it into the group's FFN weights.

For a MoL group with experts ``(A1_e, B1_e, A2_e, B2_e)``, scale ``s = alpha / r`` and per-expert weights ``w_e``
(summing to 1):

* ``space="deltas"`` (default) averages the weight updates: ``dW1 = s sum_e w_e B1_e A1_e`` (same for W2). Under
  weight mixing with routing that is constant over tokens (gate = w), this is *exact*: the MoL FFN then is
  ``(W2 + dW2) phi((W1 + dW1) x)``. As an adapter it has rank <= E * r.
* ``space="factors"`` averages the factors, ``A = sum_e w_e A_e``, ``B = sum_e w_e B_e`` (the literal "average the
  LoRA weights" reading): rank r, not exact; kept for the comparison.

Weights: ``"uniform"`` (1/E) or ``"router"``: the mean routed probability mass per expert, from the moving average
each MoL module keeps during training (``routing_ema``) or from a pass over calibration data.

Result forms: ``"lowrank"`` (exact adapter: ``B = s [w_1 B_1 ... ]``, ``A = [A_1; ...]``), ``"svd"`` (truncated SVD of
the dense delta to ``rank``; full rank equals ``lowrank``), ``"fold"`` (``W + dW`` written into the FFN weight: a plain
backbone, zero inference overhead). MoL is placed per group and a group's FFN serves exactly the G positions that
route through it, so folding never needs an untied copy of a weight that a non-MoL position shares (reported as 0).
``"svd"`` needs its ``rank``: there is no principled default truncation, and at full rank it equals ``"lowrank"``, so
an SVD merge without a rank would compress nothing while saying it did.

All arithmetic is fp32 whatever the model's dtype (as PEFT's merge does), and the merged model keeps the source
model's dtype: a bf16 model merges into a bf16 model (a folded bf16 checkpoint is then smaller than the unmerged
one, not an fp32 one twice its size). One finiteness policy holds for every form: a tensor the merge reads (the
group's FFN weights, its experts, the per-expert weights) that holds NaN or inf is refused before any arithmetic,
naming the group and the tensor, and so is a result that overflows fp32 or the model's dtype after the cast back
(fp16 overflows above 65504); nothing is merged then.

The merged model has no router; its config records how it was merged (``config.merge_info``) and it saves / loads
like any ModernAlbert model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..model.modeling import ModernAlbertModel, ModernAlbertPreTrainedModel, MoLGeGLU, count_parameters

WEIGHTS = ("uniform", "router")
SPACES = ("deltas", "factors")
FORMS = ("lowrank", "svd", "fold")


def _mol_groups(model: ModernAlbertPreTrainedModel) -> dict[int, MoLGeGLU]:
    return {g: blk.mlp for g, blk in enumerate(model.base_model.groups) if isinstance(blk.mlp, MoLGeGLU)}


def _batches(calibration: Any, tokenizer: Any, batch_size: int, max_length: int) -> Iterable[Mapping[str, Any]]:
    """Calibration as model-input dicts; strings are tokenised (``tokenizer`` required)."""
    if isinstance(calibration, str):
        calibration = [calibration]
    items = list(calibration)
    if not items:
        raise ValueError("Calibration data is empty: pass at least one text or batch for weights='router'.")
    if all(isinstance(t, str) for t in items):
        texts = [t for t in items if t.strip()]
        if not texts:
            raise ValueError("Calibration text is empty (only blank strings): pass real text for weights='router'.")
        if tokenizer is None:
            raise ValueError("Calibration texts need a tokenizer: merge_experts(..., tokenizer=AutoTokenizer...).")
        for i in range(0, len(texts), batch_size):
            yield tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
    elif all(isinstance(t, Mapping) for t in items):
        yield from items
    else:
        raise ValueError("calibration must be a list of strings or a list of model-input dicts (input_ids, ...).")


@torch.inference_mode()
def measure_routing(model: ModernAlbertPreTrainedModel, calibration: Any, tokenizer: Any = None,
                    batch_size: int = 16, max_length: int = 128) -> dict[int, torch.Tensor]:
    """Mean routed probability mass per expert of every MoL group, over the real tokens of calibration data.

    Args:
        model: A ModernAlbert model with MoL groups.
        calibration: Texts (with ``tokenizer``) or model-input dicts (``input_ids``, ``attention_mask``).
        tokenizer: Tokenizer for texts.
        batch_size: Texts per batch.
        max_length: Truncation length for texts.

    Returns:
        ``{group: (E,) tensor}``, each summing to 1 (all positions of the group pooled, token-weighted).
    """
    base = model.base_model
    groups = _mol_groups(model)
    sums = {g: torch.zeros(m.num_experts, dtype=torch.float64) for g, m in groups.items()}
    tokens = {g: 0.0 for g in groups}
    calls: list[tuple[int, torch.Tensor, int]] = []
    hooks = [
        m.router.register_forward_hook(
            lambda mod, inp, out, g=g: calls.append((g, out[0].detach().double().sum(0).cpu(), inp[0].shape[0]))
        )
        for g, m in groups.items()
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in _batches(calibration, tokenizer, batch_size, max_length):
            inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
            base(**inputs)
        for g, gate_sum, n in calls:
            sums[g] += gate_sum
            tokens[g] += n
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not calls or min(tokens.values()) == 0:
        raise ValueError("Calibration data contains no real (non-pad) token: nothing to measure routing on.")
    return {g: (sums[g] / tokens[g]).float() for g in groups}


def _expert_weights(module: MoLGeGLU, group: int, weights: str, measured: dict[int, torch.Tensor] | None):
    E = module.num_experts
    if weights == "uniform":
        return torch.full((E,), 1.0 / E)
    if measured is not None:
        return measured[group]
    if int(module.routing_ema_updates) == 0:
        raise ValueError(
            f"Group {group} has no routing statistics (its moving average was never updated: the model was not "
            "trained after it was built or loaded). Pass calibration=... (texts or batches) for weights='router'."
        )
    w = module.routing_ema.detach().float().cpu()
    return w / w.sum()


def _adapter_factors(module: MoLGeGLU, w: torch.Tensor, space: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(B1, A1), (B2, A2)] in fp32 with the LoRA scale folded into B: delta = B @ A."""
    s = module.scale
    out = []
    for A, B in ((module.lora_A1, module.lora_B1), (module.lora_A2, module.lora_B2)):
        A, B = A.detach().float().cpu(), B.detach().float().cpu()  # (E, r, in), (E, out, r)
        E, r, _ = A.shape
        if space == "deltas":
            A_m = A.reshape(E * r, -1)  # (E*r, in)
            B_m = s * (B * w[:, None, None]).permute(1, 0, 2).reshape(B.shape[1], E * r)  # (out, E*r)
        else:
            A_m = (w[:, None, None] * A).sum(0)  # (r, in)
            B_m = s * (w[:, None, None] * B).sum(0)  # (out, r)
        out.append((B_m, A_m))
    return out


def _check_finite(group: int, tensors: Mapping[str, torch.Tensor], *, result: bool = False) -> None:
    """The one finiteness policy of every merge form: refuse NaN / inf, naming the group and the tensor."""
    for name, t in tensors.items():
        bad = int((~torch.isfinite(t.detach())).sum())
        if bad:
            short = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(t.dtype, str(t.dtype))
            what = (f"its merged value overflows {short} (the experts are finite but too large)" if result else
                    "the checkpoint is damaged or its training diverged")
            fix = (" (or merge the model in float32: model.float())" if result and t.dtype != torch.float32
                   else " (e.g. an earlier one)")
            raise ValueError(f"merge_experts: group {group}: {name} holds {bad} non-finite value(s) (NaN or inf): "
                             f"{what}. Nothing was merged; merge a finite checkpoint{fix}.")


def _check_group_inputs(module: MoLGeGLU, prefix: str, g: int, w: torch.Tensor) -> None:
    """Every tensor the merge of group ``g`` reads, before any arithmetic (an SVD of NaN fails deep inside
    LAPACK; a low-rank merge would carry the NaN into the saved model)."""
    names = ("Wi.weight", "Wo.weight", "lora_A1", "lora_B1", "lora_A2", "lora_B2")
    tensors = {prefix + n: module.get_parameter(n) for n in names}
    _check_finite(g, {**tensors, f"the expert weights of group {g}": w})


def _cast_checked(group: int, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """fp32 merge results cast back to the model's dtype, refused if the cast overflows."""
    out = {k: v.contiguous().to(dtype) for k, v in tensors.items()}
    _check_finite(group, out, result=True)
    return out


def _check_options(model: ModernAlbertPreTrainedModel, groups: dict[int, MoLGeGLU], weights: str, space: str,
                   form: str, rank: int | None) -> tuple[int | None, int | None]:
    """Refuse unknown options and impossible ranks; returns ``(svd rank, the merged adapter's rank)``."""
    for name, value, allowed in (("weights", weights, WEIGHTS), ("space", space, SPACES), ("form", form, FORMS)):
        if value not in allowed:
            raise ValueError(f"merge_experts: {name}={value!r} is invalid: allowed values are {list(allowed)}.")
    if not groups:
        raise ValueError("merge_experts: the model has no MoL group (config.mol_groups is empty): nothing to merge.")
    cfg = model.config
    native = cfg.num_experts * cfg.lora_rank if space == "deltas" else cfg.lora_rank
    if rank is not None and form != "svd":
        raise ValueError(f"merge_experts: rank={rank} applies to form='svd' only (form={form!r} is exact).")
    if form == "svd":
        possible = min(native, cfg.hidden_size, cfg.intermediate_size)
        if rank is None:
            raise ValueError(f"merge_experts: form='svd' needs rank=R, the rank to truncate to (1 to {possible} "
                             f"here; {possible} keeps everything, as form='lowrank' does exactly).")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= possible:
            raise ValueError(
                f"merge_experts: rank={rank} is impossible: the {space} adapter has rank at most {possible} "
                f"(E*r = {cfg.num_experts * cfg.lora_rank} for deltas, r = {cfg.lora_rank} for factors, and "
                f"min(d, f) = {min(cfg.hidden_size, cfg.intermediate_size)})."
            )
    return rank, None if form == "fold" else (rank if form == "svd" else native)


def _merge_group(state: dict[str, torch.Tensor], prefix: str, module: MoLGeGLU, g: int, w: torch.Tensor,
                 space: str, form: str, rank: int | None) -> None:
    """Replace one MoL group's router and experts in ``state`` by its merged adapter (or its folded FFN)."""
    for key in [k for k in state if k.startswith(prefix) and k[len(prefix):].split(".")[0]
                in ("router", "lora_A1", "lora_B1", "lora_A2", "lora_B2", "routing_ema", "routing_ema_updates")]:
        del state[key]
    _check_group_inputs(module, prefix, g, w)
    (B1, A1), (B2, A2) = _adapter_factors(module, w, space)
    # The dense deltas, (out, in) each, checked in every form: finite factors can still multiply past fp32.
    deltas = {f"{prefix}Wi's merged delta": B1 @ A1, f"{prefix}Wo's merged delta": B2 @ A2}
    _check_finite(g, deltas, result=True)
    dW1, dW2 = deltas.values()
    if form == "svd":
        factored = []
        for delta in (dW1, dW2):
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            factored.append((U[:, :rank] * S[:rank], Vh[:rank]))  # (out, R), (R, in)
        (B1, A1), (B2, A2) = factored
    dtype = module.Wi.weight.dtype
    if form == "fold":
        folded = {prefix + "Wi.weight": module.Wi.weight.detach().float().cpu() + dW1,
                  prefix + "Wo.weight": module.Wo.weight.detach().float().cpu() + dW2}
        _check_finite(g, folded, result=True)
        state.update(_cast_checked(g, folded, dtype))
    else:
        merged = {prefix + "lora_A1": A1, prefix + "lora_B1": B1, prefix + "lora_A2": A2, prefix + "lora_B2": B2}
        state.update(_cast_checked(g, merged, dtype))


def _rebuild(model: ModernAlbertPreTrainedModel, config: Any,
             state: dict[str, torch.Tensor]) -> ModernAlbertPreTrainedModel:
    """A new model of ``model``'s class with ``config``, holding ``state``, on its device, in its dtype and mode."""
    # Built in the source dtype, so that loading the state keeps it (fp32 buffers, e.g. RoPE's, stay fp32).
    merged = type(model)(config).to(model.dtype)
    device = next(model.parameters()).device
    missing, unexpected = merged.load_state_dict(state, strict=False)
    tied = set(getattr(merged, "all_tied_weights_keys", {}) or {})
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"merge_experts: state mismatch (missing {missing}, unexpected {unexpected}).")
    merged.tie_weights()
    return merged.to(device).train(model.training)


def merge_experts(
    model: ModernAlbertPreTrainedModel,
    weights: str = "uniform",
    space: str = "deltas",
    form: str = "lowrank",
    rank: int | None = None,
    calibration: Any = None,
    tokenizer: Any = None,
    batch_size: int = 16,
    max_length: int = 128,
) -> ModernAlbertPreTrainedModel:
    """Merge every MoL group of ``model`` into one adapter (or fold it); see the module docstring.

    Args:
        model: A ModernAlbert model (any head class, any dtype) with at least one MoL group. It is not modified.
        weights: ``"uniform"`` or ``"router"`` (moving average kept in training, or ``calibration``).
        space: ``"deltas"`` (exact under constant routing with weight mixing) or ``"factors"``.
        form: ``"lowrank"``, ``"svd"`` (truncated to ``rank``) or ``"fold"``.
        rank: Target rank for ``form="svd"`` (default: the adapter's full rank, E*r for deltas, r for factors).
        calibration: Texts or model-input dicts to measure router weights on (``weights="router"``).
        tokenizer: Tokenizer for calibration texts.
        batch_size: Calibration batch size.
        max_length: Calibration truncation length.

    Returns:
        A new model of the same class and dtype without routers: MoL groups become ``"lora"`` (lowrank, svd) or
        ``"glu"`` (fold) groups; ``config.merge_info`` records the options, per-group weights and parameter counts.

    Raises:
        ValueError: No MoL group, an unknown option, an impossible rank, empty calibration data, missing routing
            statistics, or a non-finite result.
    """
    groups = _mol_groups(model)
    rank, adapter_rank = _check_options(model, groups, weights, space, form, rank)
    cfg = model.config

    measured = None
    if weights == "router" and calibration is not None:
        measured = measure_routing(model, calibration, tokenizer, batch_size, max_length)
    elif calibration is not None:
        raise ValueError("merge_experts: calibration data is used by weights='router' only.")

    new_cfg = copy.deepcopy(cfg)
    new_cfg.ffn_variants = ["glu" if (v == "mol" and form == "fold") else "lora" if v == "mol" else v
                            for v in cfg.ffn_variants]
    new_cfg.mol_groups = []
    new_cfg.adapter_rank = adapter_rank if adapter_rank is not None else cfg.adapter_rank
    new_cfg.validate()

    state = {k: v for k, v in model.state_dict().items()}
    group_info = {}
    for g, module in groups.items():
        prefix = ("" if isinstance(model, ModernAlbertModel) else "model.") + f"groups.{g}.mlp."
        w = _expert_weights(module, g, weights, measured)
        _merge_group(state, prefix, module, g, w, space, form, rank)
        group_info[str(g)] = {"expert_weights": [round(float(x), 6) for x in w]}

    merged = _rebuild(model, new_cfg, state)

    before, after = count_parameters(model).unique, count_parameters(merged).unique
    merged.config.merge_info = {
        "weights": weights,
        "weights_source": ("uniform" if weights == "uniform" else "calibration" if measured is not None
                           else "routing_ema"),
        "space": space,
        "form": form,
        "adapter_rank": adapter_rank,
        "merged_groups": sorted(groups),
        "groups": group_info,
        "mol_mixing": cfg.mol_mixing,
        "parameters_before": before,
        "parameters_after": after,
        "untied_copy_parameters": 0,
    }
    return merged


__all__ = ["FORMS", "SPACES", "WEIGHTS", "measure_routing", "merge_experts"]
