"""Test-suite settings: one torch thread unless ``GNN_TEST_THREADS`` says otherwise.

The tests check results, not speed. On a machine whose cores are busy with other jobs, OpenMP
threads waiting on each other made the sampled-GraphSAGE accuracy gate take 484 s with two
threads instead of about 40 s with one.
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _test_threads() -> None:
    torch.set_num_threads(int(os.environ.get("GNN_TEST_THREADS", "1")))
