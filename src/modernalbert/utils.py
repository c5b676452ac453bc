"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
from dataclasses import fields
from typing import Any

import torch


def dataclass_from_mapping(cls: type, values: dict[str, Any] | None, *, unknown: str, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping read from YAML or the command line.

    Unknown keys are an error (``unknown`` is the message, with ``{keys}`` for them; the allowed keys are appended),
    and strings are accepted for float fields because YAML 1.1 reads ``5e-4`` (no dot) as a string.

    Args:
        cls: The dataclass.
        values: The mapping (None for all defaults).
        unknown: Message for unknown keys, e.g. ``"Unknown key(s) {keys} in recipe section 'train'"``.
        prefix: Field prefix for value errors, e.g. ``"train"``.
    """
    values = dict(values or {})
    known = {f.name: f for f in fields(cls)}
    extra = sorted(set(values) - set(known))
    if extra:
        raise ValueError(unknown.format(keys=extra) + f": allowed are {sorted(known)}.")
    for name, value in values.items():
        if isinstance(value, str) and "float" in str(known[name].type):
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"{prefix}.{name}={value!r} is invalid: expected a number.") from None
    return cls(**values)


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A region computed in the dtypes of its inputs: autocast switched off where it is on, a no-op otherwise.

    For values that must be fp32 whatever the caller's autocast state (router statistics, as in Switch / ST-MoE;
    similarity matrices of contrastive losses): cast the inputs with ``.float()`` inside the region. A traced graph
    (torch.export / ONNX) never runs under autocast, so it never holds the region; device types without autocast
    (e.g. ``meta``) are a no-op too.

    Args:
        device_type: The device type of the tensors in the region (``x.device.type``).
    """
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
