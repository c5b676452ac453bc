"""Runs a recipe in a subprocess for the training tests (python driver.py RECIPE OUT [options]).

--kill-at-step N     SIGKILL this process right after step N (after that step's checkpoint, if any)
--grads FILE         rank 0 writes the first step's (averaged) gradients to FILE (safetensors)
Every step's losses are appended to OUT/steps-rank{R}.jsonl as they happen.
"""

import argparse
import json
import os
import signal
from pathlib import Path

from safetensors.torch import save_file

from modernalbert.training.recipe import Recipe
from modernalbert.training.trainer import pretrain


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--kill-at-step", type=int)
    ap.add_argument("--grads")
    args = ap.parse_args()
    recipe = Recipe.load(args.recipe, args.overrides)
    rank = int(os.environ.get("RANK", "0"))
    log = Path(recipe.output_dir) / f"steps-rank{rank}.jsonl"

    def on_step_end(step, losses):
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(json.dumps({"step": step, **losses}) + "\n")
        if args.kill_at_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_first_gradients(grads):
        if args.grads:
            save_file({k: v.contiguous() for k, v in grads.items()}, args.grads)

    pretrain(recipe, on_first_gradients=on_first_gradients, on_step_end=on_step_end)


if __name__ == "__main__":
    main()
