"""Data-parallel training with ``torch.distributed``: the same :func:`gnn.training.fit`, one
process per rank.

Every rank holds the whole graph, trains a ``DistributedDataParallel`` copy of the model on its
own share of the training seeds (a fresh shard every epoch) with the neighbour sampler, and DDP
averages the gradients in backward, so the parameters stay identical on all ranks. Rank 0 alone
evaluates (layer-wise inference) and broadcasts the logits, so every rank selects the same best
epoch; only rank 0 prints and writes results.

A rank never runs the destructors of its process group: after its outcome is written (result,
error line) it leaves with ``os._exit`` (:func:`exit_rank`). Freeing DDP's reducer after a peer
failed destroys ``ProcessGroupGloo``, whose destructor joins a gloo worker thread while the main
thread holds the GIL; that worker, finishing a failed all-reduce, waits for the GIL to release
its tensors: a deadlock seen in about one failed run in three. A failed rank's objects are
therefore kept alive (:data:`_UNFREED`) until the process ends without freeing them.

Launch with ``torchrun --nproc-per-node N -m gnn train ...`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or ``gnn train --distributed
--nproc N``, which spawns N local processes that set the same variables.

Environment read only here, for tests and debugging:

- ``GNN_DIST_TIMEOUT_S``: how long a rank waits in a collective for a peer that is gone
  before it fails (seconds, default 1800, torch's);
- ``GNN_DIST_RENDEZVOUS_TIMEOUT_S``: how long a rank waits for all ranks to join (seconds,
  default 120), so an unreachable ``MASTER_ADDR`` fails in minutes, not half an hour;
- ``GNN_TEST_RECORD_DIR``: every rank writes ``rank<r>.json`` there with the seed node ids it
  trained on in each epoch and a SHA-256 of its parameters after each epoch;
- ``GNN_TEST_FAIL_RANK`` and ``GNN_TEST_FAIL_EPOCH``: that rank raises at the start of that
  epoch (1-based), to test that the other ranks fail instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler
from torch_geometric.data import Data

from gnn.batching import SampledBatching
from gnn.config import Config
from gnn.data import load_dataset, num_classes
from gnn.errors import ConfigError, Terminated, TrainingError
from gnn.files import write_json
from gnn.memory import StepPeaks
from gnn.training import FitResult, fit, resolve_device

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 1800.0  # torch's default for collectives
DEFAULT_RENDEZVOUS_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0  # how long the launcher waits for stopped ranks before SIGKILL

# Objects of a failed rank (the exception, whose traceback holds the DDP reducer and so the
# process group) that must not be freed before the process leaves through exit_rank.
_UNFREED: list[BaseException] = []
_joined = False  # whether this process joined a process group (then it leaves by exit_rank)


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
        check_environment()
        return cls(rank, world, local, local_world)


def env_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment variable ``name``."""
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 7 * 24 * 3600):
        raise ConfigError(f"{name}: expected a number of seconds > 0 and <= 604800, "
                          f"got {text[:40]!r}")
    return value


