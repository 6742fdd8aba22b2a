"""Equal-budget hyperparameter search (``gnn tune``) on Optuna studies in a relational database.

Shipped configs copy each paper's hyperparameters, so a comparison of them favours whichever
model its authors tuned best; tuning every model with the same number of trials, on validation
accuracy only, makes the comparison fair. A trial trains one configuration on K splits x S
seeds (members of one batched run where the model batches) and scores it by the mean
validation accuracy. The test masks never reach a trial: it trains on a copy of the graph
whose test mask is empty (:func:`without_test_mask`).

A study lives in a database (Optuna's ``RDBStorage``): embedded SQLite by default, or a
PostgreSQL server that processes on several machines share. The budget counts finished trials
(complete or pruned) over the whole study, whoever ran them, so resuming never exceeds it and
N workers run N-th of it each, not N times it. A trial claims its place in the budget after it
is created (:func:`within_budget`): trials beyond it, born of a race between workers, end as
failed "surplus" trials that train nothing. A worker killed mid-trial stops sending Optuna's
heartbeat; another worker marks its trial failed and Optuna's retry callback queues the same
parameters again.

Optuna is imported inside the functions that use it, so the other commands work without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from gnn.config import Config, did_you_mean, load_yaml, show
from gnn.errors import ConfigError, TrainingError
from gnn.members import fit_many
from gnn.training import FitResult, check_config

#: Keys a search space may not hold: tuning sets the seeds, and the data and device are the
#: study's, not hyperparameters.
FIXED_KEYS = ("train.seed", "train.device", "data.name", "data.root")
SPEC_KEYS = ("type", "low", "high", "log", "step", "choices")
#: Seconds to wait for a PostgreSQL server before giving up (an unreachable host would
#: otherwise hang for the operating system's TCP timeout, minutes).
CONNECT_TIMEOUT_S = 10
#: Seconds a SQLite writer waits for another process's write to finish.
SQLITE_TIMEOUT_S = 60
MAX_TRIALS = 100_000
#: PostgreSQL advisory lock held while a worker creates (or checks) Optuna's tables.
ADVISORY_LOCK_KEY = 0x676E6E74756E65  # "gnntune"
STUDY_DB = "study.db"
FINISHED = ("COMPLETE", "PRUNED")


# --------------------------------------------------------------------------------------------
# Search spaces


@dataclass(frozen=True)
class Param:
    """One searched config key: an int or float range (optionally log-scaled or stepped), or a
    list of choices."""

    key: str  # dotted config key, e.g. train.lr; also the Optuna parameter name
    kind: str  # int | float | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high),
                                   step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        scale = ", log" if self.log else (f", step {self.step:g}" if self.step else "")
        return f"{self.key}: {self.kind} {self.low:g}..{self.high:g}{scale}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        spec = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return spec if self.step is None else {**spec, "step": self.step}


@dataclass(frozen=True)
class SearchSpace:
    """The searched keys of one model's config (``configs/search/NAME.yaml``)."""

    source: str
    params: tuple[Param, ...]

    def to_dict(self) -> dict[str, Any]:
        return {p.key: p.to_dict() for p in self.params}


def load_search_space(path: str | Path, base: Config) -> SearchSpace:
    """Read and check a search space against the config it searches: every key must exist,
    both ends of every range (and every choice) must be values that config accepts. Each
    problem is one line naming the file and the key."""
    raw = load_yaml(path, "search space")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{path}: a search space is a mapping of config keys (train.lr: "
                          f"{{type: float, low: ..., high: ...}}), got {show(raw, 40)}")
    return SearchSpace(str(path), tuple(_param(str(path), key, spec, base)
                                        for key, spec in raw.items()))


def _param(path: str, key: Any, spec: Any, base: Config) -> Param:
    if not isinstance(key, str) or key.count(".") != 1:
        raise ConfigError(f"{path}: {show(key, 40)}: expected a dotted config key such as "
                          "train.lr")
    if key in FIXED_KEYS:
        raise ConfigError(f"{path}: {key}: set by gnn tune or the config, not searched")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: {key}: expected a mapping with type/low/high or choices, "
                          f"got {show(spec, 40)}")
    for name in spec:
        if name not in SPEC_KEYS:
            shown = name if isinstance(name, str) and len(name) <= 40 else show(name, 40)
            raise ConfigError(f"{path}: {key}.{shown}: unknown key"
                              f"{did_you_mean(str(name), SPEC_KEYS)}; use {', '.join(SPEC_KEYS)}")
    param = _choices(path, key, spec) if "choices" in spec else _range_param(path, key, spec)
    values = param.choices if param.kind == "choice" else (param.low, param.high)
    for value in values:
        try:
            base.override({key: value})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    current = _get(base, key)
    if param.kind == "float" and isinstance(current, int) and not isinstance(current, bool):
        raise ConfigError(f"{path}: {key}: expected an integer key's range, use type: int")
    return param


