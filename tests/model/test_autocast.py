"""autocast_disabled: a region that keeps its inputs' dtypes under autocast, and costs nothing outside it."""

import contextlib

import torch

from modernalbert.model.autocast import autocast_disabled


def test_the_region_computes_in_fp32_under_bf16_autocast():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16  # what the region protects against
        with autocast_disabled(a.device.type):
            inside = a @ b
        assert torch.is_autocast_enabled("cpu")  # switched back on after the region
    assert inside.dtype == torch.float32 and torch.equal(inside, a @ b)


def test_outside_autocast_and_on_devices_without_it_the_region_is_a_no_op():
    assert isinstance(autocast_disabled("cpu"), contextlib.nullcontext)
    assert isinstance(autocast_disabled("meta"), contextlib.nullcontext)
