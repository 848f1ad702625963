"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test with one torch intra-op thread, restored afterwards.

    Tiny convolutions and patches on a shared 2-core CPU only contend with a second thread (up to 50x slower under
    load); DataLoader workers use one thread too.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
