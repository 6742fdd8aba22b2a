"""Data: the public split, the split checks, clear errors for missing or corrupt files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Data

from gnn.data import check_split, load_planetoid, raw_file_names
from gnn.errors import DataError


def test_cora_public_split(cora: Data) -> None:
    assert cora.num_nodes == 2708 and cora.num_features == 1433
    sizes = [int(cora[f"{s}_mask"].sum()) for s in ("train", "val", "test")]
    assert sizes == [140, 500, 1000]
    assert not (cora.train_mask & cora.val_mask).any()
    assert not (cora.train_mask & cora.test_mask).any()
    assert not (cora.val_mask & cora.test_mask).any()
    check_split(cora, (140, 500, 1000))


def test_normalize_features_rows_sum_to_one(cora: Data) -> None:
    sums = cora.x.sum(dim=1)
    nonzero = sums > 0
    assert torch.allclose(sums[nonzero], torch.ones(int(nonzero.sum())), atol=1e-5)


def _masks(n: int, train: list[int], val: list[int], test: list[int]) -> Data:
    data = Data(num_nodes=n)
    for name, idx in (("train", train), ("val", val), ("test", test)):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[idx] = True
        data[f"{name}_mask"] = mask
    return data


@st.composite
def split_indices(draw: st.DrawFn) -> tuple[int, list[int], list[int], list[int]]:
    n = draw(st.integers(3, 50))
    perm = draw(st.permutations(range(n)))
    a = draw(st.integers(1, n - 2))
    b = draw(st.integers(a + 1, n - 1))
    return n, list(perm[:a]), list(perm[a:b]), list(perm[b:])


@given(split_indices())
def test_check_split_accepts_disjoint(split: tuple[int, list[int], list[int], list[int]]) -> None:
    check_split(_masks(*split))


@given(split_indices(), st.sampled_from(["train", "val", "test"]),
       st.sampled_from(["train", "val", "test"]), st.data())
def test_check_split_rejects_overlap(split, a: str, b: str, data: st.DataObject) -> None:
    if a == b:
        return
    n, *idx = split
    masks = _masks(n, *idx)
    node = data.draw(st.sampled_from(masks[f"{a}_mask"].nonzero().view(-1).tolist()))
    masks[f"{b}_mask"][node] = True
    with pytest.raises(DataError, match="overlap"):
        check_split(masks)


@given(split_indices(), st.sampled_from(["train", "val", "test"]))
def test_check_split_rejects_empty(split, which: str) -> None:
    masks = _masks(*split)
    masks[f"{which}_mask"][:] = False
    with pytest.raises(DataError, match="empty"):
        check_split(masks)


@given(split_indices(), st.sampled_from(["train", "val", "test"]), st.integers(1, 5))
def test_check_split_rejects_wrong_length(split, which: str, extra: int) -> None:
    masks = _masks(*split)
    masks[f"{which}_mask"] = torch.cat([masks[f"{which}_mask"], torch.zeros(extra, dtype=bool)])
    with pytest.raises(DataError, match="shape"):
        check_split(masks)


@settings(max_examples=20)
@given(split_indices(), st.sampled_from(["train", "val", "test"]))
def test_check_split_rejects_non_boolean(split, which: str) -> None:
    masks = _masks(*split)
    masks[f"{which}_mask"] = masks[f"{which}_mask"].long()
    with pytest.raises(DataError, match="boolean"):
        check_split(masks)


def test_check_split_rejects_wrong_public_sizes(cora: Data) -> None:
    with pytest.raises(DataError, match="public split"):
        check_split(cora, (20, 500, 1000))


def test_missing_files_error_names_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_planetoid("CiteSeer", tmp_path, download=False)
    message = str(info.value)
    for name in raw_file_names("CiteSeer"):
        assert name in message
    assert "--root" in message and "GNN_DATA_ROOT" in message
    assert "\n" not in message


def _copy_raw(data_root: Path, dest: Path) -> Path:
    source = next(data_root.glob("**/Cora/raw"))
    target = dest / "Cora" / "raw"
    shutil.copytree(source, target)
    for f in target.iterdir():
        f.chmod(0o644)
    return target


def test_read_only_root_is_processed_in_cache(data_root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _copy_raw(data_root, tmp_path / "ro")
    for f in raw.iterdir():
        f.chmod(0o444)
    raw.chmod(0o555)
    monkeypatch.setenv("GNN_CACHE_DIR", str(tmp_path / "cache"))
    try:
        data = load_planetoid("cora", tmp_path / "ro", download=False)
    finally:
        raw.chmod(0o755)
    assert data.num_nodes == 2708
    assert not (tmp_path / "ro" / "Cora" / "processed").exists()
    assert any((tmp_path / "cache").glob("planetoid/Cora-*/Cora/processed/data.pt"))


def test_root_from_environment(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNN_DATA_ROOT", str(data_root))
    assert load_planetoid("Cora").num_nodes == 2708


def test_truncated_raw_file_gives_clear_error_and_no_cache(data_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _copy_raw(data_root, tmp_path / "root")
    target = raw / "ind.cora.allx"
    target.write_bytes(target.read_bytes()[:1000])
    monkeypatch.setenv("GNN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="ind.cora.allx|truncated or corrupt"):
        load_planetoid("Cora", tmp_path / "root", download=False, trust_data=True)
    leftovers = [p for p in (tmp_path / "cache").glob("planetoid/*") if p.suffix != ".lock"]
    assert leftovers == []
