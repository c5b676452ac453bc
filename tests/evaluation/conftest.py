"""Shared fixtures of the evaluation tests."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every evaluation test runs its small models on one thread (see ``tests.conftest.one_thread``)."""
    yield