def _choices(path: str, key: str, spec: Mapping[str, Any]) -> Param:
    choices = spec["choices"]
    extra = sorted(set(spec) - {"choices"})
    if extra:
        raise ConfigError(f"{path}: {key}.{extra[0]}: not with choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{path}: {key}.choices: expected a non-empty list, got "
                          f"{show(choices, 40)}")
    if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        raise ConfigError(f"{path}: {key}.choices: each choice must be a number, string, "
                          f"boolean or null, got {show(choices, 60)}")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{path}: {key}.choices: a choice is repeated in {show(choices, 60)}")
    return Param(key, "choice", choices=tuple(choices))


def _range_param(path: str, key: str, spec: Mapping[str, Any]) -> Param:
    kind = spec.get("type")
    if kind not in ("int", "float"):
        raise ConfigError(f"{path}: {key}.type: must be int or float (or give choices), got "
                          f"{show(kind, 40)}")
    bounds = [spec.get(name) for name in ("low", "high")]
    number = int if kind == "int" else (int, float)
    for name, value in zip(("low", "high"), bounds, strict=True):
        if isinstance(value, bool) or not isinstance(value, number) \
                or not math.isfinite(value):
            raise ConfigError(f"{path}: {key}.{name}: expected a finite {kind}, got "
                              f"{show(value, 40)}")
    low, high = bounds
    log, step = spec.get("log", False), spec.get("step")
    if not low < high:
        raise ConfigError(f"{path}: {key}: low must be < high, got {low} and {high}")
    if not isinstance(log, bool):
        raise ConfigError(f"{path}: {key}.log: expected true or false, got {show(log, 40)}")
    if log and low <= 0:
        raise ConfigError(f"{path}: {key}: a log scale needs low > 0, got {low}")
    if step is not None and (log or isinstance(step, bool) or not isinstance(step, number)
                             or not 0 < step <= high - low):
        raise ConfigError(f"{path}: {key}.step: expected a {kind} in (0, high - low] and no "
                          f"log scale, got {show(step, 40)}")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def base_params(space: SearchSpace, base: Config) -> dict[str, Any]:
    """The base config's own values of the searched keys that lie in the space: the study's
    first trial, so tuning can only match or beat the shipped config on validation."""
    values = {p.key: _get(base, p.key) for p in space.params}
    return {key: value for key, value in values.items()
            if next(p for p in space.params if p.key == key).contains(value)}


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


# --------------------------------------------------------------------------------------------
# What a trial trains


def without_test_mask(data: Data) -> Data:
    """A shallow copy of ``data`` whose test mask is empty. The original test mask is not read
    (not even copied), so no trial can score, select or report anything on test nodes."""
    keys = [key for key in data.keys() if key != "test_mask"]  # noqa: SIM118 - not a dict
    view = Data(**{key: data[key] for key in keys})
    view.test_mask = torch.zeros(view.num_nodes, dtype=torch.bool)
    return view


def fit_trial(cfg: Config, data: Data, splits: int, seeds: int) -> list[FitResult]:
    """Every (split, seed) fit of one trial: seeds ``0..seeds-1`` on each of splits
    ``0..splits-1``, as members of batched runs where the model batches. The one place a
    trial trains."""
    return fit_many(cfg, list(range(seeds)), data, splits=list(range(splits)))


@dataclass(frozen=True)
class TuneJob:
    """One model's study: what it searches, from which config, with what budget."""

    name: str  # the study's name: the config's name
    base: Config
    space: SearchSpace
    trials: int  # the budget: finished (complete or pruned) trials over the whole study
    splits: int = 1
    seeds: int = 2
    sampler_seed: int = 0

    def protocol(self) -> dict[str, Any]:
        """What makes two runs the same study (the budget may grow between runs)."""
        return {"base": self.base.to_dict(), "space": self.space.to_dict(),
                "splits": self.splits, "seeds": self.seeds, "sampler_seed": self.sampler_seed}


