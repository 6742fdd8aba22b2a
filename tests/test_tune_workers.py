"""Several ``gnn tune`` processes on one study, on a throwaway PostgreSQL server (the
``postgres`` fixture in conftest.py) or on one SQLite file: the study ends with exactly the
budget of complete trials, workers sharing a seed propose different parameters, and a worker
killed mid-trial has its trial failed by Optuna's heartbeat and retried by another worker.

Nothing here sleeps to decide an outcome: every wait polls the study until a deadline. A
worker is paused (SIGSTOP) before it is checked to be inside a trial, so "mid-trial" is
certain when it is killed or kept waiting.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_tune import write_tiny

optuna = pytest.importorskip("optuna")
sqlalchemy = pytest.importorskip("sqlalchemy")

from gnn import tune  # noqa: E402 - after the skip

REPO = Path(__file__).resolve().parents[1]
TRIALS = 6
EPOCHS = 500  # a trial lasts long enough (about a second) to be caught inside, even under load
DEADLINE_S = 240.0
SPACE_SIZE = 3  # parameters in tests.test_tune.TINY_SPACE


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.pid} did not finish in {DEADLINE_S:.0f} s:\n"
                        + self.output())

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, sig)


@dataclass
class Study:
    """One shared study: how workers reach it and how the test reads it."""

    url: str | None  # None: the default SQLite file in the shared --out
    folder: Path
    storage: Any  # a plain RDBStorage for reading

    def trials(self) -> list[Any]:
        try:
            return optuna.load_study(study_name="gcn", storage=self.storage).get_trials()
        except KeyError:  # not created yet
            return []

    def has_heartbeat(self, number: int) -> bool:
        # Optuna's own schema: the heartbeat table of its RDB storage
        query = sqlalchemy.text("SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t "
                                "ON h.trial_id = t.trial_id WHERE t.number = :number")
        with self.storage.engine.connect() as connection:
            return connection.execute(query, {"number": number}).scalar() > 0

    def write_locked(self) -> bool:
        """Whether some process holds SQLite's write lock (a paused worker must not: the
        other would wait on it)."""
        if self.url is not None:
            return False
        connection = sqlite3.connect(self.folder / "out" / tune.STUDY_DB, timeout=0.1,
                                     isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> Study:
    url = request.getfixturevalue("postgres").new_database() \
        if request.param == "postgresql" else None
    write_tiny(tmp_path / "configs")
    shown = url or tune.default_storage(tmp_path / "out")
    (tmp_path / "out").mkdir()
    tune.open_storage(tune.StorageSettings(shown))  # Optuna's tables, before any worker
    engine_url = tune.engine_url(shown)
    storage = optuna.storages.RDBStorage(
        engine_url.render_as_string(hide_password=False),
        engine_kwargs={"connect_args": tune.connect_args(engine_url)})
    return Study(url, tmp_path, storage)


@pytest.fixture()
def start(study: Study) -> Iterator[Callable[..., Worker]]:
    """Start ``gnn tune`` workers on the study (each its own --out on PostgreSQL, as on
    separate machines; one shared --out and SQLite file otherwise); stopped at the end."""
    workers: list[Worker] = []

    def launch(heartbeat: int, grace: int) -> Worker:
        index = len(workers)
        out = study.folder / ("out" if study.url is None else f"out{index}")
        argv = [sys.executable, "-m", "gnn", "tune", "--models", "gcn", "--trials", str(TRIALS),
                "--configs", str(study.folder / "configs"), "--out", str(out), "--epochs",
                str(EPOCHS), "--heartbeat", str(heartbeat), "--grace", str(grace)]
        if study.url is not None:
            argv += ["--storage", study.url]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        log = study.folder / f"worker{index}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=handle,
                                       stderr=subprocess.STDOUT)
        workers.append(Worker(process, log))
        return workers[-1]

    yield launch
    for worker in workers:
        worker.signal(signal.SIGCONT)
        worker.signal(signal.SIGKILL)
        worker.process.wait()


def wait_until(condition: Callable[[], Any], what: str, *workers: Worker) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        for worker in workers:
            if worker.process.poll() is not None:
                pytest.fail(f"worker {worker.pid} exited ({worker.process.returncode}) "
                            f"before {what}:\n{worker.output()}")
        time.sleep(0.02)
    pytest.fail(f"no {what} within {DEADLINE_S:.0f} s")


def worker_of(trial: Any) -> int | None:
    worker = trial.user_attrs.get("worker", "")
    return int(worker.rsplit(":", 1)[1]) if worker else None


def training_trial(study: Study, worker: Worker) -> int | None:
    """The trial ``worker`` is training (running, every parameter drawn, heartbeat sent)."""
    for trial in study.trials():
        if trial.state.name == "RUNNING" and worker_of(trial) == worker.pid \
                and len(trial.params) == SPACE_SIZE and study.has_heartbeat(trial.number):
            return trial.number
    return None


def pause_mid_trial(study: Study, worker: Worker) -> int:
    """Pause ``worker`` inside a trial and return the trial's number: the check runs while the
    worker is stopped, so it cannot have moved on."""
    def paused() -> int | None:
        number = training_trial(study, worker)
        if number is None:
            return None
        worker.signal(signal.SIGSTOP)
        if training_trial(study, worker) == number and not study.write_locked():
            return number + 1  # truthy for wait_until
        worker.signal(signal.SIGCONT)
        return None

    return wait_until(paused, f"trial of worker {worker.pid} in training", worker) - 1


def check_budget(trials: list[Any]) -> list[Any]:
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == TRIALS, states
    return complete


def test_two_workers_share_one_budget(study: Study, start: Callable[..., Worker]) -> None:
    """Both workers run trials (one is held inside a trial until the other has finished one),
    the study ends with exactly the budget, and no two trials drew the same parameters."""
    first, second = start(heartbeat=1, grace=600), start(heartbeat=1, grace=600)
    pause_mid_trial(study, first)
    wait_until(lambda: any(t.state.name == "COMPLETE" and worker_of(t) == second.pid
                           for t in study.trials()), "complete trial of the second worker",
               second)
    first.signal(signal.SIGCONT)
    assert (first.finish(), second.finish()) == (0, 0), first.output() + second.output()
    complete = check_budget(study.trials())
    assert {worker_of(t) for t in complete} == {first.pid, second.pid}
    drawn = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(drawn)) == len(drawn)


def test_a_killed_worker_s_trial_is_failed_then_retried(
        study: Study, start: Callable[..., Worker]) -> None:
    victim, survivor = start(heartbeat=1, grace=2), start(heartbeat=1, grace=2)
    killed = pause_mid_trial(study, victim)
    victim.signal(signal.SIGKILL)
    victim.process.wait()
    assert survivor.finish() == 0, survivor.output()
    trials = study.trials()
    complete = check_budget(trials)
    assert trials[killed].state.name == "FAIL"
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].params == trials[killed].params
    assert worker_of(retries[0]) == survivor.pid
    assert "failed: its worker stopped" in (study.folder / ("out" if study.url is None
                                                            else "out1") / "trials.csv"
                                            ).read_text()


def test_a_paused_worker_whose_trial_was_taken_over_goes_on(
        study: Study, start: Callable[..., Worker]) -> None:
    """A worker paused for longer than the grace period (a suspended machine) finds its trial
    failed and retried by the other when it resumes: it warns, goes on, and the study still
    ends with exactly the budget."""
    sleeper, other = start(heartbeat=1, grace=2), start(heartbeat=1, grace=2)
    taken = pause_mid_trial(study, sleeper)
    wait_until(lambda: any(t.system_attrs.get("failed_trial") == taken for t in study.trials()),
               "retry of the paused worker's trial", other)
    sleeper.signal(signal.SIGCONT)
    assert (sleeper.finish(), other.finish()) == (0, 0), sleeper.output() + other.output()
    trials = study.trials()
    check_budget(trials)
    assert trials[taken].state.name == "FAIL"
    assert f"gnn: warning: trial {taken} was failed by another worker" in sleeper.output()
