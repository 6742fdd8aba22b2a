"""Independent runs spread over forked processes of this machine (``--workers N``).

On the 2-core CPU two processes of one thread do more than one process of two: a training
step is hundreds of short operations, and two threads wait for each other at the end of each
(20-member APPNP steps, per member-epoch for the machine: 1.16-1.21 against 1.43-1.87 ms).

The processes are forked, so they inherit what the parent loaded (the graphs, handed over as
``state`` and read back with :func:`worker_state`) without pickling it. A worker leaves Ctrl-C
to its parent (a terminal sends it to the whole process group) and ends at once on SIGTERM,
from its first instruction on (it is forked with both signals blocked until it has set that);
the parent, on any exception, cancels the queued work and terminates its workers, so a stopped
run leaves no process behind. CUDA cannot be used in a child forked after the parent has used
it: callers keep GPU work in their own process.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, Generic, TypeVar

import torch

from gnn.errors import TrainingError

Item = TypeVar("Item")
Result = TypeVar("Result")

#: A worker's share of the parent's state, inherited when the pool forks it.
_state: Any = None


def worker_state() -> Any:
    """What the parent handed its workers (``None`` in the parent itself)."""
    return _state


#: Blocked while the pool forks its workers, until each has set its own handlers: a worker
#: otherwise starts with the parent's handlers, and a Ctrl-C to the process group (or the
#: parent's SIGTERM) arriving before it replaced them raised in its start-up code and printed
#: a traceback (under load, about one Ctrl-C in eight).
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _start_worker(threads: int, state: Any) -> None:
    global _state
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards a pending Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a pending SIGTERM ends the worker now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    torch.set_num_threads(threads)
    _state = state


class Workers(Generic[Item, Result]):
    """A pool of ``workers`` forked processes, each with an equal share of torch's threads (at
    least one). Leaving the ``with`` block on an exception (an error, Ctrl-C, SIGTERM turned
    into an exception) cancels what is queued and terminates the workers at once."""

    def __init__(self, workers: int, state: Any) -> None:
        threads = max(1, torch.get_num_threads() // workers)
        self._others = set(multiprocessing.active_children())
        self._pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker, initargs=(threads, state))

    def __enter__(self) -> Workers[Item, Result]:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self._pool.shutdown()
            return
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in set(multiprocessing.active_children()) - self._others:
            process.terminate()

    def as_completed(self, task: Callable[[Item], Result],
                     items: Sequence[Item]) -> Iterator[tuple[int, Result]]:
        """``(index, task(items[index]))`` for every item, as each finishes; an error raised in
        a worker is raised here, and a worker that died is a one-line ``TrainingError``."""
        # the pool forks its workers at the first submission, with this thread's signal mask
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            futures: dict[Future[Result], int] = {
                self._pool.submit(task, item): i for i, item in enumerate(items)}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BrokenProcessPool as exc:
            raise TrainingError(f"a worker process ended abruptly ({exc})") from None

    def in_order(self, task: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        """``[task(item) for item in items]``, computed by the workers."""
        results: list[Any] = [None] * len(items)
        for i, result in self.as_completed(task, items):
            results[i] = result
        return results

