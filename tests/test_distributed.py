"""Distributed training: seed shards, and real 2-process gloo runs on 127.0.0.1.

The multi-process tests start ranks as subprocesses in their own session, wait with timeouts and
kill the whole session if a wait runs out, so a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler
from torch_geometric.data import Data

from gnn.cli import main
from gnn.distributed import EpochShards, free_port
from gnn.errors import ConfigError
from tests.test_cli import one_line_error

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 150  # per process; a healthy 2-rank run on Cora takes well under a minute


# ---- seed shards ---------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(st.integers(1, 300), st.integers(1, 5), st.integers(1, 64), st.integers(0, 5),
       st.integers(0, 2**31))
def test_each_seed_once_per_epoch_and_equal_steps(num_seeds: int, world: int, batch_size: int,
                                                  epoch: int, seed: int) -> None:
    try:
        shards = [EpochShards(num_seeds, world, r, batch_size, seed=seed) for r in range(world)]
    except ConfigError as exc:
        assert "sampler.batch_size" in str(exc)
        assert num_seeds // world < math.ceil(math.ceil(num_seeds / world) / batch_size)
        return
    batches = []
    for s in shards:
        s.set_epoch(epoch)
        mine = list(s)
        assert len(mine) == len(s) == len(shards[0])  # same step count: DDP cannot hang
        assert all(1 <= len(b) <= batch_size for b in mine)
        assert sum(map(len, mine)) == s.num_local
        batches += mine
    used = [i for b in batches for i in b]
    assert sorted(used) == list(range(num_seeds))  # exactly once across ranks, no padding


@pytest.mark.parametrize(("num_seeds", "world"), [(140, 2), (12, 3), (64, 4)])
def test_shards_follow_distributed_sampler(num_seeds: int, world: int) -> None:
    """Without padding to do (n divisible by world size), the same seeds in the same order."""
    for rank in range(world):
        ours = EpochShards(num_seeds, world, rank, 8, seed=7)
        theirs = DistributedSampler(range(num_seeds), world, rank, shuffle=True, seed=7)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert [i for b in ours for i in b] == list(theirs)


def test_set_epoch_reshuffles() -> None:
    shards = EpochShards(140, 2, 0, 32, seed=0)
    shards.set_epoch(1)
    first = list(shards)
    shards.set_epoch(2)
    assert list(shards) != first
    shards.set_epoch(1)
    assert list(shards) == first


# ---- CLI checks before any process starts ---------------------------------------------------

def test_nproc_needs_distributed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--nproc", "2"]) == 2
    assert "--nproc" in one_line_error(capsys)


def test_distributed_needs_sampling(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", "configs/gcn.yaml", "--distributed"]) == 2
    assert "sampler.enabled" in one_line_error(capsys)


def test_rank_env_must_be_complete(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["train", "--config", "configs/sage_sampling.yaml"]) == 2
    assert "MASTER_ADDR" in one_line_error(capsys)


# ---- real processes ------------------------------------------------------------------------

def rank_env(data_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update({"PYTHONPATH": str(REPO), "GNN_DATA_ROOT": str(data_root),
                "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port()), "GNN_DIST_TIMEOUT_S": "30"})
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gnn", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    """Wait for every process with a deadline; on timeout kill their sessions and fail."""
    deadline = time.monotonic() + WAIT_S
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"ranks still running after {WAIT_S} s: a hang")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    return results


def test_two_ranks_train_in_sync(data_root: Path, cora: Data, tmp_path: Path) -> None:
    """`gnn train --distributed --nproc 2`: both ranks finish with identical parameters after
    every epoch, each seed is trained on once per epoch, and the result reaches the gate."""
    out = tmp_path / "result.json"
    env = rank_env(data_root, GNN_TEST_RECORD_DIR=str(tmp_path))
    [(code, stdout, stderr)] = finish([start(
        ["train", "--config", "configs/sage_sampling.yaml", "--distributed", "--nproc", "2",
         "--json", str(out)], env)])
    assert code == 0, stderr
    assert stdout.count("test_acc=") == 1  # rank 0 reports, rank 1 stays quiet
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    record = json.loads(out.read_text())
    epochs = record["epochs"]
    assert record["world_size"] == 2
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    assert len(ranks[0]["state_sha256"]) == epochs
    train_ids = cora.train_mask.nonzero().view(-1).tolist()
    for epoch in range(epochs):
        used = ranks[0]["seeds"][epoch] + ranks[1]["seeds"][epoch]
        assert sorted(used) == train_ids, f"epoch {epoch + 1}"
    assert ranks[0]["seeds"][0] != ranks[0]["seeds"][1]  # reshuffled per epoch
    print(f"\n2-rank sage_sampling: test_acc {record['test_acc']:.4f}, "
          f"{record['train_loop_time_s'] / epochs:.3f} s per training epoch")
    assert record["test_acc"] >= 0.78


# Ten failure injections across ranks and epochs: a deadlock on the way out showed up in about
# one failed run in three, so ten runs in every CI run would catch its return.
FAILURES = [(rank, epoch) for epoch in (1, 2, 3, 4, 5) for rank in (0, 1)]


def run_failing_pair(data_root: Path, tmp_path: Path, fail_rank: int, fail_epoch: int,
                     **extra: str) -> tuple[list[tuple[int, str, str]], list[float]]:
    """Two ranks launched as torchrun would (env vars), one failing at ``fail_epoch``; returns
    each rank's (code, stdout, stderr) and the monotonic time each was seen to end."""
    env = rank_env(data_root, WORLD_SIZE="2", GNN_TEST_FAIL_RANK=str(fail_rank),
                   GNN_TEST_FAIL_EPOCH=str(fail_epoch), **extra)
    args = ["train", "--config", "configs/sage_sampling.yaml", "--epochs", "8",
            "--json", str(tmp_path / "result.json")]
    procs = [start(args, {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    ended = [0.0, 0.0]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        for r, p in enumerate(procs):
            if not ended[r] and p.poll() is not None:
                ended[r] = time.monotonic()
        time.sleep(0.02)
    for r, p in enumerate(procs):
        if not ended[r] and p.poll() is not None:
            ended[r] = time.monotonic()
    return finish(procs), ended


@pytest.mark.parametrize(("fail_rank", "fail_epoch"), FAILURES)
def test_failing_rank_stops_the_other(data_root: Path, tmp_path: Path, fail_rank: int,
                                      fail_epoch: int) -> None:
    """One rank raises at the start of an epoch: both exit with code 1 and one error line each,
    the peer within 5 s of the failing rank, and no result file appears."""
    results, ended = run_failing_pair(data_root, tmp_path, fail_rank, fail_epoch)
    peer = 1 - fail_rank
    code_f, _, err_f = results[fail_rank]
    code_p, _, err_p = results[peer]
    assert code_f == 1 and f"injected failure at epoch {fail_epoch}" in err_f, err_f
    assert len(err_f.strip().splitlines()) == 1, err_f
    assert code_p == 1, err_p
    assert "collective failed" in err_p and len(err_p.strip().splitlines()) == 1, err_p
    assert ended[peer] - ended[fail_rank] < 5.0
    assert not (tmp_path / "result.json").exists()


def test_killed_rank_stops_the_other(data_root: Path, tmp_path: Path) -> None:
    """A rank dies by SIGKILL mid-training (no clean-up at all): its peer notices the closed
    connection and exits with one line within 5 s; nothing is written."""
    results, ended = run_failing_pair(data_root, tmp_path, 1, 3, GNN_TEST_FAIL_MODE="kill")
    (code0, _, err0), (code1, _, _) = results
    assert code1 == -signal.SIGKILL
    assert code0 == 1 and "collective failed" in err0, err0
    assert len(err0.strip().splitlines()) == 1, err0
    assert ended[0] - ended[1] < 5.0
    assert not (tmp_path / "result.json").exists()


def ranks_of(launcher: subprocess.Popen[str]) -> list[psutil.Process]:
    """The rank processes a ``--distributed`` launcher started (``python -m gnn``)."""
    try:
        return psutil.Process(launcher.pid).children()
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_launcher_passes_signals_to_its_ranks(data_root: Path, tmp_path: Path,
                                              signum: int) -> None:
    """A signal to ``gnn train --distributed`` stops every rank before the launcher exits, and
    no result file appears afterwards."""
    out = tmp_path / "result.json"
    launcher = start(["train", "--config", "configs/sage_sampling.yaml", "--distributed",
                      "--nproc", "2", "--epochs", "2000", "--json", str(out)],
                     rank_env(data_root))
    deadline = time.monotonic() + WAIT_S
    while len(ranks_of(launcher)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    ranks = ranks_of(launcher)
    assert len(ranks) == 2, "the ranks never started"
    time.sleep(4)  # into rendezvous or training
    launcher.send_signal(signum)
    [(code, _, err)] = finish([launcher])
    assert code == (130 if signum == signal.SIGINT else 143), err
    assert not any(r.is_running() and r.status() != psutil.STATUS_ZOMBIE for r in ranks)
    time.sleep(2)
    assert not out.exists()


@pytest.mark.parametrize(("env", "word"), [
    ({"MASTER_PORT": "abc"}, "MASTER_PORT"),
    ({"MASTER_PORT": "99999"}, "MASTER_PORT"),
    ({"GNN_DIST_TIMEOUT_S": "abc"}, "GNN_DIST_TIMEOUT_S"),
    ({"GNN_DIST_TIMEOUT_S": "-5"}, "GNN_DIST_TIMEOUT_S"),
    ({"GNN_DIST_RENDEZVOUS_TIMEOUT_S": "nan"}, "GNN_DIST_RENDEZVOUS_TIMEOUT_S"),
])
def test_bad_rank_environment_is_one_line(data_root: Path, env: dict[str, str],
                                          word: str) -> None:
    proc = start(["train", "--config", "configs/sage_sampling.yaml", "--epochs", "1"],
                 rank_env(data_root, WORLD_SIZE="1", RANK="0", **env))
    [(code, _, err)] = finish([proc])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and word in err, err


def test_unreachable_rendezvous_fails_in_bounded_time(data_root: Path) -> None:
    """A peer that never joins: the rank gives up after GNN_DIST_RENDEZVOUS_TIMEOUT_S, not
    torch's 30 minutes, with one line."""
    began = time.monotonic()
    proc = start(["train", "--config", "configs/sage_sampling.yaml", "--epochs", "1"],
                 rank_env(data_root, WORLD_SIZE="2", RANK="0",
                          GNN_DIST_RENDEZVOUS_TIMEOUT_S="3"))
    [(code, _, err)] = finish([proc])
    assert code == 1, err
    assert "rendezvous" in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - began < 60


def test_nproc_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", "configs/sage_sampling.yaml", "--distributed",
                 "--nproc", "0"]) == 2
    assert "--nproc" in one_line_error(capsys)


def test_every_rank_checks_outputs_before_joining(data_root: Path, tmp_path: Path) -> None:
    """An output path no rank can write stops the rank before the rendezvous, so no peer is
    left waiting for it (rank 1 here, which alone would have waited for rank 0)."""
    proc = start(["train", "--config", "configs/sage_sampling.yaml", "--json",
                  "/proc/result.json"],
                 rank_env(data_root, WORLD_SIZE="2", RANK="1",
                          GNN_DIST_RENDEZVOUS_TIMEOUT_S="60"))
    [(code, _, err)] = finish([proc])
    assert code == 2 and "--json" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_one_rank_on_cuda_uses_nccl(data_root: Path, tmp_path: Path) -> None:
    """The nccl path (one GPU per rank) with the GPUs this machine has, one rank per GPU."""
    out = tmp_path / "result.json"
    nproc = torch.cuda.device_count()
    [(code, stdout, stderr)] = finish([start(
        ["train", "--config", "configs/sage_sampling.yaml", "--distributed", "--nproc",
         str(nproc), "--device", "cuda", "--json", str(out)], rank_env(data_root))])
    assert code == 0, stderr
    record = json.loads(out.read_text())
    assert record["world_size"] == nproc and record["device"].startswith("cuda")
    print(f"\n{nproc}-rank nccl sage_sampling: test_acc {record['test_acc']:.4f}")
    assert record["test_acc"] >= 0.78


def test_launcher_reports_the_failed_rank(data_root: Path, tmp_path: Path) -> None:
    """``--distributed``: a rank fails, its peer stops, and the launcher exits with the failed
    rank's code and a line naming it; each rank printed its own one-line error."""
    out = tmp_path / "result.json"
    [(code, _, err)] = finish([start(
        ["train", "--config", "configs/sage_sampling.yaml", "--distributed", "--nproc", "2",
         "--epochs", "5", "--json", str(out)],
        rank_env(data_root, GNN_TEST_FAIL_RANK="1", GNN_TEST_FAIL_EPOCH="2"))])
    lines = err.strip().splitlines()
    assert code == 1, err
    assert re.fullmatch(r"gnn: error: rank [01] exited with code 1; the other ranks were "
                        r"stopped", lines[-1]), err
    assert any("injected failure at epoch 2" in line for line in lines)
    assert all(line.startswith("gnn: error: ") for line in lines) and len(lines) == 3, err
    assert not out.exists()


@pytest.mark.parametrize(("env", "word"), [
    ({"MASTER_PORT": "abc"}, "MASTER_PORT"),
    ({"GNN_DIST_TIMEOUT_S": "-5"}, "GNN_DIST_TIMEOUT_S"),
])
def test_launcher_checks_the_environment_first(env: dict[str, str], word: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["train", "--config", "configs/sage_sampling.yaml", "--distributed"]) == 2
    assert word in one_line_error(capsys)
