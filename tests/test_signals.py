"""Ctrl-C (SIGINT) and SIGTERM stop cleanly: exit 130 / 143, one line, no partial file; an
interrupted ``gnn bench`` keeps complete rows only and ``--resume`` finishes the set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gnn import cli
from gnn.errors import Terminated
from gnn.files import atomic_write_bytes, sigterm_raises

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_raises_inside_and_restores_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler's exception interrupts the sleep at once
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize(("exc", "code", "word"), [
    (KeyboardInterrupt, 130, "interrupted (SIGINT)"),
    (Terminated, 143, "terminated (SIGTERM)"),
])
def test_main_maps_interrupts_to_exit_codes(exc: type[BaseException], code: int, word: str,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def command(args: object) -> int:
        raise exc()

    monkeypatch.setitem(cli.COMMANDS, "train", command)
    assert cli.main(["train"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gnn: error: {word}; no partial file was written"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, Terminated])
def test_interrupted_atomic_write_keeps_the_old_file(exc: type[BaseException], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.json"
    target.write_text("finished\n")

    def interrupted(fd: int) -> None:
        raise exc()

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(exc):
        atomic_write_bytes(target, b"{half")
    assert target.read_text() == "finished\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


# Runs ``gnn.cli.main`` in a real process and prints a line once training is under way, so the
# test signals a process that is certainly inside the epoch loop. SIGINT gets Python's default
# handler even if the test runner was started with SIGINT ignored (as background jobs are).
CHILD = """
import signal, sys
import gnn.training as training
from gnn.cli import main
signal.signal(signal.SIGINT, signal.default_int_handler)
fit = training.fit
def announcing_fit(cfg, data=None, on_epoch=None):
    def tick(epoch, loss, val_acc):
        if epoch == 2:
            print("TRAINING", flush=True)
    return fit(cfg, data, on_epoch=tick)
training.fit = announcing_fit
raise SystemExit(main(sys.argv[1:]))
"""


def test_sigint_and_sigterm_during_train_exit_cleanly(data_root: Path, tmp_path: Path) -> None:
    """Both signals, each to its own training process; the two run side by side to halve the
    wait for their start-up."""
    cases = {signal.SIGINT: (130, "interrupted (SIGINT)"),
             signal.SIGTERM: (143, "terminated (SIGTERM)")}
    procs: dict[signal.Signals, tuple[subprocess.Popen[str], Path]] = {}
    try:
        for sig in cases:
            out = tmp_path / sig.name
            out.mkdir()
            argv = [sys.executable, "-c", CHILD, "train", "--root", str(data_root),
                    "--model", "mlp", "--epochs", "100000", "--json", str(out / "result.json"),
                    "--save", str(out / "model.pt")]
            procs[sig] = (subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True), out)
        for sig, (proc, _) in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until epoch 2 (or the process died)
            assert line.strip() == "TRAINING", proc.communicate(timeout=60)
            proc.send_signal(sig)
        for sig, (proc, out) in procs.items():
            code, word = cases[sig]
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == code, err
            assert err.strip().splitlines() == [f"gnn: error: {word}; no partial file was written"]
            assert list(out.iterdir()) == []  # no result, no checkpoint, no temporary file
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


WORKERS_CHILD = """
import os, signal, sys
import gnn.members as members
from gnn.cli import main
signal.signal(signal.SIGINT, signal.default_int_handler)
run = members._worker_run
def announcing_run(item):
    # one write per line: two workers printing at once must not interleave their lines
    os.write(1, f"TRAINING {os.getpid()}\\n".encode())
    return run(item)