def check_job_numbers(name: str, base: Config, trials: int, splits: int, seeds: int,
                      sampler_seed: int) -> None:
    if not 0 <= sampler_seed <= 2**32 - 1:
        raise ConfigError(f"--seed: must be 0..4294967295, got {sampler_seed}")
    if not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"--trials: must be 1..{MAX_TRIALS}, got {trials}")
    if not 1 <= seeds <= 10_000:
        raise ConfigError(f"--seeds: must be 1..10000, got {seeds}")
    if not 1 <= splits <= 10_000:
        raise ConfigError(f"--splits: must be 1..10000, got {splits}")
    if base.data.split == "public" and splits != 1:
        raise ConfigError(f"--splits: {name} uses data.split: public, which has one split; "
                          f"pass --split random for {splits} random splits")


def search_dir(configs_dir: Path) -> Path:
    """Where a folder of configs keeps its search spaces."""
    return configs_dir / "search"


def plan_jobs(names: Sequence[str], configs_dir: Path, spaces_dir: Path,
              overrides: Mapping[str, Any], trials: int, splits: int, seeds: int,
              sampler_seed: int) -> list[TuneJob]:
    """One job per model, every input checked (configs, search spaces, numbers, model and
    dataset names) before any study is opened."""
    from gnn.config import config_names, load_config

    if not configs_dir.is_dir():
        raise ConfigError(f"--configs: {configs_dir} is not a folder")
    available = config_names(configs_dir)
    jobs = []
    for name in dict.fromkeys(names):
        if name not in available:
            raise ConfigError(f"--models: no config {name!r} in {configs_dir}"
                              f"{did_you_mean(name, available)}; choose from "
                              f"{', '.join(available)}")
        space_path = spaces_dir / f"{name}.yaml"
        if not space_path.is_file():
            raise ConfigError(f"--models: no search space for {name!r} ({space_path})")
        base = check_config(load_config(configs_dir / f"{name}.yaml").override(overrides))
        check_job_numbers(name, base, trials, splits, seeds, sampler_seed)
        jobs.append(TuneJob(name, base, load_search_space(space_path, base), trials, splits,
                            seeds, sampler_seed))
    return jobs


class SurplusTrial(Exception):
    """A trial created while earlier trials already held the whole budget."""


WORKER = f"{socket.gethostname()}:{os.getpid()}"


class Objective:
    """Optuna's objective: the mean validation accuracy of one configuration."""

    def __init__(self, job: TuneJob, data: Data) -> None:
        self.job, self.data = job, without_test_mask(data)
        self.trial_number: int | None = None  # the trial this worker runs or ran last

    def __call__(self, trial: Any) -> float:
        import optuna

        self.trial_number = trial.number
        trial.set_user_attr("worker", WORKER)
        if not within_budget(trial.study, trial.number, self.job.trials):
            trial.set_user_attr("note", "surplus: the budget was taken by earlier trials")
            raise SurplusTrial(f"trial {trial.number} is beyond the budget")
        params = {p.key: p.suggest(trial) for p in self.job.space.params}
        try:
            cfg = check_config(self.job.base.override(params))
            results = fit_trial(cfg, self.data, self.job.splits, self.job.seeds)
        except (ConfigError, TrainingError, MemoryError, torch.OutOfMemoryError) as exc:
            # a configuration that cannot train (a non-finite loss, too large for the machine):
            # an outcome of the search, which uses up its place in the budget
            trial.set_user_attr("note", _note("cannot train", exc))
            raise optuna.TrialPruned(str(exc)) from None
        except Exception as exc:
            with contextlib.suppress(Exception):  # the storage may be what failed
                trial.set_user_attr("note", _note("error", exc))
            raise
        accs = [r.val_acc for r in results]
        trial.set_user_attr("val_acc_std", statistics.stdev(accs) if len(accs) > 1 else 0.0)
        trial.set_user_attr("fits", len(accs))
        return statistics.fmean(accs)


def _note(what: str, exc: BaseException) -> str:
    return f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def within_budget(study: Any, number: int, budget: int) -> bool:
    """Whether trial ``number`` is one of the first ``budget`` trials that may still finish
    (complete, pruned, running or queued), counted in the order Optuna numbered them. Two
    workers that start the last trial at once both ask; only the earlier one trains."""
    from optuna.trial import TrialState

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    ahead = study.get_trials(deepcopy=False, states=alive)
    return sum(t.number < number for t in ahead) < budget


# --------------------------------------------------------------------------------------------
# Storage and studies