def check_environment() -> None:
    """The job's variables that are set must be valid (checked by the launcher before it
    starts any rank, and by every rank)."""
    port = os.environ.get("MASTER_PORT")
    if port is not None and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigError(f"distributed launch: MASTER_PORT must be a port number 1..65535, "
                          f"got {port[:40]!r}")
    env_seconds("GNN_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)
    env_seconds("GNN_DIST_RENDEZVOUS_TIMEOUT_S", DEFAULT_RENDEZVOUS_TIMEOUT_S)


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
    global _joined
    timeout = env_seconds("GNN_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)
    store = _rendezvous(env, env_seconds("GNN_DIST_RENDEZVOUS_TIMEOUT_S",
                                         DEFAULT_RENDEZVOUS_TIMEOUT_S))
    _joined = True
    dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size,
                            device_id=device_id, timeout=datetime.timedelta(seconds=timeout))
    yield device
    # Reached on success only: after a failure the group is left for exit_rank (see above).
    dist.destroy_process_group()


def _rendezvous(env: DistEnv, timeout_s: float) -> dist.TCPStore:
    """The job's key-value store on ``MASTER_ADDR:MASTER_PORT`` (rank 0 hosts it), joined
    within ``timeout_s``: torch's own wait would be the collective timeout, 30 minutes."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    try:
        return dist.TCPStore(host, port, env.world_size, is_master=env.rank == 0,
                             timeout=datetime.timedelta(seconds=timeout_s),
                             wait_for_workers=True)
    except (RuntimeError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise TrainingError(f"rank {env.rank}: rendezvous at {host}:{port} with "
                            f"{env.world_size} ranks failed within {timeout_s:g} s "
                            f"(GNN_DIST_RENDEZVOUS_TIMEOUT_S): {first[:200]}") from None


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
                 record: RankRecord | None = None,
                 meter: StepPeaks | None = None) -> DistributedSampledBatching:
        if device.type == "cuda":  # "cuda" means this rank's GPU, chosen by process_group
            device = torch.device("cuda", torch.cuda.current_device())
        shards = EpochShards(int(data.train_mask.sum()), env.world_size, env.rank,
                             cfg.sampler.batch_size, seed=cfg.train.seed)
        # Shards share the seed; neighbour sampling gets one stream per rank.
        return cls.from_config(cfg, data, device, seed=cfg.train.seed + env.rank,
                               batch_sampler=shards, transform=record, env=env, shards=shards,
                               out_channels=num_classes(data), record=record, meter=meter)

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
    """Test hook: ``GNN_TEST_FAIL_RANK`` raises (or, with ``GNN_TEST_FAIL_MODE=kill``, sends
    itself SIGKILL) at the start of epoch ``GNN_TEST_FAIL_EPOCH``."""
    fail_rank, fail_epoch = os.environ.get("GNN_TEST_FAIL_RANK"), os.environ.get(
        "GNN_TEST_FAIL_EPOCH")
    if fail_rank is None or int(fail_rank) != rank or int(fail_epoch or 1) != epoch:
        return
    if os.environ.get("GNN_TEST_FAIL_MODE") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise TrainingError(f"rank {rank}: injected failure at epoch {epoch} (GNN_TEST_FAIL_RANK)")


def train_rank(cfg: Config, env: DistEnv) -> FitResult | None:
    """This rank's part of a distributed run: the full result record on rank 0, else None.

    Whatever stops the rank (an error, a failed peer, a signal) is re-raised after its
    exception, and with it the DDP reducer and process group, is put in :data:`_UNFREED`,
    so nothing frees them before :func:`exit_rank`."""
    check_config(cfg)
    if env.rank != 0:
        cfg = cfg.override({"train.progress": False})
    record_dir = os.environ.get("GNN_TEST_RECORD_DIR")
    record = RankRecord() if record_dir else None
    try:
        with process_group(env, resolve_device(cfg.train.device)):
            data = _load_once_per_machine(cfg, env)
            result = fit(cfg, data, batching=partial(DistributedSampledBatching.for_rank,
                                                     env=env, record=record))
            dist.barrier()  # every rank trained to the end before rank 0 reports
    except BaseException as exc:
        _UNFREED.append(exc)
        if not (isinstance(exc, RuntimeError) and _collective_failed(exc)):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        raise TrainingError(f"rank {env.rank}: a collective failed, another rank probably "
                            f"stopped ({exc.__class__.__name__}: {first})") from None
    if record is not None:
        write_json(Path(record_dir) / f"rank{env.rank}.json", record.__dict__)
    if env.rank != 0:
        return None
    result.world_size = env.world_size
    return result


def joined() -> bool:
    """Whether this process joined a process group and must leave through :func:`exit_rank`."""
    return _joined


def exit_rank(code: int) -> None:
    """End this rank now with ``code``, flushing output but running no destructor or exit
    handler, so a process group left after a failure can never deadlock the exit."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


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
    """Run ``gnn <argv>`` as ``nproc`` rank processes on this machine (like ``torchrun
    --standalone``: each is ``python -m gnn`` with the rank variables set). When one fails the
    others get :data:`STOP_GRACE_S` to notice and exit, then are stopped; the launcher raises
    :class:`RanksFailed` with the first failure's code. SIGINT/SIGTERM to the launcher are
    passed on to every rank, and it returns only after all of them have ended."""
    if nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {nproc}")
    if device == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc: {nproc} processes but {torch.cuda.device_count()} GPUs "
                          "(one GPU per rank)")
    port = os.environ.get("MASTER_PORT") or str(free_port())
    ranks = [_start_rank(rank, nproc, port, argv) for rank in range(nproc)]
    try:
        failed = _wait_for_first_failure(ranks)
    except (KeyboardInterrupt, Terminated) as exc:
        stop_ranks(ranks, signal.SIGINT if isinstance(exc, KeyboardInterrupt)
                   else signal.SIGTERM)
        raise
    if failed is None:
        return 0
    _wait_all(ranks, STOP_GRACE_S)
    stop_ranks(ranks, signal.SIGTERM)
    code = ranks[failed].returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    raise RanksFailed(f"rank {failed} {how}; the other ranks were stopped",
                      code if code > 0 else 1)


def _start_rank(rank: int, nproc: int, port: str, argv: Sequence[str]) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_PORT": port}
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    return subprocess.Popen([sys.executable, "-m", "gnn", *argv], env=env)


def _wait_for_first_failure(ranks: Sequence[subprocess.Popen]) -> int | None:
    """Poll until every rank succeeded (``None``) or one failed (its index)."""
    while True:
        codes = [r.poll() for r in ranks]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            return failed[0]
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.05)


def _wait_all(ranks: Sequence[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for rank in ranks:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rank.wait(max(0.0, deadline - time.monotonic()))


def stop_ranks(ranks: Sequence[subprocess.Popen], signum: int) -> None:
    """Send ``signum`` to the ranks still running and wait until every one has ended
    (SIGKILL after :data:`STOP_GRACE_S`), so that no rank writes anything afterwards."""
    for rank in ranks:
        if rank.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                rank.send_signal(signum)
    _wait_all(ranks, STOP_GRACE_S)
    for rank in ranks:
        if rank.poll() is None:
            rank.kill()
            rank.wait()


class RanksFailed(TrainingError):
    """A rank of a local launch failed; ``exit_code`` is its code (2: bad input)."""
