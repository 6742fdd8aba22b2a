"""``gnn bench``: every model x device x seed trained by the one training loop, timed, recorded.

Each finished run becomes one row in ``runs.jsonl`` (the full record, the source of truth) and
one in ``runs.csv`` (flat columns), each written as a single flushed and fsynced line: an
interrupted bench leaves whole rows. ``--resume`` re-reads ``runs.jsonl``, drops a cut last line,
rewrites both files from the whole rows and runs only what is missing. Every input problem is
found before the first file is written. The report (:mod:`gnn.report`) is built from the rows.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from gnn import __version__
from gnn.batching import make_batching
from gnn.config import Config, SamplerConfig, config_names, did_you_mean, load_config
from gnn.data import data_for_split, load_dataset, split_masks
from gnn.errors import ConfigError
from gnn.files import (
    append_line,
    atomic_write_text,
    complete_lines,
    ensure_writable_dir,
    signals_deferred,
)
from gnn.members import (
    can_batch,
    fit_members,
    member_groups,
    resolve_members,
    sequential_reason,
)
from gnn.memory import PeakWindow, probe_for
from gnn.timing import measure_latency
from gnn.training import FitResult, check_config, fit, resolve_device
from gnn.workers import Workers, worker_state

DEFAULT_SEEDS = 5
MAX_SEEDS = 10_000
MAX_SPLITS = 10_000
QUICK_SEEDS, QUICK_EPOCHS = 2, 10

JSONL, CSV = "runs.jsonl", "runs.csv"
CSV_COLUMNS = (
    "name", "model", "dataset", "device", "split", "seed", "sampled", "epochs", "best_epoch",
    "num_params", "train_acc", "val_acc", "test_acc", "train_macro_f1", "val_macro_f1",
    "test_macro_f1", "total_train_time_s", "train_loop_time_s", "forward_ms_median",
    "forward_ms_iqr", "forward_ms_min", "latency_warmup", "latency_iters", "peak_memory_mb",
    "memory_measure", "threads", "workers", "timestamp", "gnn_version", "python", "torch",
    "torch_geometric", "config_hash", "config_json",
)


@dataclass(frozen=True)
class LatencySettings:
    """Forward-latency sampling per run: untimed warm-up calls, then timed calls."""

    warmup: int = 10
    iters: int = 50


QUICK_LATENCY = LatencySettings(warmup=2, iters=5)


@dataclass(frozen=True)
class Run:
    """One planned training run: a config (by name) on one device, one split, one seed."""

    name: str
    device: str
    seed: int
    cfg: Config
    split: int = 0

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.name, self.cfg.data.name, self.device, self.split, self.seed)


def row_key(row: dict[str, Any]) -> tuple[str, str, str, int, int]:
    """A row's run; rows written before splits existed were all on split 0."""
    return (row["name"], row["dataset"], row["device"], int(row.get("split", 0)),
            int(row["seed"]))


#: Config keys that say where data comes from or how a run reports, not what it computes.
NOT_HASHED = {"data": ("root", "download", "trust_data"), "train": ("progress",)}


