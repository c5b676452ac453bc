"""Mixed precision for training loops: one accelerate setup per run, whatever precision earlier runs used."""

from __future__ import annotations

from typing import Any

import torch

MIXED_PRECISIONS = ("no", "bf16", "fp16")


def make_accelerator(mixed_precision: str, **kwargs: Any) -> Any:
    """An ``accelerate.Accelerator`` with ``mixed_precision``, on the CPU when no GPU is present.

    accelerate keeps one mixed-precision setting per process (its shared ``AcceleratorState``) and refuses a second
    ``Accelerator`` with another one, so a notebook that fine-tuned in fp32 could not fine-tune in bf16 next. As
    transformers' ``TrainingArguments`` does, the shared accelerator state is then reset first; the process-group state
    (``PartialState``) is kept, so launched multi-process runs are unaffected. Where a GPU is absent, ``cpu=True``
    lets accelerate set up multi-process CPU (gloo) training.

    Args:
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (accelerate's names).
        **kwargs: Passed to ``Accelerator``.

    Returns:
        The accelerator.

    Raises:
        ValueError: An unknown ``mixed_precision``.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r} is invalid: use one of {list(MIXED_PRECISIONS)}.")
    shared = AcceleratorState._shared_state
    initialized = bool(shared) and shared != PartialState._shared_state  # accelerate's own test (state.initialized)
    if initialized and shared.get("_mixed_precision") != mixed_precision:
        # Only when accelerate would refuse: a state set up for this precision (e.g. an FSDP plugin installed by a
        # launcher) is kept as it is.
        AcceleratorState._reset_state(reset_partial_state=False)
    kwargs.setdefault("cpu", not torch.cuda.is_available())
    return Accelerator(mixed_precision=mixed_precision, **kwargs)


__all__ = ["MIXED_PRECISIONS", "make_accelerator"]
