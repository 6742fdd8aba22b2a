"""Test-suite settings: one torch thread unless ``GNN_TEST_THREADS`` says otherwise.

The tests check results, not speed. On a machine whose cores are busy with other jobs, OpenMP
threads waiting on each other made the sampled-GraphSAGE accuracy gate take 484 s with two
threads instead of about 40 s with one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _test_threads() -> None:
    torch.set_num_threads(int(os.environ.get("GNN_TEST_THREADS", "1")))


@pytest.fixture()
def root(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of Cora's raw files and a private cache, so nothing leaks."""
    monkeypatch.setenv("GNN_CACHE_DIR", str(tmp_path / "cache"))
    from gnn.data import raw_file_names

    source = next(data_root.glob("**/Cora/raw"))
    raw = tmp_path / "root" / "Cora" / "raw"
    raw.mkdir(parents=True)
    for name in raw_file_names("Cora"):
        shutil.copyfile(source / name, raw / name)
    return tmp_path / "root"
