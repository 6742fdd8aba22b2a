"""Distributed training: seed shards, and real 2-process gloo runs on 127.0.0.1.

The multi-process tests start ranks as subprocesses in their own session, wait with timeouts and
kill the whole session if a wait runs out, so a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler
from torch_geometric.data import Data

from gnn.cli import main
from gnn.config import ConfigError
from gnn.distributed import EpochShards, free_port
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


def test_failing_rank_stops_the_other(data_root: Path, tmp_path: Path) -> None:
    """Ranks launched as torchrun would (env vars); rank 1 raises at epoch 2. Rank 0 must
    exit with an error, not hang, and no result file may appear."""
    out = tmp_path / "result.json"
    env = rank_env(data_root, WORLD_SIZE="2", GNN_TEST_FAIL_RANK="1", GNN_TEST_FAIL_EPOCH="2")
    args = ["train", "--config", "configs/sage_sampling.yaml", "--epochs", "5",
            "--json", str(out)]
    began = time.monotonic()
    procs = [start(args, {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    (code0, _, err0), (code1, _, err1) = finish(procs)
    elapsed = time.monotonic() - began
    assert code1 == 1 and "injected failure at epoch 2" in err1, err1
    assert code0 == 1, err0
    assert "collective failed" in err0 and len(err0.strip().splitlines()) == 1, err0
    assert elapsed < WAIT_S
    assert not out.exists()


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


def test_a_crashing_rank_is_named_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception in a rank reaches the user as its last traceback line."""
    import torch.multiprocessing as mp

    from gnn.distributed import RanksFailed, launch_local

    def crash(*args, **kwargs):
        raise mp.ProcessRaisedException(
            "\n\n-- Process 0 terminated with the following error:\nTraceback (most recent "
            "call last):\n  File \"x.py\", line 1\nRuntimeError: indices on another device\n",
            0, 1234)

    monkeypatch.setattr(mp, "start_processes", crash)
    with pytest.raises(RanksFailed, match=r"rank 0 failed \(RuntimeError: indices on another "
                                          r"device\); the other ranks were stopped"):
        launch_local(1, ["train"], "cpu")
