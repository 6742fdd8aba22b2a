""".npz graphs (Amazon, Coauthor, CitationFull): read without unpickling, random splits only,
the usual one-line errors offline. The files are written here in the published format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from gnn.cli import main
from gnn.config import Config, DataConfig
from gnn.data import NPZ, load_dataset
from gnn.errors import ConfigError, DataError
from tests.test_cli import run_error


def write_graph_npz(path: Path, num_nodes: int = 60, num_classes: int = 3, seed: int = 0,
                    **extra: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """A random graph in the published layout: CSR adjacency and attributes, integer labels
    (edges one way only and a self-loop, which the reader must symmetrise and drop)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_nodes) % num_classes
    rows = rng.integers(0, num_nodes, 4 * num_nodes)
    cols = rng.integers(0, num_nodes, 4 * num_nodes)
    adj = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)),
                        shape=(num_nodes, num_nodes))
    adj = sp.csr_matrix(adj + sp.csr_matrix(([1.0], ([0], [0])), shape=adj.shape))
    attr = sp.random(num_nodes, 12, density=0.3, format="csr", random_state=seed,
                     dtype=np.float32)
    arrays = {"adj_data": adj.data, "adj_indices": adj.indices, "adj_indptr": adj.indptr,
              "adj_shape": np.array(adj.shape), "attr_data": attr.data,
              "attr_indices": attr.indices, "attr_indptr": attr.indptr,
              "attr_shape": np.array(attr.shape), "labels": labels, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return labels, adj


def photo_path(root: Path) -> Path:
    return root / "Amazon-Photo" / "raw" / "amazon_electronics_photo.npz"


def photo(root: Path, **overrides: object) -> DataConfig:
    return Config().override({"data.name": "amazon-photo", "data.root": str(root),
                              "data.split": "random", "data.train_per_class": 3,
                              "data.val_per_class": 4, "data.download": False,
                              **overrides}).data


def test_reads_the_published_layout_undirected_without_self_loops(tmp_path: Path) -> None:
    labels, adj = write_graph_npz(photo_path(tmp_path))
    data = load_dataset(photo(tmp_path, **{"data.normalize_features": False}))
    assert data.name == "Amazon-Photo" and data.num_nodes == 60
    assert torch.equal(data.y, torch.from_numpy(labels).long())
    edges = {tuple(e) for e in data.edge_index.t().tolist()}
    assert all((b, a) in edges for a, b in edges) and all(a != b for a, b in edges)
    expected = {(int(a), int(b)) for a, b in zip(*adj.nonzero(), strict=True) if a != b}
    assert edges == expected | {(b, a) for a, b in expected}
    assert set(data.x.unique().tolist()) <= {0.0, 1.0}  # binarised, as PyG reads them
    for c in range(3):
        assert int((data.train_mask & (data.y == c)).sum()) == 3
        assert int((data.val_mask & (data.y == c)).sum()) == 4
    assert list(data.raw_sha256) == ["amazon_electronics_photo.npz"]


def test_pyg_layout_of_the_family_is_found_too(tmp_path: Path) -> None:
    write_graph_npz(tmp_path / "Coauthor" / "CS" / "raw" / "ms_academic_cs.npz")
    data = load_dataset(photo(tmp_path, **{"data.name": "Coauthor-CS"}))
    assert data.name == "Coauthor-CS"


def test_pickled_arrays_are_refused_not_run(tmp_path: Path) -> None:
    """A file whose labels are pickled objects is refused by numpy's allow_pickle=False; the
    object's reduce hook (which would run on unpickling) never runs."""
    path = photo_path(tmp_path)
    ran = tmp_path / "ran"
    write_graph_npz(path, labels=np.array([_Trap(ran)] * 60, dtype=object))
    with pytest.raises(DataError, match="refused an array stored as pickled Python objects"):
        load_dataset(photo(tmp_path))
    assert not ran.exists()


class _Trap:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_extra_pickled_arrays_the_graph_does_not_need_are_left_alone(tmp_path: Path) -> None:
    write_graph_npz(photo_path(tmp_path),
                    idx_to_class=np.array([{"a": 1}], dtype=object))
    assert load_dataset(photo(tmp_path)).num_nodes == 60


@pytest.mark.parametrize(("content", "message"), [
    (b"not a zip", "truncated or not an .npz file"),
    (None, "is not a graph .npz file (no labels array)"),
])
def test_bad_files_are_one_clear_error(tmp_path: Path, content: bytes | None,
                                       message: str) -> None:
    path = photo_path(tmp_path)
    if content is None:
        path.parent.mkdir(parents=True)
        np.savez(path, adj_data=np.ones(1))
        message = "is not a graph .npz file (no adj_indices array)"
    else:
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(photo(tmp_path))


def test_offline_is_the_usual_one_line_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from torch_geometric.io import fs

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("offline (test)")

    monkeypatch.setattr(fs, "cp", offline)
    with pytest.raises(DataError, match=r"Amazon-Photo: raw file not found \(download failed: "
                                        r"OSError\); looked for amazon_electronics_photo.npz"):
        load_dataset(photo(tmp_path, **{"data.download": True}))
    assert not list((tmp_path / "Amazon-Photo" / "raw").glob("*"))
    with pytest.raises(DataError, match="downloads disabled"):
        load_dataset(photo(tmp_path))


def test_npz_graphs_have_no_public_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.split: Amazon-Photo has no public split"):
        load_dataset(photo(tmp_path, **{"data.split": "public"}))


def test_every_family_is_registered() -> None:
    assert {s.family for s in NPZ.values()} == {"Amazon", "Coauthor", "CitationFull"}
    assert len(NPZ) == 9


def test_cli_trains_and_benches_an_npz_graph(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_graph_npz(photo_path(tmp_path), num_nodes=180)  # 20 + 30 per class and more
    out = tmp_path / "r.json"
    common = ["--dataset", "Amazon-Photo", "--root", str(tmp_path)]
    assert main(["train", "--model", "gcn", *common, "--split", "random", "--epochs", "3",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["dataset"] == "Amazon-Photo"
    err = run_error(capsys, ["train", "--model", "gcn", *common, "--epochs", "3"])
    assert "data.split: Amazon-Photo has no public split" in err
    bench = tmp_path / "bench"
    assert main(["bench", "--models", "gcn", "lp", *common, "--split", "random", "--splits",
                 "2", "--quick", "--no-progress", "--out", str(bench)]) == 0
    rows = [json.loads(line) for line in (bench / "runs.jsonl").read_text().splitlines()]
    assert {(r["name"], r["split"]) for r in rows} == {(m, s) for m in ("gcn", "lp")
                                                       for s in (0, 1)}
