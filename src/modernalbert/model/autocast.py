"""Regions that must keep their own dtypes whatever the caller's autocast state (fp32 statistics and similarities).

With the model because the model file imports it: ``save_pretrained`` ships this file next to ``modeling.py`` as Hub
remote code, which may import nothing else of the package."""

from __future__ import annotations

import contextlib


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A region computed in the dtypes of its inputs: autocast switched off where it is on, a no-op otherwise.

    For values that must be fp32 whatever the caller's autocast state (router statistics, as in Switch / ST-MoE;
    similarity matrices of contrastive losses): cast the inputs with ``.float()`` inside the region. A traced graph
    (torch.export / ONNX) never runs under autocast, so it never holds the region; device types without autocast
    (e.g. ``meta``) are a no-op too.

    Args:
        device_type: The device type of the tensors in the region (``x.device.type``).

    Returns:
        ``torch.autocast(device_type, enabled=False)`` where autocast is on, else a ``contextlib.nullcontext``.
    """
    import torch  # here, not at module level: the utils package imports nothing heavy

    # torch.is_autocast_enabled, not torch.amp.is_autocast_available: torch.compile before 2.13 cannot trace the
    # latter (a graph break inside every MoL layer); a device type without autocast raises instead.
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


__all__ = ["autocast_disabled"]
