"""CLI: bad input exits 2 with one line naming the key; train writes valid JSON."""

from __future__ import annotations

import json
import os
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
    # every item of the bad-input list
    ("42\n", "top level must be a mapping of sections, got int"),
    ("just some text\n", "top level must be a mapping of sections, got str"),
    ("model: 3\n", "model: must be a mapping, got int"),
    ("model:\n\tname: gcn\n", "malformed YAML at line 2"),
    ("\x00", "malformed YAML: special characters are not allowed"),
    ("[" * 3000, "malformed YAML: nested too deeply"),
    ("seed: " + "9" * 5000 + "\n", "malformed YAML: Exceeds the limit (4300 digits)"),
    ("!!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    ("trian:\n  lr: 0.1\n", "trian: unknown key (did you mean 'train'?)"),
    ("model:\n  hiden_channels: 8\n", "did you mean 'hidden_channels'?"),
    ("1: 2\n", "1: unknown key"),
    ("train:\n  lr: 1e400\n", "train.lr: expected a finite number, got inf"),
    ("train:\n  lr: 0x" + "f" * 5000 + "\n", "train.lr: expected a finite number, got <int too"),
    ("train:\n  lr: .nan\n", "train.lr: expected a finite number"),
    ("train:\n  epochs: 2.5\n", "train.epochs: expected an integer, got 2.5"),
    ("train:\n  epochs: true\n", "train.epochs: expected an integer, got True"),
    ("train:\n  seed: 4294967296\n", "train.seed: must be <= 4294967295"),
    ("train:\n  seed: -1\n", "train.seed: must be >= 0"),
    ("train:\n  device: gpu\n", "train.device: must be one of cpu, cuda, got 'gpu'"),
    ("data:\n  name: 2001-12-14\n", "data.name: expected a string, got datetime.date"),
    ("data:\n  name: Cor\n", "unknown dataset 'Cor' (did you mean 'cora'?)"),
    ("data:\n  sparse_features: sometimes\n", "data.sparse_features: must be one of"),
    ("sampler:\n  fanout: 10\n", "sampler.fanout: expected a list of int, got int"),
    ("sampler:\n  enabled: true\n", "sampler.enabled: model 'gcn' does not train on sampled"),
    ("model:\n  name: sage\n  input_dropout: 0.5\n",
     "model.input_dropout: model 'sage' has no input dropout of its own; use it with cs, gcn, "
     "mlp"),
    ("model:\n  name: mlp\n  input_dropout: 1.0\n", "model.input_dropout: must be < 1.0"),
    ("model:\n  name: sage\nsampler:\n  enabled: true\n  fanout: [10]\n",
     "sampler.fanout: needs one entry per layer (model.num_layers=2), got 1"),
    ("model:\n  name: sage\nsampler:\n  enabled: true\n  fanout: [10, 0]\n",
     "entries must be positive or -1"),
    ("model:\n  name: sage\n  num_layers: 3\nsampler:\n  enabled: true\n  fanout: [10, 10]\n",
     "needs one entry per layer (model.num_layers=3), got 2"),
    # values that only make sense below a bound
    ("train:\n  lr: 1.0e300\n", "train.lr: must be <= 100.0"),
    ("train:\n  weight_decay: 1.0e300\n", "train.weight_decay: must be <= 100.0"),
    ("sampler:\n  batch_size: 1.0e+20\n", "sampler.batch_size: must be <= 2147483647"),
    ("sampler:\n  inference_batch_size: 1.0e+20\n", "sampler.inference_batch_size: must be <="),
    ("data:\n  name: csbm\n  avg_degree: 1.0e300\n", "data.avg_degree: must be <= 1000000.0"),
    ("data:\n  name: csbm\n  num_nodes: 100000000\n  avg_degree: 100000\n",
     "data.avg_degree: 100000000 nodes of average degree 100000 make more than 2^40 edges"),
    ("model:\n  K: 1.0e+20\n", "model.K: must be <= 1000"),
    ("model:\n  num_layers: 1.0e+8\n", "model.num_layers: must be <= 128"),
    ("model:\n  hidden_channels: 1.0e+20\n", "model.hidden_channels: must be <= 16777216"),
    ("sampler:\n  fanout: [1.0e+20, 10]\n", "sampler.fanout: entries must be positive or -1"),
    ("sampler:\n  num_workers: -1\n", "sampler.num_workers: must be >= 0"),
    ("sampler:\n  num_workers: 2\ntrain:\n  device: cuda\n",
     "sampler.num_workers: worker processes sample on the CPU"),
    ("sampler:\n  full_batch_eval: sometimes\n", "sampler.full_batch_eval: must be one of"),
    ("sampler:\n  full_batch_eval: always\n  inference: sampled\n",
     "sampler.full_batch_eval: always needs sampler.inference: layerwise"),
]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(("text", "key"), BAD_CONFIGS, ids=[k[:40] for _, k in BAD_CONFIGS])
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


