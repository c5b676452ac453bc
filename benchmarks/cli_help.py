"""How long ``modernalbert --help`` takes, against a bare ``python -c pass`` timed in the same run, interleaved.

Each round starts, in a rotating order, a fresh interpreter for: the baseline (``python -c pass``), the ``modernalbert``
command as its console script runs it (``from modernalbert_cli import main``: the light entry point, which imports
no command module, torch or transformers), and, for reference, ``python -m modernalbert.cli.main --help`` (the
module form used by ``accelerate launch -m``, which imports the package first). Printed: the median seconds of each,
and per-round paired differences (median, range) and ratios against the baseline (median, bootstrap 95 %
interval, range).

    python benchmarks/cli_help.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import paired_ratios, time_interleaved

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "modernalbert --help": [sys.executable, "-c", "import sys; from modernalbert_cli import main; sys.exit(main())",
                            "--help"],
    "python -m modernalbert.cli.main --help": [sys.executable, "-m", "modernalbert.cli.main", "--help"],
}


def _runner(cmd: list[str]):
    def run() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (one start of each command)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    times, _ = time_interleaved({name: _runner(cmd) for name, cmd in COMMANDS.items()}, 1, args.rounds)
    base = times["python -c pass"]
    print(f"Interpreter starts, {args.rounds} interleaved rounds after one warm-up each ({sys.executable})")
    print("| command | median s | extra s over python -c pass (median; range) | time vs python -c pass (95% CI) "
          "| range |")
    print("|---|---|---|---|---|")
    results = {}
    for name, ts in times.items():
        extra = [t - b for t, b in zip(ts, base, strict=True)]
        st = paired_ratios(base, ts, speedup=False)
        print(f"| {name} | {statistics.median(ts):.3f} | {statistics.median(extra):+.3f}; "
              f"{min(extra):+.3f}–{max(extra):+.3f} | "
              f"{st['ratio']:.2f}× ({st['ci'][0]:.2f}–{st['ci'][1]:.2f}) | {st['range'][0]:.2f}–{st['range'][1]:.2f} |")
        results[name] = {"seconds": ts, "median_s": statistics.median(ts), "ratio": st["ratio"], "ci": st["ci"]}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
