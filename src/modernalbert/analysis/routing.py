"""Routing analytics: how a ModernAlbert model's routers spread real tokens over their experts.

For every routed effective layer (a layer whose group has a MoL or MoA FFN) the report gives the expert usage, the
mean router probability, the mean router entropy and the Switch balance; for every routed group, the tokens each
expert prefers. Everything is measured on real tokens only: the routers never see pads (the encoder runs its
token-wise work on the unpadded (N, d) matrix), so the report does not depend on batch size or padding side.

Shape legend: N real tokens in a batch, d hidden, E experts, k experts per token, V vocabulary,
P routed effective layers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.modeling import ModernAlbertModel
from ..utils.io import atomic_write, write_text

REPORT_JSON = "routing.json"
REPORT_PNG = "routing.png"


# ================================================================================================ collection


@dataclass
class _PositionStats:
    """Running sums for one routed effective layer."""

    layer: int
    group: int
    position: int
    counts: torch.Tensor  # (E,) float64 top-k assignments per expert
    prob_sum: torch.Tensor  # (E,) float64 sum of router probabilities
    entropy_sum: float = 0.0
    tokens: int = 0


@dataclass
class _GroupStats:
    """Running per-token sums for one routed group, over all of its positions."""

    group: int
    layers: list[int]
    routed: torch.Tensor  # (V, E) float64 routing events of each token id that chose each expert
    events: torch.Tensor  # (V,) float64 routing events of each token id (occurrences x positions)
    counts: torch.Tensor  # (E,) float64 top-k assignments per expert
    entropy_sum: float = 0.0
    tokens: int = 0  # routing events of all tokens


def routed_layers(encoder: ModernAlbertModel) -> list[tuple[int, int, int]]:
    """``(layer, group, position within group)`` of every effective layer whose group is routed, in depth order.

    These are the rows of ``expert_usage`` / ``router_probs`` in the model outputs, and the order in which the
    routers are called during a forward pass.
    """
    return [(layer, g, pos) for layer, (g, pos) in enumerate(encoder.layer_plan())
            if getattr(encoder.groups[g].mlp, "routed", False)]


def _variant(encoder: ModernAlbertModel, group: int) -> str:
    variants = getattr(encoder.config, "ffn_variants", None)
    if variants is not None and group < len(variants):
        return str(variants[group])
    return type(encoder.groups[group].mlp).__name__


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


# ==================================================================================================== report


def _check_inputs(model: nn.Module, tokenizer: Any, texts: list[str], **options: int,
                  ) -> tuple[ModernAlbertModel, list[tuple[int, int, int]]]:
    """The encoder and its routed layers, after refusing bad options, no text, a non-ModernAlbert or unrouted
    model, and a tokenizer without pad token."""
    for name, value in options.items():
        _check_positive(name, value)
    if not texts:
        raise ValueError("No texts to route: pass at least one non-empty text.")
    encoder = getattr(model, "base_model", None)
    if not isinstance(encoder, ModernAlbertModel):
        raise ValueError(f"Expected a ModernAlbert model (ModernAlbertModel or a ModernAlbertFor* head), got "
                         f"{type(model).__name__}.")
    plan = routed_layers(encoder)
    if not plan:
        raise ValueError(
            f"This model has no MoL/MoA groups to report on (ffn_variants={_variant_list(encoder)}): routing-report "
            "needs a model with routed groups (config mol_groups, or ffn_variants with 'mol' or 'moa')."
        )
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token (e.g. to '[PAD]') before batching.")
    _require_matplotlib()
    return encoder, plan


def _collect(model: nn.Module, encoder: ModernAlbertModel, tokenizer: Any, texts: list[str],
             plan: list[tuple[int, int, int]], positions: list[_PositionStats], groups: dict[int, _GroupStats],
             batch_size: int, max_length: int) -> int:
    """Run the texts through the encoder with a hook on every router, adding to the statistics; returns the
    number of real tokens. Hooks are removed and the training flag restored even when a forward pass fails."""
    device = next(encoder.parameters()).device
    state: dict[str, Any] = {"call": 0, "ids": None}
    num_tokens = 0
    was_training = model.training
    # Router of each routed call, in call order: the hook checks that calls arrive in the order of the plan.
    expected = [encoder.groups[g].mlp.router for _, g, _ in plan]
    hook = _make_hook(expected, positions, groups, state)
    handles = []
    try:
        # A group that runs at several positions calls one router several times: hook each router once.
        for g in dict.fromkeys(g for _, g, _ in plan):
            handles.append(encoder.groups[g].mlp.router.register_forward_hook(hook, with_kwargs=True))
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                input_ids = batch["input_ids"].to(device)  # (B, L)
                mask = batch["attention_mask"].to(device)  # (B, L)
                # Row-major real tokens: the order of the router's (N, d) input.
                state["ids"] = input_ids[mask.bool()].cpu()  # (N,)
                state["call"] = 0
                encoder(input_ids=input_ids, attention_mask=mask, return_dict=True)
                if state["call"] != len(plan):
                    raise RuntimeError(f"Expected {len(plan)} router calls per forward pass, saw {state['call']}.")
                num_tokens += int(state["ids"].numel())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return num_tokens


def routing_report(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    top_tokens: int = 10,
    min_count: int = 3,
) -> dict[str, Any]:
    """Measure how the model routes the tokens of ``texts``; write ``routing.json`` and ``routing.png``.

    The model runs in eval mode under ``torch.inference_mode`` (its training flag is restored afterwards); a forward
    hook on every router records each real token's full router distribution and its top-k experts. Hooks are
    removed even when the forward pass fails.

    Per routed effective layer (``positions``): ``expert_usage`` (fraction of the top-k assignments per expert,
    sums to 1; equal to the model's own ``expert_usage`` row on the same single batch), ``mean_router_prob``,
    ``router_entropy`` (mean per-token entropy of the full softmax, nats, in [0, ln E]) and its value divided by
    ln E, ``balance`` (Switch balance ``E * sum_e usage_e * mean_prob_e``: 1.0 for uniform router probabilities,
    in (0, E]; it is not bounded below by 1: it drops under 1 when the experts most often chosen carry less of the
    mean probability than the others, so read values near 1 as balanced) and ``num_tokens``.

    Per routed group (``groups``), aggregated over its positions: usage, entropy, and for each expert the
    ``top_tokens`` token ids seen at least ``min_count`` times with the highest ``share``: the fraction of the
    token's routing events (occurrences x positions of the group) whose top-k includes that expert (so shares lie
    in [0, 1], sum to k over experts, and ``k / E`` is the uniform baseline).

    Args:
        model: Any ModernAlbert model (base or head) with at least one MoL or MoA group.
        tokenizer: A Hugging Face tokenizer with a pad token.
        texts: The texts to route (one sequence each).
        out_dir: Folder for ``routing.json`` and ``routing.png`` (created if missing).
        batch_size: Texts per forward pass.
        max_length: Truncation length in tokens (capped at the model's ``max_position_embeddings``).
        top_tokens: Preferred tokens listed per expert.
        min_count: Minimum occurrences for a token to be ranked.

    Returns:
        The report, identical to the content of ``routing.json``.

    Raises:
        ValueError: No texts, a non-positive option, a tokenizer without pad token, or a model without any routed
            (MoL/MoA) group.
    """
    texts = list(texts)
    encoder, plan = _check_inputs(model, tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                  top_tokens=top_tokens, min_count=min_count)
    first = encoder.groups[plan[0][1]].mlp.router
    E, k = int(first.num_experts), int(first.top_k)
    V = int(encoder.config.vocab_size)
    max_length = min(max_length, int(encoder.config.max_position_embeddings))

    positions = [_PositionStats(layer, g, pos, torch.zeros(E, dtype=torch.float64), torch.zeros(E, dtype=torch.float64))
                 for layer, g, pos in plan]
    groups: dict[int, _GroupStats] = {}
    for layer, g, _ in plan:
        if g not in groups:
            groups[g] = _GroupStats(g, [], torch.zeros(V, E, dtype=torch.float64), torch.zeros(V, dtype=torch.float64),
                                    torch.zeros(E, dtype=torch.float64))
        groups[g].layers.append(layer)
    num_tokens = _collect(model, encoder, tokenizer, texts, plan, positions, groups, batch_size, max_length)

    report = _build_report(model, encoder, tokenizer, positions, groups, E=E, k=k, num_texts=len(texts),
                           num_tokens=num_tokens, batch_size=batch_size, max_length=max_length,
                           top_tokens=top_tokens, min_count=min_count)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / REPORT_JSON, json.dumps(report, indent=2))
    with atomic_write(out / REPORT_PNG, "wb") as fh:
        _plot(report, fh)
    return report


def _variant_list(encoder: ModernAlbertModel) -> list[str]:
    return [_variant(encoder, g) for g in range(len(encoder.groups))]


def _make_hook(expected: list[nn.Module], positions: list[_PositionStats], groups: dict[int, _GroupStats],
               state: dict[str, Any]) -> Callable[..., None]:
    """A forward hook that adds one router call's statistics to the position it belongs to (by call order)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        i = state["call"]
        state["call"] += 1
        if i >= len(positions) or module is not expected[i]:
            raise RuntimeError(
                f"Router call {i} does not match the layer plan ({len(positions)} routed layers in depth order)."
            )
        pos = positions[i]
        x = args[0] if args else kwargs["x"]  # (N, d)
        _, onehot, _ = output  # (N, k, E)
        ids = state["ids"]  # (N,)
        if x.shape[0] != ids.numel():
            raise RuntimeError(f"Router saw {x.shape[0]} tokens but the batch has {ids.numel()} real tokens.")
        # The full distribution, from the router's own fp32 logits, accumulated in fp64 so that sums over many
        # tokens stay exact enough to compare with the model's own per-batch statistics.
        probs = module.logits(x).softmax(-1).double()  # (N, E)
        entropy = torch.special.entr(probs).sum(-1)  # (N,) nats
        chosen = onehot.double().sum(1).cpu()  # (N, E) 1 for each of the token's k experts
        probs, entropy = probs.cpu(), entropy.cpu()

        pos.counts += chosen.sum(0)
        pos.prob_sum += probs.sum(0)
        pos.entropy_sum += float(entropy.sum())
        pos.tokens += int(x.shape[0])
        grp = groups[pos.group]
        grp.routed.index_add_(0, ids, chosen)
        grp.events.index_add_(0, ids, torch.ones(ids.numel(), dtype=torch.float64))
        grp.counts += chosen.sum(0)
        grp.entropy_sum += float(entropy.sum())
        grp.tokens += int(x.shape[0])

    return hook


def _build_report(model: nn.Module, encoder: ModernAlbertModel, tokenizer: Any, positions: list[_PositionStats],
                  groups: dict[int, _GroupStats], *, E: int, k: int, num_texts: int, num_tokens: int,
                  batch_size: int, max_length: int, top_tokens: int, min_count: int) -> dict[str, Any]:
    ln_e = math.log(E)

    def entropy_fields(total: float, n: int) -> dict[str, float]:
        h = total / n if n else 0.0
        return {"router_entropy": h, "router_entropy_normalized": h / ln_e if E > 1 else 0.0}

    rows = []
    for p in positions:
        usage = p.counts / p.counts.sum().clamp(min=1.0)  # (E,)
        mean_prob = p.prob_sum / max(p.tokens, 1)  # (E,)
        rows.append({
            "layer": p.layer,
            "group": p.group,
            "position": p.position,
            "variant": _variant(encoder, p.group),
            "num_tokens": p.tokens,
            "expert_usage": usage.tolist(),
            "mean_router_prob": mean_prob.tolist(),
            **entropy_fields(p.entropy_sum, p.tokens),
            "balance": float(E * (usage * mean_prob).sum()),
        })

    group_rows = []
    for g, st in groups.items():
        positions_per_forward = len(st.layers)
        occurrences = st.events / positions_per_forward  # (V,) every forward runs all the group's positions
        share = st.routed / st.events.clamp(min=1.0)[:, None]  # (V, E)
        eligible = torch.nonzero(occurrences >= min_count).flatten()  # ascending token ids
        # Ties in share go to the more frequent token, then to the lower id: stable sorts, least significant first.
        by_count = eligible[torch.sort(-occurrences[eligible], stable=True).indices]
        preferred = []
        for e in range(E):
            ids = by_count[torch.sort(-share[by_count, e], stable=True).indices].tolist()
            preferred.append({
                "expert": e,
                "tokens": [{"token": _token_string(tokenizer, v), "id": v, "count": round(float(occurrences[v])),
                            "share": float(share[v, e])} for v in ids[:top_tokens]],
            })
        group_rows.append({
            "group": g,
            "variant": _variant(encoder, g),
            "layers": st.layers,
            "num_routing_events": st.tokens,
            "expert_usage": (st.counts / st.counts.sum().clamp(min=1.0)).tolist(),
            **entropy_fields(st.entropy_sum, st.tokens),
            "uniform_share": k / E,
            "num_ranked_tokens": int(eligible.numel()),
            "preferred_tokens": preferred,
        })

    balances = [r["balance"] for r in rows]
    summary = {
        "model_type": str(getattr(encoder.config, "model_type", "modernalbert")),
        "model_class": type(model).__name__,
        "num_experts": E,
        "top_k": k,
        "num_texts": num_texts,
        "num_tokens": num_tokens,
        "num_hidden_layers": int(encoder.config.num_hidden_layers),
        "group_depth": int(encoder.config.group_depth),
        "ffn_variants": _variant_list(encoder),
        "routed_layers": [r["layer"] for r in rows],
        "mean_balance": sum(balances) / len(balances),
        "mean_router_entropy_normalized": sum(r["router_entropy_normalized"] for r in rows) / len(rows),
        "batch_size": batch_size,
        "max_length": max_length,
        "top_tokens": top_tokens,
        "min_count": min_count,
    }
    return {"summary": summary, "positions": rows, "groups": group_rows}


def _token_string(tokenizer: Any, token_id: int) -> str:
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    return str(token) if token is not None else f"<id {token_id}>"


# ===================================================================================================== output


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "routing_report draws its plot with matplotlib: pip install 'modernalbert[analysis]' (or matplotlib)."
        ) from err