@dataclass(frozen=True)
class StorageSettings:
    """Where the studies live and how a dead worker is noticed."""

    url: str
    heartbeat_s: int = 10  # a running trial records a heartbeat this often
    grace_s: int | None = None  # then is failed this long after its last one (Optuna: 2x)
    retries: int = 3  # a failed-by-heartbeat trial is queued again at most this often

    def check(self) -> None:
        if self.heartbeat_s < 1 or (self.grace_s is not None and self.grace_s < 1):
            raise ConfigError("--heartbeat/--grace: must be >= 1 second")
        if not 0 <= self.retries <= 1000:
            raise ConfigError(f"--retries: must be 0..1000, got {self.retries}")


def default_storage(out: Path) -> str:
    return f"sqlite:///{out.resolve() / STUDY_DB}"


def shown_url(url: str) -> str:
    """The URL as the user gave it, password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown shortened
        return show(url, 80)


def engine_url(url: str) -> Any:
    """The SQLAlchemy URL: ``postgresql://`` uses psycopg 3 (SQLAlchemy's default driver for
    the scheme, psycopg2, is not a dependency)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"--storage: not a database URL: {show(url, 80)} (expected "
                          "sqlite:///PATH or postgresql://USER@HOST/DB)") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def connect_args(url: Any) -> dict[str, Any]:
    if url.get_backend_name() == "postgresql":
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    if url.get_backend_name() == "sqlite":
        return {"timeout": SQLITE_TIMEOUT_S}
    return {}


