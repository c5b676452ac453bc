"""Shared fixtures of the evaluation tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models here are small: intra-op threads cost more in synchronisation than they save, and OpenMP spin-waits
    # make a shared, busy 2-core runner many times slower when threads outnumber free cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