def run_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    return one_line_error(capsys)


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "the following arguments are required: command"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["train", "--nope"], "unrecognized arguments: --nope"),
    (["train", "--epochs"], "argument --epochs: expected one argument"),
    (["train", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    (["train", "--seed", "99999999999999999999"], "train.seed: must be <= 4294967295"),
    (["train", "--epochs", "0"], "train.epochs: must be >= 1, got 0"),
    (["train", "--model", "gcnn"], "unknown model 'gcnn' (did you mean 'gcn'?)"),
    (["train", "--dataset", "core"], "unknown dataset 'core' (did you mean 'cora'?)"),
    (["train", "--device", "tpu"], "train.device: must be one of cpu, cuda, got 'tpu'"),
    (["train", "--config", "no/such/file.yaml"], "config file not found: no/such/file.yaml"),
    (["train", "--config", "."], "cannot read config file .: not a regular file"),
    (["train", "--config", "bad\x00name"], "cannot read config file"),
    (["train", "--config", "x" * 5000], "cannot read config file"),
    (["predict"], "the following arguments are required: --checkpoint"),
    (["train", "--json", "x" * 300], "--json: a name in the path is 300 bytes long"),
    (["train", "--save", "a/" * 2100 + "m.pt"], "--save: the path is 4204 bytes long"),
    (["train", "--json", "same.out", "--save", "same.out"], "--save: the same file as --json"),
    (["train", "--json", "/dev/null"], "--json: /dev/null exists and is not a regular file"),
    (["predict", "--checkpoint", "m.pt", "--out", "/dev/null"], "checkpoint not found"),
    (["predict", "--checkpoint", "/dev/zero"], "cannot read checkpoint /dev/zero: not a regular"),
    (["train", "--distributed", "--nproc", "0"], "--nproc: must be 1..256, got 0"),
    (["bench", "--seeds", "1000000000"], "--seeds: must be 1..10000"),
    (["scale", "--sizes", "nan"], "--sizes: node counts must be whole numbers"),
    (["scale", "--threads", "1000000"], "--threads: must be 1..1024"),
])
def test_bad_command_line_exits_2(argv: list[str], expected: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert expected in run_error(capsys, argv)


def test_help_is_success(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["train", "--help"]) == 0
    captured = capsys.readouterr()
    assert "--save" in captured.out and captured.err == ""


def unwritable_folders(tmp_path: Path) -> list[Path]:
    """Folders no one can write into, root included: below a regular file, in /proc, and
    (for other users) a folder without write permission."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    folders = [a_file / "sub"]
    if Path("/proc/self").is_dir():
        folders.append(Path("/proc"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        folders.append(locked)
    return folders


@pytest.mark.parametrize("flag", ["--json", "--save"])
def test_unwritable_output_folder_exits_2_before_training(
        flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gnn.training

    monkeypatch.setattr(gnn.training, "fit", lambda *a, **k: pytest.fail("trained anyway"))
    for folder in unwritable_folders(tmp_path):
        err = run_error(capsys, ["train", flag, str(folder / "out.file")])
        assert err.startswith(f"gnn: error: {flag}: ") and str(folder) in err
        assert not (folder / "out.file").exists()
    assert flag in run_error(capsys, ["train", flag, str(tmp_path)])  # a folder, not a file
    assert "contains a NUL byte" in run_error(capsys, ["train", flag, "x\x00y/out"])
    assert not (tmp_path / "new").exists()  # nothing created for a refused command
    run_error(capsys, ["train", "--json", str(tmp_path / "new" / "r.json"),
                       "--save", str(tmp_path / "a_file" / "m.pt")])  # --json fine, --save not
    assert not (tmp_path / "new").exists()


def test_model_too_large_for_memory_is_one_line(data_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("model:\n  hidden_channels: 16000000\n")  # 92 GB of first-layer weights
    out = tmp_path / "out.json"
    assert main(["train", "--config", str(path), "--root", str(data_root),
                 "--json", str(out)]) == 1
    err = one_line_error(capsys)
    assert "out of memory (tried to allocate 91712000000 bytes)" in err
    assert not out.exists()


def test_special_files_are_never_read_or_replaced(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO config or checkpoint would block forever and a link to /dev/zero never end; an
    output at a FIFO or symlink would be replaced by a regular file. All are refused."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    assert "not a regular file" in run_error(capsys, ["train", "--config", str(fifo)])
    assert "not a regular file" in run_error(capsys, ["train", "--config", str(zero)])
    assert "not a regular file" in run_error(capsys, ["predict", "--checkpoint", str(fifo)])
    for target in (fifo, link):
        err = run_error(capsys, ["train", "--json", str(target)])
        assert "exists and is not a regular file" in err
    assert fifo.exists() and not fifo.is_file() and link.is_symlink()
    assert not (tmp_path / "elsewhere.json").exists()


def test_disk_full_is_one_line_and_leaves_nothing(data_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing the result: exit 1, one line, no file and no temporary file."""
    import errno

    import gnn.files

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gnn.files.os, "fsync", full)
    out = tmp_path / "r.json"
    assert main(["train", "--root", str(data_root), "--epochs", "1", "--json", str(out)]) == 1
    err = one_line_error(capsys)
    assert "no space left on the device to write" in err and str(out) in err
    assert list(tmp_path.iterdir()) == []