def config_hash(cfg: Config) -> str:
    """Fingerprint of everything that defines a run's numbers, so ``--resume`` never mixes
    settings (a different ``--root`` for the same verified data is not a different setting)."""
    raw = cfg.to_dict()
    for section, names in NOT_HASHED.items():
        for name in names:
            raw[section].pop(name)
    text = json.dumps(raw, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_runs(names: Sequence[str], seeds: int, devices: Sequence[str], configs_dir: Path,
              overrides: dict[str, Any], splits: int = 1) -> list[Run]:
    """Every (config, device, split, seed) to run, model-major then split-major (split ids
    ``0..splits-1`` are split seeds); raises ConfigError on bad input."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"--seeds: must be 1..{MAX_SEEDS}, got {seeds}")
    if not 1 <= splits <= MAX_SPLITS:
        raise ConfigError(f"--splits: must be 1..{MAX_SPLITS}, got {splits}")
    available = config_names(configs_dir)
    if not names:
        raise ConfigError(f"--models: no config found in {configs_dir}")
    for device in devices:
        resolve_device(device)
    runs = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        if name not in available:
            raise ConfigError(f"--models: no config {name!r} in {configs_dir}"
                              f"{did_you_mean(name, available)}; choose from "
                              f"{', '.join(available) or 'nothing'}")
        base = check_config(load_config(configs_dir / f"{name}.yaml").override(overrides))
        if splits > 1 and base.data.split == "public":
            raise ConfigError(f"--splits: {name} uses data.split: public, which has one split; "
                              f"pass --split random for {splits} random splits")
        for device in dict.fromkeys(devices):
            for split in range(splits):
                for seed in range(seeds):
                    cfg = base.override({"train.seed": seed, "train.device": device,
                                         "data.split_seed": split})
                    runs.append(Run(name, device, seed, cfg, split))
    return runs


def full_graph_forward(cfg: Config, data: Data, model: nn.Module,
                       device: torch.device) -> Callable[[], Tensor]:
    """Predict every node in one forward pass, as training's full-batch ``predict`` does (eval
    mode, ``inference_mode``) - also for a model trained on sampled mini-batches, so the
    latencies of all models measure the same thing."""
    batching = make_batching(dataclasses.replace(cfg, sampler=SamplerConfig()), data, device)
    return lambda: batching.predict(model)


def run_one(run: Run, data: Data, latency: LatencySettings) -> tuple[dict[str, Any], str]:
    """Train, time the forward pass and measure peak memory; returns the row to record and
    the run's summary line."""
    device = resolve_device(run.device)
    probe = probe_for(device)
    with PeakWindow(probe) as memory:
        result = fit(run.cfg, data_for_split(data, run.cfg.data, run.split))
        row = _row(run, result, latency, device)
    row.update({"peak_memory_mb": memory.peak / 2**20, "memory_measure": probe.name})
    return row, _line(run, result)


def run_members(runs: Sequence[Run], data: Data,
                latency: LatencySettings) -> list[tuple[dict[str, Any], str]]:
    """Train ``runs`` (one config, one device; their own splits and seeds) as members of one
    batched run; each member's forward latency is timed on its own extracted model. Peak
    memory is the batched run's, recorded on every row with ``members``."""
    device = resolve_device(runs[0].device)
    probe = probe_for(device)
    with PeakWindow(probe) as memory:
        results = fit_members(runs[0].cfg, [run.seed for run in runs], data,
                              splits=[run.split for run in runs])
    out = []
    for run, result in zip(runs, results, strict=True):
        result.trained = result.trained.to(device)
        row = _row(run, result, latency, device)
        row.update({"peak_memory_mb": memory.peak / 2**20, "memory_measure": probe.name})
        out.append((row, _line(run, result)))
    return out


def _row(run: Run, result: FitResult, latency: LatencySettings,
         device: torch.device) -> dict[str, Any]:
    assert result.data is not None  # the run's graph with its split's masks
    predict = full_graph_forward(run.cfg, result.data, result.trained, device)
    stats = measure_latency(predict, device, latency.warmup, latency.iters)
    row = result.to_record()
    row.update({
        "name": run.name, "gnn_version": __version__, "config_hash": config_hash(run.cfg),
        "forward_ms_median": stats.median * 1e3, "forward_ms_iqr": stats.iqr * 1e3,
        "forward_ms_min": stats.min * 1e3, "latency_warmup": stats.warmup,
        "latency_iters": stats.iters,
    })
    return row


def _line(run: Run, result: FitResult) -> str:
    line = result.summary_line().replace(f"{result.model:<14}", f"{run.name:<14}", 1)
    return line + (f" members={result.members}" if result.members > 1 else "")


