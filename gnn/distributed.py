"""Data-parallel training with ``torch.distributed``: the same :func:`gnn.training.fit`, one
process per rank.

Every rank holds the whole graph, trains a ``DistributedDataParallel`` copy of the model on its
own share of the training seeds (a fresh shard every epoch) with the neighbour sampler, and DDP
averages the gradients in backward, so the parameters stay identical on all ranks. Rank 0 alone
evaluates (layer-wise inference) and broadcasts the logits, so every rank selects the same best
epoch; only rank 0 prints and writes results.

Launch with ``torchrun --nproc-per-node N -m gnn train ...`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or ``gnn train --distributed
--nproc N``, which spawns N local processes that set the same variables.

Environment read only here, for tests and debugging:

- ``GNN_DIST_TIMEOUT_S``: process-group timeout in seconds (default: torch's, 30 min), how
  long a rank waits in a collective for a peer that is gone before it fails;
- ``GNN_TEST_RECORD_DIR``: every rank writes ``rank<r>.json`` there with the seed node ids it
  trained on in each epoch and a SHA-256 of its parameters after each epoch;
- ``GNN_TEST_FAIL_RANK`` and ``GNN_TEST_FAIL_EPOCH``: that rank raises at the start of that
  epoch (1-based), to test that the other ranks fail instead of hanging.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler
from torch_geometric.data import Data

from gnn.config import Config, ConfigError
from gnn.data import load_dataset, num_classes
from gnn.sampling import SampledBatching
from gnn.training import TrainingError, fit, resolve_device

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as torchrun describes it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_environ(cls) -> DistEnv | None:
        """``None`` unless launched as one rank of a job (``WORLD_SIZE`` set)."""
        if "WORLD_SIZE" not in os.environ:
            return None
        missing = [v for v in ENV_VARS if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"distributed launch: environment variable {missing[0]} is not "
                              "set (launch with torchrun or gnn train --distributed)")
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        except ValueError as exc:
            raise ConfigError(f"distributed launch: bad rank variable ({exc})") from None
        if not 0 <= rank < world:
            raise ConfigError(f"distributed launch: RANK={rank} outside WORLD_SIZE={world}")
        return cls(rank, world, local, local_world)


def check_config(cfg: Config) -> None:
    """What a distributed run needs beyond a valid config, checked before any process starts."""
    if not cfg.sampler.enabled:
        raise ConfigError("sampler.enabled: distributed training shards sampled mini-batches; "
                          "set sampler.enabled: true (e.g. configs/sage_sampling.yaml)")


@contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[torch.device]:
    """Join the job's process group (gloo on CPU, nccl with one GPU per rank) and always
    leave it, so a failing rank never leaves its peers waiting on a live group."""
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"train.device: LOCAL_RANK={env.local_rank} but only "
                              f"{torch.cuda.device_count()} GPUs (one GPU per rank)")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        backend, device_id = "nccl", device
    else:
        if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1; split the cores otherwise
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // env.local_world_size))
        backend, device_id = "gloo", None
    timeout = os.environ.get("GNN_DIST_TIMEOUT_S")
    dist.init_process_group(
        backend, rank=env.rank, world_size=env.world_size, device_id=device_id,
        timeout=datetime.timedelta(seconds=float(timeout)) if timeout else None)
    try:
        yield device
    finally:
        dist.destroy_process_group()


class EpochShards(Sampler[list[int]]):
    """This rank's batches of seed positions ``0..num_seeds-1`` for the current epoch.

    ``DistributedSampler`` semantics (a permutation from ``seed + epoch``, rank ``r`` takes
    positions ``r, r + W, ...``; :meth:`set_epoch` reshuffles) without its padding, so each
    seed is used exactly once per epoch across ranks. Shards then differ by at most one seed,
    and every rank cuts its shard into the same number of near-equal batches of at most
    ``batch_size``: DDP pairs the ranks' gradient all-reduces step by step and would hang if
    one rank had a batch more than another.
    """

    def __init__(self, num_seeds: int, world_size: int, rank: int, batch_size: int, *,
                 seed: int = 0, shuffle: bool = True) -> None:
        self.num_seeds, self.world_size, self.rank = num_seeds, world_size, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.num_local = len(range(rank, num_seeds, world_size))
        self.num_batches = math.ceil(math.ceil(num_seeds / world_size) / batch_size)
        if num_seeds // world_size < self.num_batches:
            raise ConfigError(
                f"sampler.batch_size: {num_seeds} training nodes over {world_size} ranks leave "
                f"a rank fewer seeds than the {self.num_batches} batches every rank must take; "
                "use a larger batch_size or fewer processes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_seeds, generator=g)
        else:
            order = torch.arange(self.num_seeds)
        mine = order[self.rank::self.world_size]
        return iter([b.tolist() for b in torch.tensor_split(mine, self.num_batches)])


def state_hash(model: nn.Module) -> str:
    """SHA-256 of the parameters and buffers, to compare ranks bit for bit."""
    h = hashlib.sha256()
    for name, value in unwrap(model).state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class RankRecord:
    """Test record of what one rank did: seed ids per epoch, parameter hash after each."""

    seeds: list[list[int]] = field(default_factory=list)
    state_sha256: list[str] = field(default_factory=list)

    def __call__(self, batch: Data) -> Data:  # NeighborLoader transform: sees every batch
        self.seeds[-1].extend(batch.n_id[:batch.batch_size].tolist())
        return batch


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``torch.compile`` and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class DistributedSampledBatching(SampledBatching):
    """Sampled mini-batches on this rank's shard of the seeds, through DDP; rank 0 evaluates."""

    env: DistEnv | None = None
    shards: EpochShards | None = None
    out_channels: int = 0
    record: RankRecord | None = None
    epoch: int = 0

    @classmethod
    def for_rank(cls, cfg: Config, data: Data, device: torch.device, *, env: DistEnv,
                 record: RankRecord | None = None) -> DistributedSampledBatching:
        if device.type == "cuda":  # "cuda" means this rank's GPU, chosen by process_group
            device = torch.device("cuda", torch.cuda.current_device())
        shards = EpochShards(int(data.train_mask.sum()), env.world_size, env.rank,
                             cfg.sampler.batch_size, seed=cfg.train.seed)
        # Shards share the seed; neighbour sampling gets one stream per rank.
        return cls.from_config(cfg, data, device, seed=cfg.train.seed + env.rank,
                               batch_sampler=shards, transform=record, env=env, shards=shards,
                               out_channels=num_classes(data), record=record)

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)  # syncs rank 0's weights

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        assert self.env is not None and self.shards is not None
        self.epoch += 1
        _maybe_inject_failure(self.env.rank, self.epoch)
        self.shards.set_epoch(self.epoch)
        if self.record is not None:
            self.record.seeds.append([])
        loss = super().train_epoch(model, optimizer)
        # Mean loss over all seeds of the epoch, whichever rank trained on them.
        total = torch.tensor([loss * self.shards.num_local, self.shards.num_local],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        if self.record is not None:
            self.record.state_sha256.append(state_hash(model))
        return float(total[0] / total[1])

    def predict(self, model: nn.Module) -> Tensor:
        """Rank 0 runs inference on the plain module (no DDP collectives); the others get its
        logits, so model selection agrees everywhere."""
        assert self.env is not None
        if self.env.rank == 0:
            logits = super().predict(unwrap(model)).clone()  # clone: leave inference mode
        else:
            logits = torch.empty(self.data.num_nodes, self.out_channels, device=self.device)
        dist.broadcast(logits, src=0)
        return logits


def _maybe_inject_failure(rank: int, epoch: int) -> None:
    fail_rank, fail_epoch = os.environ.get("GNN_TEST_FAIL_RANK"), os.environ.get(
        "GNN_TEST_FAIL_EPOCH")
    if fail_rank is not None and int(fail_rank) == rank and int(fail_epoch or 1) == epoch:
        raise TrainingError(f"rank {rank}: injected failure at epoch {epoch} "
                            "(GNN_TEST_FAIL_RANK)")


def train_rank(cfg: Config, env: DistEnv) -> dict[str, Any] | None:
    """This rank's part of a distributed run: the full result record on rank 0, else None."""
    from gnn.files import write_json

    check_config(cfg)
    if env.rank != 0:
        cfg = cfg.override({"train.progress": False})
    record_dir = os.environ.get("GNN_TEST_RECORD_DIR")
    record = RankRecord() if record_dir else None
    with process_group(env, resolve_device(cfg.train.device)):
        try:
            data = _load_once_per_machine(cfg, env)
            result = fit(cfg, data, batching=partial(DistributedSampledBatching.for_rank,
                                                     env=env, record=record))
            dist.barrier()  # every rank trained to the end before rank 0 reports
        except RuntimeError as exc:
            if not _collective_failed(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TrainingError(f"rank {env.rank}: a collective failed, another rank probably "
                                f"stopped ({exc.__class__.__name__}: {first})") from None
    if record is not None:
        write_json(Path(record_dir) / f"rank{env.rank}.json", record.__dict__)
    if env.rank != 0:
        return None
    result["world_size"] = env.world_size
    return result


def _collective_failed(exc: RuntimeError) -> bool:
    """A peer vanished or timed out. DDP's backward reports gloo's errors as plain
    RuntimeErrors, so the backend's name in the message is the sign."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or "gloo" in text or "nccl" in text


def _load_once_per_machine(cfg: Config, env: DistEnv) -> Data:
    """Local rank 0 fills the dataset cache first, so ranks never process it concurrently."""
    data = load_dataset(cfg.data) if env.local_rank == 0 else None
    dist.barrier()
    return data if data is not None else load_dataset(cfg.data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(nproc: int, argv: Sequence[str], device: str) -> int:
    """Run ``gnn <argv>`` as ``nproc`` ranks on this machine (like ``torchrun --standalone``).
    A rank that fails makes the launcher stop the others; returns the first failure's code."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {nproc}")
    if device == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc: {nproc} processes but {torch.cuda.device_count()} GPUs "
                          "(one GPU per rank)")
    port = os.environ.get("MASTER_PORT") or str(free_port())
    try:
        mp.start_processes(_local_rank_main, args=(nproc, port, list(argv)), nprocs=nproc,
                           start_method="spawn")
    except mp.ProcessExitedException as exc:
        raise RanksFailed(f"rank {exc.error_index} exited with code {exc.exit_code}; the "
                          "other ranks were stopped", exc.exit_code) from None
    except mp.ProcessRaisedException as exc:  # its message ends with the rank's traceback
        cause = ([line for line in str(exc).splitlines() if line.strip()] or ["?"])[-1]
        raise RanksFailed(f"rank {exc.error_index} failed ({cause.strip()}); the other ranks "
                          "were stopped", 1) from None
    return 0


class RanksFailed(TrainingError):
    """A rank of a local launch failed; ``exit_code`` is its code (2: bad input)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _local_rank_main(local_rank: int, nproc: int, port: str, argv: list[str]) -> None:
    from gnn.cli import main

    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank),
                       "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                       "MASTER_PORT": port})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    code = main(argv)
    if code:
        raise SystemExit(code)