def open_storage(settings: StorageSettings) -> Any:
    """Optuna's ``RDBStorage`` with heartbeat and retry of failed-by-heartbeat trials; an
    unreachable or malformed URL is one line naming it."""
    import optuna
    import sqlalchemy

    url = engine_url(settings.url)
    settings.check()
    try:
        with _creation_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=settings.retries)
            storage = optuna.storages.RDBStorage(
                url.render_as_string(hide_password=False),
                engine_kwargs={"connect_args": connect_args(url)},
                heartbeat_interval=settings.heartbeat_s, grace_period=settings.grace_s,
                heartbeat_stale_trial_callback=retry)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--storage: cannot open {shown_url(settings.url)}: "
                          f"{_reason(exc)}") from None
    if url.get_backend_name() == "sqlite":
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def _creation_lock(url: Any) -> Iterator[None]:
    """Workers that open a new database at once would race to create Optuna's tables: one
    creates them first, the others wait (a file lock beside a SQLite file, an advisory lock
    on a PostgreSQL server)."""
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:":
        from filelock import FileLock

        with FileLock(f"{url.database}.lock"):
            yield
    elif backend == "postgresql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args=connect_args(url),
                                          poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"),
                               {"key": ADVISORY_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": ADVISORY_LOCK_KEY})
    else:
        yield


def _serialize_sqlite_transactions(engine: Any) -> None:
    """Begin every SQLite transaction with ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for
    pysqlite). SQLite has no ``SELECT ... FOR UPDATE``, so two workers could both take the
    same queued trial (read WAITING, then write RUNNING); an immediate transaction holds the
    write lock from its first read, and the busy timeout makes the other wait its turn."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are not reused


def trial_seeded_sampler(seed: int) -> Any:
    """Optuna's TPE sampler, drawing each trial's random numbers from ``(seed, trial number)``:
    workers of one study, each with the same ``--seed``, do not propose the same parameters,
    and one worker's study is reproducible."""
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study: Any, trial: Any) -> None:
            derived = np.random.SeedSequence([seed, trial.number]).generate_state(1)[0]
            self.inner = optuna.samplers.TPESampler(seed=int(derived))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, space: Any) -> dict[str, Any]:
            return self.inner.sample_relative(study, trial, space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self.inner.sample_independent(study, trial, name, dist)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.inner.after_trial(study, trial, state, values)

    return TrialSeededTPE()


def open_study(job: TuneJob, storage: Any) -> Any:
    """Create the job's study, or resume it when the storage has one of that name; a study
    begun with another protocol (seeds, splits, space, base config) is refused in one line.
    A new study queues the base config's own values as its first trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # gnn prints its own line per trial
    sampler = trial_seeded_sampler(job.sampler_seed)
    try:
        study = optuna.create_study(study_name=job.name, storage=storage, sampler=sampler,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=job.name, storage=storage, sampler=sampler)
        _check_protocol(study, job)
        return study
    study.set_user_attr("protocol", job.protocol())
    first = base_params(job.space, job.base)
    if first:
        study.enqueue_trial(first, user_attrs={"note": "the base config's values"})
    return study


def _check_protocol(study: Any, job: TuneJob) -> None:
    theirs = study.user_attrs.get("protocol")
    if theirs is None:  # its creator has not written it yet, or another tool made it
        return
    difference = _first_difference(theirs, job.protocol())
    if difference:
        raise ConfigError(f"study {job.name!r} in the storage was started with another setup "
                          f"({difference}); rerun with the same settings, or use a new --out "
                          "or --storage")


def _first_difference(theirs: Any, ours: Any, prefix: str = "") -> str:
    if isinstance(theirs, Mapping) and isinstance(ours, Mapping):
        for key in sorted(set(theirs) | set(ours)):
            found = _first_difference(theirs.get(key), ours.get(key), f"{prefix}{key}.")
            if found:
                return found
        return ""
    if theirs != ours:
        return f"{prefix.rstrip('.')}: {show(theirs, 40)} there, {show(ours, 40)} here"
    return ""


# --------------------------------------------------------------------------------------------
# Workers


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """What the budget counts."""
        return self.complete + self.pruned


def count_trials(trials: Sequence[Any]) -> Counts:
    states = [t.state.name for t in trials]
    return Counts(*(states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING",
                                              "WAITING")))


def run_worker(study: Any, job: TuneJob, data: Data, settings: StorageSettings,
               on_trial: Any = None) -> int:
    """Run trials of ``study`` until it has ``job.trials`` finished ones; returns how many this
    worker ran. While the budget is held by other workers' running trials it waits, failing
    those whose heartbeat stopped (their retries then come to it)."""
    import optuna

    objective = Objective(job, data)
    callbacks = [lambda _study, trial: on_trial(trial)] if on_trial else []
    poll_s = min(1.0, settings.heartbeat_s / 2)
    ran = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        counts = count_trials(study.get_trials(deepcopy=False))
        if counts.finished >= job.trials:
            return ran
        if counts.waiting == 0 and counts.finished + counts.running >= job.trials:
            time.sleep(poll_s)
            continue
        objective.trial_number = None
        try:
            study.optimize(objective, n_trials=1, catch=(SurplusTrial,), callbacks=callbacks,
                           gc_after_trial=False)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            if not _taken_over(study, objective.trial_number):
                raise
            continue
        ran += 1


def _taken_over(study: Any, number: int | None) -> bool:
    """Whether this worker's trial was failed by another one while it ran: its heartbeat
    stopped for longer than the grace period (the process was paused or lost its
    connection). The trial's retry is queued; this worker goes on."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state.name != "FAIL":
        return False
    warnings.warn(f"trial {trial.number} was failed by another worker (no heartbeat from "
                  "this one for longer than the grace period); its retry is queued",
                  stacklevel=2)
    return True


# --------------------------------------------------------------------------------------------
# Outcome


@dataclass(frozen=True)
class TrialRow:
    """One trial as ``trials.csv`` lists it."""

    model: str
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    worker: str
    seconds: float | None
    retry_of: int | None
    note: str


@dataclass
class TuneOutcome:
    """A study's state when a worker finished: counts, the best trial and its config."""

    job: TuneJob
    storage: str  # shown URL (password hidden)
    counts: Counts
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Config | None
    wall_time_s: float  # first trial's start to last trial's end, over every worker
    ran_here: int
    rows: list[TrialRow] = field(default_factory=list)


def outcome(study: Any, job: TuneJob, storage_url: str, ran_here: int) -> TuneOutcome:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: (t.value, -t.number), default=None)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    return TuneOutcome(
        job=job, storage=shown_url(storage_url), counts=count_trials(trials),
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
        best_config=None if best is None else job.base.override(best.params),
        wall_time_s=wall, ran_here=ran_here, rows=[trial_row(job.name, t) for t in trials])


def trial_row(model: str, trial: Any) -> TrialRow:
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    note = str(trial.user_attrs.get("note", ""))
    if trial.state.name == "FAIL" and not note.startswith(("surplus", "error")):
        note = "failed: its worker stopped (killed, interrupted or lost)"
    return TrialRow(model=model, number=trial.number, state=trial.state.name,
                    value=trial.value if trial.state.name == "COMPLETE" else None,
                    params=dict(trial.params), worker=str(trial.user_attrs.get("worker", "")),
                    seconds=seconds, retry_of=trial.system_attrs.get("failed_trial"), note=note)
