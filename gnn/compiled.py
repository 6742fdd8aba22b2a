"""What the compiled (numba) kernels share: the decorator that compiles them, and a 64-bit
mixing function for their random streams.

numba is imported only where this module is, by the kernels that need it: a process that never
runs one does not pay its import, and :func:`available` says whether they can run at all.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

try:
    import numba
except ImportError:  # the callers' tensor code serves instead
    numba = None

#: 2**64 divided by the golden ratio: the increment of a splitmix64 stream.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def available() -> bool:
    return numba is not None


def jit(function: Callable[..., Any]) -> Callable[..., Any]:
    """Compiled and cached next to the module when numba can (a read-only install compiles in
    each process instead), releasing the GIL; the plain function without numba, never called
    then."""
    return _compile(function, parallel=False)


def reassociating_jit(function: Callable[..., Any]) -> Callable[..., Any]:
    """As :func:`jit`, with floating-point sums free to be reassociated (LLVM's ``reassoc``
    flag alone): a dot product then runs as vector lanes of partial sums instead of one chain
    of dependent adds. Its rounding then differs from a sum in order, as a BLAS product's
    does; use it only where no exact order is promised."""
    return _compile(function, parallel=False, fastmath=frozenset({"reassoc"}))


def parallel_jit(function: Callable[..., Any]) -> Callable[..., Any]:
    """As :func:`jit`, with the function's ``prange`` loops split between threads (numba's
    threading layer; see :func:`parallel_allowed` before calling one). The function is
    compiled under a name of its own: numba names its cache files after the function, and a
    serial compile of the same function would otherwise load the threaded code."""
    threaded = types.FunctionType(function.__code__, function.__globals__,
                                  f"{function.__name__}_threaded", function.__defaults__,
                                  function.__closure__)
    threaded.__qualname__ = f"{function.__qualname__}_threaded"
    return _compile(threaded, parallel=True)


def specialised(function: Callable[..., Any], parallel: bool,
                **constants: Any) -> Callable[..., Any]:
    """``function`` compiled (threaded where ``parallel``) with ``constants`` replacing
    module globals of the same names. numba freezes globals into the code, so a loop over a
    constant count can unroll into vector instructions. Not cached on disk: numba keys its
    cache by the function's module and name, which the constants do not enter."""
    if numba is None:
        return function
    bound = types.FunctionType(function.__code__, {**function.__globals__, **constants},
                               function.__name__, function.__defaults__, function.__closure__)
    return numba.njit(cache=False, nogil=True, parallel=parallel)(bound)


@contextlib.contextmanager
def slp_vectorised() -> Iterator[None]:
    """numba compiles with LLVM's SLP vectoriser off (its loop vectoriser stays on), so
    straight-line code over many scalars stays scalar. A function that keeps its sums in
    scalar variables, so that they stay in registers, needs the SLP vectoriser to pack those
    scalars into vector registers: it must be compiled, that is first called, inside this
    block. The setting is numba's global one, restored on leaving: a compile in another thread
    meanwhile would be vectorised too, which changes its speed alone (the vectoriser does not
    reorder floating-point sums)."""
    if numba is None:  # nothing is compiled
        yield
        return
    previous = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = True
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = previous


def _compile(function: Callable[..., Any], parallel: bool,
             fastmath: frozenset[str] = frozenset()) -> Callable[..., Any]:
    if numba is None:
        return function
    options = {"nogil": True, "parallel": parallel, "fastmath": set(fastmath) or False}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # no writable cache location
        return numba.njit(cache=False, **options)(function)


#: ``numba.prange`` (a plain ``range`` in a serial compile, or without numba).
prange = range if numba is None else numba.prange

_parallel_pid: int | None = None


def parallel_allowed() -> bool:
    """Whether this process may run a :func:`parallel_jit` function. Its threading layer (GNU
    OpenMP here) cannot be used in a child forked from a process that used it (numba ends such
    a child), so the first process to ask owns it and a forked child runs serial code."""
    global _parallel_pid
    if numba is None:
        return False
    if _parallel_pid is None:
        _parallel_pid = os.getpid()
    return _parallel_pid == os.getpid()


@jit
def mix64(z: np.uint64) -> np.uint64:
    """splitmix64's finaliser: 64 well-mixed bits from a counter (a stream's next value is
    ``mix64(start + i * GOLDEN)``), so a kernel can draw the ``i``-th number of a stream without
    drawing the ones before it."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
