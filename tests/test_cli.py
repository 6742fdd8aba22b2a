"""CLI: bad input exits 2 with one line naming the key; train writes valid JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gnn.cli import main

BAD_CONFIGS = [
    ("model:\n  nmae: gcn\n", "model.nmae"),
    ("model:\n  hidden_channels: sixteen\n", "model.hidden_channels"),
    ("train:\n  lr: -0.01\n", "train.lr"),
    ("model:\n  dropout: 1.0\n", "model.dropout"),
    ("model:\n  dropout: -0.1\n", "model.dropout"),
    ("model:\n  name: transformer\n", "model.name"),
    ("trian:\n  lr: 0.1\n", "trian"),
    ("train:\n  epochs: 0\n", "train.epochs"),
    ("data:\n  normalize_features: maybe\n", "data.normalize_features"),
    ("- a\n- b\n", "mapping"),
    ("model: [1, 2\n", "malformed YAML"),
]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(("text", "key"), BAD_CONFIGS)
def test_bad_config_exits_2_naming_key(text: str, key: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "out.json"
    assert main(["train", "--config", str(path), "--json", str(out)]) == 2
    assert key in one_line_error(capsys)
    assert not out.exists()


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in one_line_error(capsys)


def test_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  weight_decy: 0.1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "did you mean 'weight_decay'" in one_line_error(capsys)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--device", "cuda"]) == 2
    assert "CUDA" in one_line_error(capsys)


def test_bad_flag_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--seed", "abc"]) == 2
    assert "--seed" in one_line_error(capsys)
    assert main(["train", "--device", "tpu"]) == 2
    assert "train.device" in one_line_error(capsys)


def test_train_writes_valid_json(data_root: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    code = main(["train", "--config", "configs/gcn.yaml", "--root", str(data_root),
                 "--epochs", "20", "--seed", "1", "--json", str(out)])
    assert code == 0
    line = capsys.readouterr().out
    assert "test_acc=" in line and "test_macro_f1=" in line
    record = json.loads(out.read_text())
    assert record["model"] == "gcn" and record["seed"] == 1 and record["epochs"] == 20
    assert record["config"]["train"]["epochs"] == 20
    assert 0.0 <= record["test_acc"] <= 1.0


def test_python_dash_m_and_smoke(data_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gnn", "smoke", "--root", str(data_root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Cora: nodes=2708 features=1433" in proc.stdout and "ok" in proc.stdout
