"""Security: a tampered Planetoid file or processed cache never runs code.

Each payload, if unpickled normally, writes a marker file; the tests check that loading refuses
it with a clear one-line error and that the marker is never created.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
from pathlib import Path

import pytest
import torch

from gnn.cli import main
from gnn.data import cache_dir, load_planetoid
from gnn.errors import DataError


class ExecPayload:
    """``builtins.exec``: a global from a module whose containers are allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class SystemPayload(ExecPayload):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class NestedPayload(ExecPayload):
    """The payload hidden inside an otherwise plausible container."""

    def __reduce__(self):
        return (dict, ([("format", "csr"), ("data", ExecPayload(self.marker))],))


PAYLOADS = [ExecPayload, SystemPayload, NestedPayload]


def plant(root: Path, payload: ExecPayload, file: str = "ind.cora.x") -> None:
    (root / "Cora" / "raw" / file).write_bytes(pickle.dumps(payload, protocol=2))


def no_cache_left() -> bool:
    """Nothing processed was kept, not even a temporary folder."""
    return not any(p for p in (cache_dir() / "planetoid").glob("*") if p.suffix != ".lock")


@pytest.mark.parametrize("kind", PAYLOADS, ids=lambda k: k.__name__)
def test_payloads_are_live(kind: type[ExecPayload], tmp_path: Path) -> None:
    """Guard against a vacuous test: plain pickle really runs each payload."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(kind(marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("trust_data", [False, True])
@pytest.mark.parametrize("kind", PAYLOADS, ids=lambda k: k.__name__)
def test_planted_pickle_is_refused(root: Path, tmp_path: Path, kind: type[ExecPayload],
                                   trust_data: bool) -> None:
    marker = tmp_path / "marker"
    plant(root, kind(marker))
    expected = "unsafe raw file ind.cora.x: refused" if trust_data else "SHA-256 mismatch"
    warns = pytest.warns(UserWarning, match="SHA-256 mismatch") if trust_data \
        else contextlib.nullcontext()
    with warns, pytest.raises(DataError, match=expected) as info:
        load_planetoid("Cora", root, download=False, trust_data=trust_data)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    assert no_cache_left()


@pytest.mark.parametrize("trust", [[], ["--trust-data"]])
def test_planted_pickle_cli_exits_2(root: Path, tmp_path: Path, trust: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    marker, out = tmp_path / "marker", tmp_path / "out.json"
    plant(root, ExecPayload(marker))
    code = main(["train", "--root", str(root), "--epochs", "1", "--json", str(out), *trust])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gnn: error: ")
    assert ("unsafe raw file" if trust else "SHA-256 mismatch") in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("file", ["ind.cora.x", "ind.cora.graph", "ind.cora.test.index"])
def test_one_byte_flip_is_refused_by_hash(root: Path, file: str) -> None:
    path = root / "Cora" / "raw" / file
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"SHA-256 mismatch for {file}.*--trust-data"):
        load_planetoid("Cora", root, download=False)
    assert no_cache_left()


def test_flip_plus_payload_with_trust_data_still_refused(root: Path, tmp_path: Path) -> None:
    """--trust-data only skips the hash check: a flipped file set that also carries a payload
    is still read through the restricted unpickler."""
    raw = root / "Cora" / "raw"
    y = bytearray((raw / "ind.cora.y").read_bytes())
    y[-10] ^= 0x01
    (raw / "ind.cora.y").write_bytes(bytes(y))
    marker = tmp_path / "marker"
    plant(root, ExecPayload(marker), file="ind.cora.graph")
    with pytest.warns(UserWarning, match="ind.cora.y, ind.cora.graph"), \
            pytest.raises(DataError, match="unsafe raw file ind.cora.graph: refused to load"):
        load_planetoid("Cora", root, download=False, trust_data=True)
    assert not marker.exists()
    assert no_cache_left()


@pytest.mark.parametrize("name", ["data.pt", "pre_transform.pt", "pre_filter.pt"])
def test_planted_processed_cache_file_is_not_unpickled(root: Path, tmp_path: Path,
                                                      name: str) -> None:
    """PyG itself reads pre_transform.pt / pre_filter.pt with weights_only=False; a payload
    planted in the cache is never unpickled: the cache no longer matches its manifest, so it
    is removed and rebuilt with one warning."""
    assert load_planetoid("Cora", root, download=False).num_nodes == 2708
    [processed] = (cache_dir() / "planetoid").glob("Cora-*/Cora/processed")
    marker = tmp_path / "marker"
    torch.save(ExecPayload(marker), processed / name)
    with pytest.warns(UserWarning, match="removed and rebuilt: its files differ"):
        assert load_planetoid("Cora", root, download=False).num_nodes == 2708
    assert not marker.exists()
    assert not (processed / name).exists() or name == "data.pt"


def test_cache_is_keyed_by_raw_hashes(root: Path) -> None:
    """Changed raw files (accepted with --trust-data) get their own processed cache; the
    cache of the public files is never served for them."""
    first = load_planetoid("Cora", root, download=False)
    y = root / "Cora" / "raw" / "ind.cora.ty"
    blob = bytearray(y.read_bytes())
    blob[-10] ^= 0x01  # inside the label array: still a valid pickle
    y.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="SHA-256 mismatch for ind.cora.ty"):
        second = load_planetoid("Cora", root, download=False, trust_data=True)
    assert len([p for p in (cache_dir() / "planetoid").glob("Cora-*") if p.is_dir()]) == 2
    assert first.raw_sha256["ty"] != second.raw_sha256["ty"]