def batches(todo: Sequence[Run], members: str | int, datasets: dict[str, Data],
            workers: int = 1) -> list[list[Run]]:
    """The order of work: runs of one config and device that can batch go together, up to
    ``members`` at a time (``auto``: what fits in each of ``workers`` processes' share of
    the memory); the others one by one."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in todo:
        groups.setdefault((run.name, run.device), []).append(run)
    work: list[list[Run]] = []
    for (name, _), runs in groups.items():
        if members == 1 or len(runs) == 1 or not can_batch(runs[0].cfg):
            if members not in (1, "auto") and not can_batch(runs[0].cfg):
                warnings.warn(f"--members: {name} trains its seeds one after the other "
                              f"({sequential_reason(runs[0].cfg)})", stacklevel=2)
            work += [[run] for run in runs]
            continue
        size = resolve_members(members, len(runs), runs[0].cfg,
                               datasets[_data_key(runs[0].cfg)], workers)
        work += member_groups(runs[0].cfg, runs, size, split_of=lambda run: run.split)
    return work


#: Fields of a row the report computes with: a resumed row must hold each as a finite number.
NUMERIC_FIELDS = ("train_acc", "val_acc", "test_acc", "test_macro_f1", "total_train_time_s",
                  "train_loop_time_s", "forward_ms_median", "peak_memory_mb", "num_params")


def check_row(row: Any) -> None:
    """Raise ``ValueError`` unless a row read back from ``runs.jsonl`` has what the report
    needs (a hand-edited or foreign line is dropped and its run trained again)."""
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    for name in NUMERIC_FIELDS:
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError(f"{name} is not a finite number")
    history = row.get("history")
    if not isinstance(history, dict) or not all(
            isinstance(history.get(k), list) for k in ("train_loss", "val_acc")):
        raise ValueError("history is missing")


def csv_values(row: dict[str, Any]) -> list[Any]:
    flat = {**row, **row.get("versions", {}),
            "config_json": json.dumps(row.get("config"), sort_keys=True)}
    return [flat.get(column, "") for column in CSV_COLUMNS]


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, allow_nan=True)


class RunLog:
    """``runs.jsonl`` + ``runs.csv`` in one folder, appended one complete row at a time."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.jsonl = out / JSONL
        self.csv = out / CSV

    def has_rows(self) -> bool:
        return self.jsonl.exists() or self.csv.exists()

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """Whole, parseable rows of ``runs.jsonl`` (first copy of each run), and how many lines
        were dropped (cut by an interruption, garbled, or repeated)."""
        for path in (self.jsonl, self.csv):
            if path.exists() and not path.is_file():
                raise ConfigError(f"--resume: {path} is not a regular file")
        lines, cut = complete_lines(self.jsonl)
        rows: dict[tuple[str, str, str, int, int], dict[str, Any]] = {}
        dropped = int(cut)
        for line in lines:
            try:
                row = json.loads(line)
                key = row_key(row)
                check_row(row)
            except (ValueError, KeyError, TypeError, RecursionError):
                dropped += 1
                continue
            if key in rows:
                dropped += 1
            else:
                rows[key] = row
        return list(rows.values()), dropped

    def start(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rewrite both files (atomically) from ``rows``: repairs a cut line and rebuilds the
        CSV from the JSONL, which holds every row the CSV may have missed."""
        atomic_write_text(self.jsonl, "".join(_json_line(r) + "\n" for r in rows))
        lines = [_csv_line(CSV_COLUMNS)] + [_csv_line(csv_values(r)) for r in rows]
        atomic_write_text(self.csv, "\n".join(lines) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """One row in both files; a signal meanwhile waits until both lines are written."""
        with signals_deferred():
            append_line(self.jsonl, _json_line(row))  # the JSONL first: resume trusts it
            append_line(self.csv, _csv_line(csv_values(row)))


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]  # the planned runs' rows, in plan order
    ran: int  # runs trained by this invocation
    resumed: int  # planned runs found already done
    dropped: int  # lines dropped from an interrupted or garbled runs.jsonl
    other_rows: int  # rows kept in the files that this plan did not ask for


def run_bench(plan: Sequence[Run], out: Path, *, resume: bool, latency: LatencySettings,
              progress: bool = True, members: str | int = "auto",
              workers: int = 1) -> BenchResult:
    """Run what ``plan`` still lacks in ``out`` and return all its rows; with ``workers``
    above 1, in that many forked processes (CPU runs only: see :func:`_finished`)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, expected a folder")
    log = RunLog(out)
    if log.has_rows() and not resume:
        raise ConfigError(f"--out: {out} already holds runs ({JSONL}); pass --resume to finish "
                          "them or choose another folder")
    rows, dropped = log.read() if resume else ([], 0)
    planned = {run.key: run for run in plan}
    for row in rows:
        run = planned.get(row_key(row))
        if run is not None and row.get("config_hash") != config_hash(run.cfg):
            raise ConfigError(f"--resume: {log.jsonl} holds {run.name} split {run.split} seed "
                              f"{run.seed} on {run.device} run with other settings; use "
                              "another --out")
    done = {row_key(row) for row in rows}
    todo = [run for run in plan if run.key not in done]
    datasets = _load_datasets(todo)  # data errors surface before any file is written
    _check_splits(todo, datasets)
    work = batches(todo, members, datasets, workers)
    workers = max(1, min(workers, len(work)))
    ensure_writable_dir(out, "--out")
    log.start(rows)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), unit="run", desc="bench",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar, closing(_finished(work, datasets, latency, workers, bar)) as finished:
        for done_rows in finished:
            for row, line in done_rows:
                row["workers"] = workers
                log.append(row)
                rows.append(row)
                bar.update(1)
                if progress:
                    bar.write(line, file=sys.stderr)
    by_key = {row_key(row): row for row in rows}
    return BenchResult(rows=[by_key[run.key] for run in plan], ran=len(todo),
                       resumed=len(plan) - len(todo), dropped=dropped,
                       other_rows=len(by_key.keys() - planned.keys()))


