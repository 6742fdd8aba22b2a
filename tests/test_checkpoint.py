"""Checkpoints: train -> save -> predict reproduces the test accuracy exactly; a checkpoint that
is truncated, foreign or made for another dataset is refused in one line (exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from gnn.cli import main
from gnn.data import KNOWN_SHA256
from gnn.metrics import accuracy
from tests.test_cli import run_error, unwritable_folders
from tests.test_security import ExecPayload

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gcn.yaml"


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short training run saved with --save and --json (shared by the tests here)."""
    folder = tmp_path_factory.mktemp("trained")
    paths = {"ckpt": folder / "model.pt", "json": folder / "result.json"}
    code = main(["train", "--config", str(CONFIG), "--root", str(data_root), "--epochs", "8",
                 "--seed", "1", "--save", str(paths["ckpt"]), "--json", str(paths["json"])])
    assert code == 0
    return paths


def read_predictions(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def test_round_trip_reproduces_test_accuracy(trained: dict[str, Path], cora: Data,
                                             data_root: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(trained["ckpt"]), "--nodes", "test",
                 "--out", str(out), "--root", str(data_root)]) == 0
    assert "1000 predictions for Cora written to" in capsys.readouterr().out
    header, rows = read_predictions(out)
    assert header == ["node", "pred", *(f"prob_{c}" for c in range(7))]
    nodes = torch.tensor([int(r[0]) for r in rows])
    pred = torch.tensor([int(r[1]) for r in rows])
    assert torch.equal(nodes, cora.test_mask.nonzero().view(-1))
    record = json.loads(trained["json"].read_text())
    assert accuracy(pred, cora.y[nodes]) == record["test_acc"]  # exactly, not approximately
    probs = torch.tensor([[float(p) for p in r[2:]] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(rows), dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_checkpoint_holds_weights_config_and_dataset_identity(trained: dict[str, Path]) -> None:
    raw = torch.load(trained["ckpt"], weights_only=True)
    assert raw["format"] == "gnn-checkpoint" and raw["version"] == 1
    assert raw["dataset"] == {"name": "Cora", "sha256": KNOWN_SHA256["Cora"],
                              "num_features": 1433, "num_classes": 7}
    assert raw["config"]["model"]["name"] == "gcn" and raw["config"]["train"]["epochs"] == 8
    record = json.loads(trained["json"].read_text())
    assert raw["metrics"]["test_acc"] == record["test_acc"]
    assert raw["metrics"]["best_epoch"] == record["best_epoch"]
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())
    leftovers = [p.name for p in trained["ckpt"].parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the temporary files of the atomic writes are gone


def test_predict_selected_nodes_to_stdout(trained: dict[str, Path], data_root: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--checkpoint", str(trained["ckpt"]), "--root", str(data_root),
                 "--nodes", "0,5", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("node,pred,prob_0")
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "5", "7"]


def edited(trained: dict[str, Path], tmp_path: Path, edit) -> Path:
    raw = torch.load(trained["ckpt"], weights_only=True)
    edit(raw)
    path = tmp_path / "edited.pt"
    torch.save(raw, path)
    return path


def test_checkpoint_for_another_dataset_shape_is_refused(
        trained: dict[str, Path], data_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = edited(trained, tmp_path, lambda raw: raw["dataset"].update(num_features=500))
    err = run_error(capsys, ["predict", "--checkpoint", str(path), "--root", str(data_root)])
    assert (f"checkpoint {path} is for Cora with 500 features and 7 classes; Cora here has "
            "1433 features and 7 classes") in err


def test_checkpoint_for_other_raw_files_needs_trust_data(
        trained: dict[str, Path], data_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = edited(trained, tmp_path, lambda raw: raw["dataset"]["sha256"].update(x="0" * 64))
    argv = ["predict", "--checkpoint", str(path), "--root", str(data_root), "--nodes", "0"]
    assert "SHA-256 differs for x); pass --trust-data" in run_error(capsys, argv)
    assert main([*argv, "--trust-data"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gnn: warning: checkpoint")


def test_weights_that_do_not_fit_the_config_are_refused(
        trained: dict[str, Path], data_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = edited(trained, tmp_path,
                  lambda raw: raw["config"]["model"].update(hidden_channels=32))
    err = run_error(capsys, ["predict", "--checkpoint", str(path), "--root", str(data_root)])
    assert "weights do not fit model 'gcn' of its config" in err


def test_bad_checkpoint_files_exit_2(trained: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    blob = trained["ckpt"].read_bytes()
    marker = tmp_path / "marker"
    files = {
        "truncated.pt": blob[: len(blob) // 2],
        "empty.pt": b"",
        "text.pt": b"not a checkpoint\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save(ExecPayload(marker), tmp_path / "payload.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    torch.save({"format": "gnn-checkpoint", "version": 99}, tmp_path / "future.pt")
    expected = {
        "truncated.pt": "is truncated or not a gnn checkpoint",
        "empty.pt": "is truncated or not a gnn checkpoint",
        "text.pt": "is truncated or not a gnn checkpoint",
        "payload.pt": "is truncated or not a gnn checkpoint (UnpicklingError: Weights only",
        "foreign.pt": "is not a gnn checkpoint: no 'gnn-checkpoint' format tag",
        "future.pt": "unsupported version 99",
        "missing.pt": "checkpoint not found:",
    }
    for name, message in expected.items():
        out = tmp_path / f"{name}.csv"
        err = run_error(capsys, ["predict", "--checkpoint", str(tmp_path / name),
                                 "--out", str(out)])
        assert message in err, (name, err)
        assert not out.exists()
    assert "cannot read checkpoint" in run_error(capsys, ["predict", "--checkpoint", "."])
    assert not marker.exists()


def test_bad_nodes_and_unwritable_out_exit_2(trained: dict[str, Path], data_root: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    base = ["predict", "--checkpoint", str(trained["ckpt"]), "--root", str(data_root)]
    assert "--nodes: node 2708 is out of range for Cora (2708 nodes: 0..2707)" in run_error(
        capsys, [*base, "--nodes", "1", "2708"])
    assert "--nodes: node -1 is out of range" in run_error(capsys, [*base, "--nodes", "-1"])
    assert "--nodes: expected node ids or one of train, val, test, all, got 'tset'" in run_error(
        capsys, [*base, "--nodes", "tset"])
    for folder in unwritable_folders(tmp_path):
        err = run_error(capsys, [*base, "--out", str(folder / "p.csv")])
        assert err.startswith("gnn: error: --out: ")
    if not torch.cuda.is_available():
        assert "train.device: cuda requested but CUDA is not available" in run_error(
            capsys, [*base, "--device", "cuda"])



@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_checkpoint_trained_on_cuda_predicts_on_cuda_and_cpu(data_root: Path, tmp_path: Path,
                                                             cora: Data) -> None:
    """Weights saved from a GPU run load on either device: on the GPU the test accuracy is
    reproduced exactly; on the CPU within a few nodes (float sums in another order)."""
    ckpt, record = tmp_path / "model.pt", tmp_path / "result.json"
    assert main(["train", "--config", str(CONFIG), "--root", str(data_root), "--epochs", "30",
                 "--device", "cuda", "--save", str(ckpt), "--json", str(record)]) == 0
    test_acc = json.loads(record.read_text())["test_acc"]
    nodes = cora.test_mask.nonzero().view(-1)
    for device, tolerance in (("cuda", 0.0), ("cpu", 0.003)):
        out = tmp_path / f"{device}.csv"
        assert main(["predict", "--checkpoint", str(ckpt), "--nodes", "test", "--out", str(out),
                     "--root", str(data_root), "--device", device]) == 0
        pred = torch.tensor([int(r[1]) for r in read_predictions(out)[1]])
        assert abs(accuracy(pred, cora.y[nodes]) - test_acc) <= tolerance, device


def test_malformed_identity_zip_bomb_and_plain_pickle_are_one_line(
        trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle
    import zipfile

    path = edited(trained, tmp_path, lambda raw: raw["dataset"].update(sha256={1: "x"}))
    assert "malformed sha256" in run_error(capsys, ["predict", "--checkpoint", str(path)])

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB of zeros
    assert bomb.stat().st_size < 1 << 20
    assert "archive expands to 67108864 bytes" in run_error(
        capsys, ["predict", "--checkpoint", str(bomb)])

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"format": "gnn-checkpoint"}, protocol=4))
    assert "is truncated or not a gnn checkpoint" in run_error(
        capsys, ["predict", "--checkpoint", str(plain)])
