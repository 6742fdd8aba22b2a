"""The processed cache: a file that does not match the manifest, does not load, or fails the
structural checks is removed and rebuilt with one warning; raw data accepted with
``--trust-data`` is checked before it is cached; stale build folders go; fills serialise."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import pytest
import torch

from gnn.cli import main
from gnn.data import cache_dir, check_graph, load_planetoid
from gnn.errors import DataError


def processed_file(root: Path) -> Path:
    load_planetoid("Cora", root, download=False)
    [path] = (cache_dir() / "planetoid").glob("Cora-*/Cora/processed/data.pt")
    return path


def forge(path: Path, change) -> None:
    """Rewrite the processed file as a well-formed one with ``change`` applied to the data."""
    data_dict, slices, cls = torch.load(path, weights_only=True)
    change(data_dict)
    torch.save((data_dict, slices, cls), path)


FORGERIES = {
    "all labels 0": lambda d: d["y"].zero_(),
    "labels shifted": lambda d: d.__setitem__("y", (d["y"] + 1) % 7),
    "features cut": lambda d: d.__setitem__("x", d["x"][:, :10].contiguous()),
    "masks overlap": lambda d: d["val_mask"].__setitem__(slice(0, 140), True),
    "edge past N": lambda d: d["edge_index"].__setitem__((0, 0), 99_999),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_processed_file_is_rebuilt(root: Path, forgery: str) -> None:
    reference = load_planetoid("Cora", root, download=False)
    forge(processed_file(root), FORGERIES[forgery])
    with pytest.warns(UserWarning, match="removed and rebuilt"):
        data = load_planetoid("Cora", root, download=False)
    assert torch.equal(data.y, reference.y) and torch.equal(data.x, reference.x)
    assert torch.equal(data.edge_index, reference.edge_index)


@pytest.mark.parametrize("content", [5, {"x": 1}, (1, 2, 3), "text"])
def test_foreign_processed_file_is_rebuilt(root: Path, content: object) -> None:
    path = processed_file(root)
    torch.save(content, path)
    with pytest.warns(UserWarning, match="removed and rebuilt"):
        assert load_planetoid("Cora", root, download=False).num_nodes == 2708


def test_matching_manifest_does_not_hide_a_broken_structure(root: Path) -> None:
    """Even with a manifest rewritten to match, structural checks run on every load."""
    import hashlib
    import json

    path = processed_file(root)
    forge(path, FORGERIES["edge past N"])
    manifest = path.parents[2] / "manifest.json"
    entry = json.loads(manifest.read_text())
    entry["processed_sha256"]["data.pt"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(entry))
    with pytest.warns(UserWarning, match="edge_index holds node 99999"):
        assert load_planetoid("Cora", root, download=False).num_nodes == 2708


def test_the_cli_shows_one_warning_line_then_trains(root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    forge(processed_file(root), FORGERIES["all labels 0"])
    assert main(["train", "--root", str(root), "--epochs", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gnn: warning: Cora: processed cache"), err


def test_trusted_raw_files_are_checked_before_caching(root: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A flipped byte in ind.cora.graph makes an edge to a node that does not exist; with
    --trust-data that is refused in one line and nothing is cached."""
    graph = root / "Cora" / "raw" / "ind.cora.graph"
    adjacency = pickle.loads(graph.read_bytes(), encoding="latin1")
    adjacency[0] = [*adjacency[0], 63163]
    graph.write_bytes(pickle.dumps(adjacency, protocol=2))
    assert main(["train", "--root", str(root), "--epochs", "1", "--trust-data"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("gnn: warning: Cora: SHA-256 mismatch for ind.cora.graph")
    assert lines[-1].startswith("gnn: error: Cora: raw files fail the structural checks")
    assert "63163" in lines[-1] and len(lines) == 2
    assert not [p for p in (cache_dir() / "planetoid").glob("*") if p.suffix != ".lock"]


def test_stale_build_folder_is_removed(root: Path) -> None:
    processed_file(root)
    [work] = [p for p in (cache_dir() / "planetoid").glob("Cora-*") if p.is_dir()]
    stale = work.parent / f".{work.name}-killed"
    (stale / "Cora" / "raw").mkdir(parents=True)
    load_planetoid("Cora", root, download=False)
    assert not stale.exists()


def _load_in_child(root: str, cache: str, queue: multiprocessing.Queue) -> None:
    import os

    os.environ["GNN_CACHE_DIR"] = cache
    try:
        queue.put(load_planetoid("Cora", root, download=False).num_nodes)
    except Exception as exc:  # reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_fills_serialise(root: Path) -> None:
    """Four processes fill one empty cache at once: all get the dataset, one folder results."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_load_in_child, args=(str(root), str(cache_dir()), queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [2708] * 4
    assert len([p for p in (cache_dir() / "planetoid").glob("*") if p.is_dir()]) == 1


def test_check_graph_names_the_problem(cora) -> None:
    bad = cora.clone()
    bad.y = bad.y.float()
    with pytest.raises(DataError, match="labels must be a long"):
        check_graph(bad)
    check_graph(cora)


def test_unreadable_manifest_is_one_warning(root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest that cannot be read (here a folder) is one warning, then a rebuild."""
    processed_file(root)
    [work] = [p for p in (cache_dir() / "planetoid").glob("Cora-*") if p.is_dir()]
    (work / "manifest.json").unlink()
    (work / "manifest.json").mkdir()
    assert main(["train", "--root", str(root), "--epochs", "1"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "removed and rebuilt" in err[0], err