def _wait_for_torch_loading(pid: int, deadline_s: float = 60.0) -> bool:
    """True once process ``pid`` maps a torch library: its handlers are in place (the entry
    point installs them before importing anything heavy) and torch is being imported. A signal
    sent earlier could land in the interpreter's own start-up (``site``), before any code of
    ours runs, which no program can answer with its own message."""
    import time

    maps = Path(f"/proc/{pid}/maps")
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if "libtorch" in maps.read_text():
                return True
        except OSError:  # the process ended
            return False
        time.sleep(0.005)
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_sigint_while_starting_is_one_line(delay: float) -> None:
    """SIGINT while torch and the modules are still being imported (``delay`` seconds after
    torch's library is mapped): one line and exit 130, no traceback, and the process ends by
    its exit code, not by the signal."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "gnn", "train", "--epochs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    loading = _wait_for_torch_loading(proc.pid)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert loading, f"torch was never loaded: {err}"
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["gnn: error: interrupted (SIGINT); no partial file "
                                        "was written"], err


def test_only_gnn_tune_needs_optuna(tmp_path: Path) -> None:
    """Without Optuna every other command's modules import, and ``gnn tune`` is one line
    saying what to install (exit 2, nothing written)."""
    code = ("import sys; sys.modules['optuna'] = None\n"
            "import gnn.bench, gnn.plots, gnn.report, gnn.tune\n"
            "from gnn.cli import main\n"
            f"sys.exit(main(['tune', '--models', 'gcn', '--trials', '1', '--out', "
            f"{str(tmp_path / 'out')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "gnn: error: gnn tune needs Optuna (optuna is missing): pip install 'gnn[tune]' "
        "(or -e '.[tune]' in a checkout)"]
    assert not (tmp_path / "out").exists()