members._worker_run = announcing_run
raise SystemExit(main(sys.argv[1:]))
"""


def test_ctrl_c_stops_the_worker_processes_at_once(data_root: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: the parent exits 130 with its one line and no
    file, its workers ignore the signal and are ended by the parent, none left running."""
    out = tmp_path / "runs.json"
    argv = [sys.executable, "-c", WORKERS_CHILD, "train", "--root", str(data_root), "--model",
            "gcn", "--epochs", "100000", "--seeds", "0-3", "--members", "2", "--workers", "2",
            "--json", str(out)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until a worker starts its run
        assert line.startswith("TRAINING"), proc.communicate(timeout=60)
        worker = int(line.split()[1])
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.strip().splitlines() == ["gnn: error: interrupted (SIGINT); no partial file "
                                            "was written"]
        assert not out.exists() and list(tmp_path.iterdir()) == []
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_stops_the_bench_workers_keeps_their_rows_and_resume_finishes(
        data_root: Path, tmp_path: Path) -> None:
    """``gnn bench --workers 2`` writes each group's rows as it finishes; Ctrl-C to the process
    group ends the workers at once and leaves whole rows, which ``--resume`` completes."""
    import json

    import psutil

    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "gnn", "bench", "--models", "gcn", "--seeds", "20",
            "--members", "2", "--epochs", "60", "--workers", "2", "--root", str(data_root),
            "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    jsonl = out / "runs.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.is_file() and jsonl.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children()
        assert proc.poll() is None and len(workers) == 2, "bench finished too soon"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        f"gnn: error: interrupted (SIGINT); the finished runs are in {out}; run the same "
        "command with --resume to finish"]
    deadline = time.monotonic() + 30
    while any(_alive(w.pid) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w.pid) for w in workers)
    text = jsonl.read_text()
    done = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and 2 <= len(done) < 20
    assert (out / "runs.csv").read_text().count("\n") == len(done) + 1

    resumed = subprocess.run([*argv, "--resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    final = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(row["seed"] for row in final) == list(range(20))
    assert final[: len(done)] == done


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigint_during_bench_keeps_complete_rows_and_resume_finishes(data_root: Path,
                                                                      tmp_path: Path) -> None:
    import csv
    import json

    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "gnn", "bench", "--models", "gcn", "mlp", "--seeds", "3",
            "--epochs", "60", "--root", str(data_root), "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    jsonl = out / "runs.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.is_file() and jsonl.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "bench finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    text = jsonl.read_text()
    assert text.endswith("\n")
    done = [json.loads(line) for line in text.splitlines()]
    assert 2 <= len(done) < 6
    with open(out / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(done) and all(None not in r.values() for r in rows)

    resumed = subprocess.run([*argv, "--resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    final = [json.loads(line) for line in jsonl.read_text().splitlines()]
    keys = [(r["name"], r["seed"], r["device"]) for r in final]
    assert len(keys) == len(set(keys)) == 6
    assert [json.loads(line) for line in text.splitlines()] == final[: len(done)]


def test_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: a writer's temporary file names its pid, and the
    next write into the folder removes those whose process is gone (and only those)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.pt.{dead.pid}.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".model.pt.{os.getpid()}.wr1t1ng.tmp"
    alive.write_bytes(b"being written")
    atomic_write_bytes(tmp_path / "result.json", b"{}")
    assert not stale.exists() and alive.exists()
    assert (tmp_path / "result.json").read_bytes() == b"{}"


def test_a_signal_during_a_row_waits_for_both_files(tmp_path: Path) -> None:
    """A bench row goes to runs.jsonl and runs.csv; SIGINT between the two writes is held
    until both are written, so the files never disagree on the rows they hold."""
    from gnn import bench

    log = bench.RunLog(tmp_path)
    log.start([])
    real = bench.append_line
    calls = []

    def interrupted_after_first(path, line):
        real(path, line)
        calls.append(path)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # a handler that ran now would cut the row in half

    row = {"name": "gcn", "dataset": "Cora", "device": "cpu", "seed": 0}
    bench.append_line = interrupted_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            log.append(row)
    finally:
        bench.append_line = real
    assert len(calls) == 2
    assert log.jsonl.read_text().count("\n") == 1 and log.csv.read_text().count("\n") == 2