def _plot(report: dict[str, Any], fileobj: Any) -> None:
    """Heatmap of expert usage (positions x experts) beside the normalised router entropy per position."""
    # The object-oriented API with an Agg canvas: no pyplot, no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["positions"]
    E = report["summary"]["num_experts"]
    P = len(rows)
    usage = [r["expert_usage"] for r in rows]
    labels = [f"L{r['layer']} g{r['group']}.{r['position']}" for r in rows]

    width = 4.0 + 0.55 * E + 3.5
    height = 1.6 + 0.38 * P
    fig = Figure(figsize=(min(width, 24.0), min(max(height, 3.0), 30.0)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_u, ax_h = fig.subplots(1, 2, sharey=True, width_ratios=[max(E, 2), 3])

    img = ax_u.imshow(usage, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(max(map(max, usage)), 1.0 / E))
    ax_u.set_xticks(range(E), [str(e) for e in range(E)])
    ax_u.set_yticks(range(P), labels)
    ax_u.set_xlabel("expert")
    ax_u.set_ylabel("effective layer (group.position)")
    ax_u.set_title(f"expert usage (uniform = {1 / E:.3g})")
    if E * P <= 400:  # numbers stay legible only on small grids
        peak = max(map(max, usage))
        for i, row in enumerate(usage):
            for e, u in enumerate(row):
                ax_u.text(e, i, f"{u:.2f}", ha="center", va="center", fontsize=7,
                          color="black" if u > 0.6 * peak else "white")
    fig.colorbar(img, ax=ax_u, fraction=0.05, pad=0.02, label="fraction of top-k assignments")

    entropy = [r["router_entropy_normalized"] for r in rows]
    ax_h.barh(range(P), entropy, color="tab:orange")
    ax_h.set_xlim(0.0, 1.0)
    ax_h.set_xlabel("router entropy / ln E")
    ax_h.set_title("entropy and balance")
    for i, r in enumerate(rows):
        ax_h.text(0.02, i, f"bal {r['balance']:.2f}", va="center", fontsize=7)

    s = report["summary"]
    fig.suptitle(f"{s['model_class']}: E={E}, k={s['top_k']}, {s['num_texts']} texts, {s['num_tokens']} tokens",
                 fontsize=10)
    fig.savefig(fileobj, format="png")
