"""Shared fixtures for tests/ and benchmarks/: the device parametrisation, the Cora dataset and
an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"


#: CPU always; CUDA runs for real where a GPU is visible and skips, saying why, elsewhere.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA not available")),
]


@pytest.fixture(scope="session", params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Session-scoped so hypothesis tests may take it (it holds no state)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def data_root(_isolated_cache: None) -> Path:
    """Where the Planetoid raw files are, found as the loader finds them (``GNN_DATA_ROOT``,
    else the project's ``../shared/data`` when present, else the user cache, downloading when
    online). Only the loader's own "raw files not found" error (offline, no files) skips, and
    under CI it fails, so CI can never pass by skipping the accuracy gates."""
    from gnn.data import load_planetoid, resolve_root
    from gnn.errors import DataError

    root = os.environ.get("GNN_DATA_ROOT") or (str(SHARED_DATA) if SHARED_DATA.is_dir()
                                               else None)
    try:
        load_planetoid("Cora", root)
    except DataError as exc:
        if "raw files not found" not in str(exc):
            raise
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    return resolve_root(root)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Process datasets in a private cache so tests never touch the user's."""
    if "GNN_CACHE_DIR" not in os.environ:
        os.environ["GNN_CACHE_DIR"] = str(tmp_path_factory.mktemp("gnn-cache"))


@pytest.fixture(scope="session")
def cora(data_root: Path):
    from gnn.config import DataConfig
    from gnn.data import load_dataset

    return load_dataset(DataConfig(name="Cora", root=str(data_root)))
