"""``modernalbert routing-report MODEL --text FILE ...``: expert usage, router entropy and balance on text files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_OUT = "runs/routing-report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``routing-report`` options on ``parser``."""
    parser.add_argument("model", metavar="MODEL", help="folder of a saved ModernAlbert model (save_pretrained)")
    parser.add_argument("--text", nargs="+", required=True, metavar="FILE",
                        help="text files, one text per non-empty line")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"output folder for routing.json and routing.png (default: {DEFAULT_OUT})")
    parser.add_argument("--tokenizer", default=None, metavar="PATH", help="tokenizer folder (default: MODEL)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: 16)")
    parser.add_argument("--max-length", type=int, default=128, help="truncation length in tokens (default: 128)")
    parser.add_argument("--top-tokens", type=int, default=10, help="preferred tokens listed per expert (default: 10)")
    parser.add_argument("--min-count", type=int, default=3,
                        help="occurrences a token needs before it is ranked (default: 3)")


def _load(model_path: str, tokenizer_path: str | None) -> tuple[Any, Any]:
    from ..model.loading import load_pretrained, load_tokenizer

    model = load_pretrained(model_path)  # the saved head class: no "unexpected keys" noise
    try:
        tokenizer = load_tokenizer(tokenizer_path or model_path)
    except ValueError as err:
        raise ValueError(f"{err}{'' if tokenizer_path else ' Or pass --tokenizer PATH.'}") from err
    return model, tokenizer


def run(args: argparse.Namespace) -> int:
    """Load the model and tokenizer, write the report, print a short table; returns the exit code."""
    from ..data.text import read_texts

    texts = read_texts(args.text)  # cheap checks before the model loads
    model, tokenizer = _load(args.model, args.tokenizer)

    from ..analysis.routing import REPORT_JSON, REPORT_PNG, routing_report

    report = routing_report(model, tokenizer, texts, args.out, batch_size=args.batch_size,
                            max_length=args.max_length, top_tokens=args.top_tokens, min_count=args.min_count)
    s = report["summary"]
    print(f"{s['model_class']}: E={s['num_experts']}, k={s['top_k']}, {s['num_texts']} texts, "
          f"{s['num_tokens']} tokens")
    print(f"{'layer':>5} {'group':>5} {'pos':>3}  {'usage per expert':<{6 * s['num_experts']}} "
          f"{'entropy':>7} {'/ln E':>5} {'balance':>7}")
    for r in report["positions"]:
        usage = " ".join(f"{u:5.3f}" for u in r["expert_usage"])
        print(f"{r['layer']:>5} {r['group']:>5} {r['position']:>3}  {usage:<{6 * s['num_experts']}} "
              f"{r['router_entropy']:7.3f} {r['router_entropy_normalized']:5.2f} {r['balance']:7.3f}")
    out = Path(args.out)
    print(f"wrote {out / REPORT_JSON}")
    print(f"wrote {out / REPORT_PNG}")
    return 0
