"""FSDP runs for the training tests, under torchrun with 2 CPU processes (gloo):
python fsdp_driver.py RECIPE OUT [section.key=value ...].

1. A run on OUT/locked, whose lock the test holds: every process must stop with the holder's message (written to
   OUT/locked-rank{R}.txt), none may hang.
2. An uninterrupted run on OUT/straight.
3. A run on OUT/resumed stopped after 6 steps (its checkpoint: step 4), then the same command again: it resumes the
   sharded model and optimizer state with DCP.
Every step's losses go to <run>/steps-rank{R}.jsonl.

accelerate sets FSDP up only on accelerator devices (``AcceleratorState`` honours ``ACCELERATE_USE_FSDP`` and the
FSDP plugin for GPU-like multi-device types, not for ``MULTI_CPU``). On CPU this driver does what accelerate does
there: it installs the FSDP plugin (FSDP2, ``fully_shard`` of the root module) on the shared state before the trainer
builds its ``Accelerator``, which then prepares, clips, gathers and saves exactly as under
``accelerate launch --use_fsdp --fsdp_version 2`` on GPUs.
"""

import json
import os
import sys
from pathlib import Path

import torch


def enable_fsdp_on_cpu() -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    Accelerator(cpu=True)  # the process group (gloo) and the shared state
    AcceleratorState().fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="NO_WRAP")
    for state in (AcceleratorState._shared_state, PartialState._shared_state):  # as accelerate/state.py does on GPUs
        state["distributed_type"] = DistributedType.FSDP


def main() -> None:
    from modernalbert.training.recipe import Recipe
    from modernalbert.training.trainer import pretrain
    from modernalbert.utils.locking import FolderLockedError

    recipe_path, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    enable_fsdp_on_cpu()
    rank = int(os.environ["RANK"])

    def recipe(name: str) -> Recipe:
        return Recipe.load(recipe_path, [*overrides, f"output_dir={out / name}"])

    def logger(name: str):
        def on_step_end(step, losses):
            with (out / name / f"steps-rank{rank}.jsonl").open("a") as fh:
                fh.write(json.dumps({"step": step, **losses}) + "\n")
        return on_step_end

    try:
        pretrain(recipe("locked"))
        message = "not refused"
    except FolderLockedError as err:
        message = str(err)
    (out / f"locked-rank{rank}.txt").write_text(message)
    pretrain(recipe("straight"), on_step_end=logger("straight"))
    pretrain(recipe("resumed"), on_step_end=logger("resumed"), stop_after_steps=6)
    pretrain(recipe("resumed"), on_step_end=logger("resumed"))


if __name__ == "__main__":
    main()
