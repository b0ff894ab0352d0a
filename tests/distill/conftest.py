"""Fixtures of the pure-library tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread for the test. Tiny tensors: one thread is faster, and robust on
    a busy machine (OpenMP threads spin-waiting for a descheduled sibling made these tests
    50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
