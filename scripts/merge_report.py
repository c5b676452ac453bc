"""How much each expert-merging variant changes a trained MoL model, measured on held-out real text.

Trains a small MoL MaskedLM (the ``mini`` preset: d = 384, E = 4, k = 2, r = 8, with the bert-base-uncased
WordPiece tokenizer of the packaged all-MiniLM-L6-v2) from scratch with MLM on King James Bible text for a few
hundred CPU steps, then merges its experts every way ``merge_experts`` offers and reports, on held-out chapters the
model never trained on: cosine similarity of final hidden states with the unmerged model (real tokens), held-out
MLM loss (same masks for every variant), and unique parameter counts.

    python scripts/merge_report.py [--steps 300] [--mixing weight|output] [--out runs/merge-report]

Writes ``report.json``, ``report.md`` and the trained model (``model/``, with its tokenizer) to ``--out`` and prints
the table. The optimiser settings below are ours
(a short smoke-scale run), not the paper's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from modernalbert import ModernAlbertConfig, ModernAlbertForMaskedLM, count_parameters, merge_experts
from modernalbert.data import fetch, load_documents, split_documents
from modernalbert.data.mlm import masked_batches, mlm_collator, pack_documents


def train(model, blocks, tokenizer, steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    collate = mlm_collator(tokenizer, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - max(0, s - warmup) / max(1, steps - warmup)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(blocks), (batch_size,), generator=g)
        batch = collate([{"input_ids": b} for b in blocks[idx]])
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.0f}s)", flush=True)
    return losses


@torch.inference_mode()
def evaluate(model, batches, reference_hidden=None):
    model.eval()
    losses, tokens, hidden = 0.0, 0, []
    for b in batches:
        out = model.model(b["input_ids"], attention_mask=b["attention_mask"])
        h = out.last_hidden_state
        logits = model.decoder(model.unembed(model.head(h)) if model.unembed is not None else model.head(h))
        n = int((b["labels"] != -100).sum())
        losses += F.cross_entropy(logits.view(-1, logits.shape[-1]), b["labels"].view(-1), reduction="sum").item()
        tokens += n
        hidden.append(h.reshape(-1, h.shape[-1]))
    hidden = torch.cat(hidden)
    result = {"mlm_loss": losses / tokens}
    if reference_hidden is not None:
        cos = F.cosine_similarity(hidden, reference_hidden, dim=-1)
        result.update(cos_mean=cos.mean().item(), cos_min=cos.min().item())
    return result, hidden


def main() -> None:
    # One linear report script (train, merge every variant, export, write the table): each step feeds the next.
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mixing", choices=["weight", "output"], default="weight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/merge-report")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fetch("all-MiniLM-L6-v2"))
    train_docs, held_docs = split_documents(load_documents("kjv"), held_out=0.05, seed=args.seed)
    train_blocks = pack_documents(train_docs, tokenizer, args.block_size)
    held_blocks = pack_documents(held_docs, tokenizer, args.block_size)[:256]
    held = masked_batches(held_blocks, tokenizer, 32, seed=1234)
    calibration = [{"input_ids": b, "attention_mask": torch.ones_like(b)}
                   for b in train_blocks[:256].split(32)]  # training text, never the held-out chapters
    print(f"KJV: {len(train_blocks)} training blocks, {len(held_blocks)} held-out blocks of {args.block_size}")

    config = ModernAlbertConfig.from_preset("mini", mol_mixing=args.mixing, sparse_prediction=True)
    model = ModernAlbertForMaskedLM(config)
    losses = train(model, train_blocks, tokenizer, args.steps, args.batch_size, args.lr, args.seed)
    model.config.sparse_prediction = False
    out = Path(args.out)
    model.save_pretrained(out / "model")  # for `modernalbert merge` / `routing-report` on a trained model
    tokenizer.save_pretrained(out / "model")
    base, ref_hidden = evaluate(model, held)
    plain = ModernAlbertForMaskedLM(ModernAlbertConfig.from_preset("mini", mol_groups=[]))
    plain_params = count_parameters(plain).unique

    cfg = model.config
    full = cfg.num_experts * cfg.lora_rank
    variants = []
    for weights in ("uniform", "router-ema", "router-calibration"):
        for space in ("deltas", "factors"):
            for form, rank in (("lowrank", None), ("svd", (full if space == "deltas" else cfg.lora_rank) // 2),
                               ("fold", None)):
                kw = {"weights": "uniform" if weights == "uniform" else "router", "space": space, "form": form,
                      "rank": rank}
                if weights == "router-calibration":
                    kw["calibration"] = calibration
                merged = merge_experts(model, **kw)
                merged.config.sparse_prediction = False
                res, _ = evaluate(merged, held, ref_hidden)
                res.update(weights=weights, space=space, form=form + (f" r={rank}" if rank else ""),
                           params=count_parameters(merged).unique,
                           expert_weights=merged.config.merge_info["groups"])
                variants.append(res)
                print(f"{weights:18s} {space:7s} {res['form']:10s} cos {res['cos_mean']:.5f} "
                      f"(min {res['cos_min']:.4f})  loss {res['mlm_loss']:.4f}", flush=True)

    # Deployment check on real text: the folded model through ONNX Runtime, fp32 and int8, on held-out chapters.
    from modernalbert.export import compare_onnx, export_onnx, quantize_int8, verify_onnx

    deploy = merge_experts(model, form="fold").eval()
    texts = [d.text[:600] for d in held_docs[:64]]
    real = [dict(tokenizer(texts[i : i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(texts), 16)]
    real = [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask")} for b in real]
    fp32 = export_onnx(deploy.model, out / "onnx" / "model.onnx", pooling="mean")
    int8 = quantize_int8(fp32, out / "onnx" / "model.int8.onnx")
    onnx_fp32 = verify_onnx(deploy.model, fp32, real)
    onnx_int8 = compare_onnx(fp32, int8, real)["sentence_embedding"]
    print(f"ONNX fp32 vs PyTorch max |diff| {max(onnx_fp32.values()):.2e}; int8 sentence embeddings cosine "
          f"mean {onnx_int8['mean_cosine']:.5f} min {onnx_int8['min_cosine']:.5f}", flush=True)

    folded = [v for v in variants if v["form"] == "fold"]
    assert all(v["params"] == plain_params for v in folded), "a folded model must equal the plain backbone"
    lines = [
        f"# Expert merging on a trained MoL model ({args.mixing} mixing)",
        "",
        f"`mini` preset, MLM on King James Bible text, {args.steps} steps x {args.batch_size} x "
        f"{args.block_size} tokens (training loss {sum(losses[:10]) / 10:.2f} -> {sum(losses[-10:]) / 10:.2f}). "
        f"Held out: {len(held_blocks)} blocks of chapters never trained on. Unmerged MoL model: held-out MLM loss "
        f"{base['mlm_loss']:.4f} (perplexity {math.exp(base['mlm_loss']):.1f}), "
        f"{count_parameters(model).unique:,} parameters; plain backbone {plain_params:,}.",
        "",
        "| weights | space | form | cosine (mean) | cosine (min) | held-out MLM loss | Δ loss | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        lines.append(f"| {v['weights']} | {v['space']} | {v['form']} | {v['cos_mean']:.5f} | {v['cos_min']:.4f} | "
                     f"{v['mlm_loss']:.4f} | {v['mlm_loss'] - base['mlm_loss']:+.4f} | {v['params']:,} |")
    lines += [
        "",
        f"Deployment of the folded model on {len(texts)} held-out texts (padded batches of 16): ONNX Runtime fp32 vs "
        f"PyTorch max |diff| {max(onnx_fp32.values()):.2e}; int8 (dynamic) sentence embeddings (mean pooling) "
        f"cosine with fp32: mean {onnx_int8['mean_cosine']:.5f}, min {onnx_int8['min_cosine']:.5f}.",
    ]
    table = "\n".join(lines)
    (out / "report.md").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps({"args": vars(args), "unmerged": base, "plain_params": plain_params,
                                                 "train_losses": losses, "variants": variants,
                                                 "onnx_fp32_max_abs_diff": onnx_fp32, "onnx_int8": onnx_int8},
                                                indent=2))
    print(table)


if __name__ == "__main__":
    main()