def _finished(work: Sequence[list[Run]], datasets: dict[str, Data], latency: LatencySettings,
              workers: int, bar: Any) -> Iterator[list[tuple[dict[str, Any], str]]]:
    """Each group's rows and summary lines as the group finishes: one group after another in
    this process, or, with ``workers`` above 1, in that many forked processes of one share
    of the threads each (:class:`gnn.workers.Workers`), in the order they finish (the caller
    keeps CUDA runs in one process: a child forked from a parent that has used CUDA cannot
    use it)."""
    if workers == 1:
        for group in work:
            seeds = ", ".join(str(run.seed) for run in group)
            bar.set_postfix_str(f"{group[0].name} seed {seeds} {group[0].device}", refresh=True)
            yield _run_group(group, datasets[_data_key(group[0].cfg)], latency)
        return
    bar.set_postfix_str(f"{workers} workers", refresh=True)
    with Workers(workers, datasets) as pool:
        for _, done_rows in pool.as_completed(_worker_group, [(g, latency) for g in work]):
            yield done_rows


def _run_group(group: list[Run], data: Data,
               latency: LatencySettings) -> list[tuple[dict[str, Any], str]]:
    """One group of :func:`batches`: a batched run of its members, or one run alone."""
    return run_members(group, data, latency) if len(group) > 1 \
        else [run_one(group[0], data, latency)]


def _worker_group(item: tuple[list[Run], LatencySettings]) -> list[tuple[dict[str, Any], str]]:
    """:func:`_run_group` in a worker, on the graphs its parent loaded."""
    group, latency = item
    return _run_group(group, worker_state()[_data_key(group[0].cfg)], latency)


def _data_key(cfg: Config) -> str:
    """The graph a config loads: its splits share one load (each run takes its split's
    masks, :func:`gnn.data.data_for_split`)."""
    fields = dataclasses.asdict(cfg.data)
    fields.pop("split_seed")
    return json.dumps(fields, sort_keys=True)


def _check_splits(runs: Sequence[Run], datasets: dict[str, Data]) -> None:
    """Draw every planned split once, so a split that cannot be drawn or trained (a class too
    small, an inductive training graph without edges) stops the bench before any file."""
    wanted: dict[str, tuple[Config, set[int]]] = {}
    for run in runs:
        wanted.setdefault(_data_key(run.cfg), (run.cfg, set()))[1].add(run.split)
    for key, (cfg, splits) in wanted.items():
        split_masks(datasets[key], cfg.data, sorted(splits))


def _load_datasets(runs: Sequence[Run]) -> dict[str, Data]:
    """Each distinct data config loaded once (configs may normalise features differently)."""
    datasets: dict[str, Data] = {}
    for run in runs:
        key = _data_key(run.cfg)
        if key not in datasets:
            datasets[key] = load_dataset(run.cfg.data)
    return datasets
