"""The first layer of M stacked members on CSR features as compiled loops (numba), for the CPU:
each member's input dropout, its sparse product with its own weights, its bias, ReLU and
hidden dropout in one pass over the rows, and the backward of all of it in another.

As tensor operations an 8-member APPNP step on Cora spent most of its time outside arithmetic:
drawing a random byte per input entry and per hidden unit, writing the dropped values, the
product, the masked activations and their gradients as separate passes over blocks of
megabytes, and multiplying the half of the entries that dropout had zeroed. Here each member's
kept entries are gathered once per step (about half of them), the product accumulates a row in
a buffer the size of one row and writes the activated row once, and the backward scatters only
the kept entries' gradients. A member's dropout masks come from a counter-based stream
(:func:`gnn.compiled.mix64` of the step's seed, the member and the position), so no mask is
stored and the results do not depend on how members are split between threads.

The drop probability is ``p`` rounded to a multiple of 1/256 (0.5 exactly), as in the tensor
code: a position is kept unless its random byte falls below ``round(256 p)``. The sums follow
PyTorch's CSR product (each row's entries in order, the bias added last; the weight gradient
summed over rows in order), so without dropout the layer matches the tensor code to float32
rounding.
"""

from __future__ import annotations

import numpy as np

from gnn.compiled import (
    GOLDEN,
    available,
    jit,
    mix64,
    numba,
    parallel_allowed,
    parallel_jit,
    prange,
)

__all__ = ["FirstLayer", "available"]

#: Offsets that keep the input and hidden masks' streams of one member apart.
_INPUT_STREAM = np.uint64(0x243F6A8885A308D3)
_HIDDEN_STREAM = np.uint64(0x13198A2E03707344)


@jit
def _keep_entries(crow: np.ndarray, col: np.ndarray, val: np.ndarray, seed: np.uint64,
                  threshold: np.uint64, scale: np.float32, kept_crow: np.ndarray,
                  kept_col: np.ndarray, kept_val: np.ndarray) -> None:
    """One member's input dropout: the CSR entries it keeps (values scaled), row by row. Entry
    ``e`` is kept by byte ``e % 8`` of the input stream's draw ``e // 8``. The bytes are drawn
    first; the copy is unconditional and the count moves by the keep flag, so there is no
    branch to mispredict."""
    nnz = val.shape[0]
    draws = np.empty((nnz + 7) // 8, np.uint64)
    start = seed ^ _INPUT_STREAM
    for w in range(draws.shape[0]):
        draws[w] = mix64(start + np.uint64(w) * GOLDEN)
    keep = draws.view(np.uint8)
    n = 0
    for i in range(crow.shape[0] - 1):
        kept_crow[i] = n
        for e in range(crow[i], crow[i + 1]):
            kept_col[n] = col[e]
            kept_val[n] = val[e] * scale
            n += keep[e] >= threshold
    kept_crow[crow.shape[0] - 1] = n


@jit
def _accumulate_row(start: int, end: int, col: np.ndarray, val: np.ndarray, weight: np.ndarray,
                    acc: np.ndarray) -> None:
    """``acc = sum_e val[e] weight[col[e]]`` over entries ``start:end``, in their order. Four
    entries share one pass over ``acc``: added left to right, ``acc + a + b + c + d`` rounds as
    four passes would, and reads and writes ``acc`` once instead of four times (numba leaves the
    loop over ``acc`` in memory; one pass per entry cost about a fifth more)."""
    acc[:] = 0.0
    e = start
    while e + 4 <= end:
        v0, v1, v2, v3 = val[e], val[e + 1], val[e + 2], val[e + 3]
        w0, w1, w2, w3 = weight[col[e]], weight[col[e + 1]], weight[col[e + 2]], weight[col[e + 3]]
        for k in range(acc.shape[0]):
            acc[k] = acc[k] + v0 * w0[k] + v1 * w1[k] + v2 * w2[k] + v3 * w3[k]
        e += 4
    while e < end:
        v, w = val[e], weight[col[e]]
        for k in range(acc.shape[0]):
            acc[k] += v * w[k]
        e += 1


@jit
def _forward(crow: np.ndarray, col: np.ndarray, val: np.ndarray, weight: np.ndarray,
             bias: np.ndarray, seed: np.uint64, threshold: np.uint64, scale: np.float32,
             out: np.ndarray) -> None:
    """One member: ``out = dropout(relu(X @ W + b))`` row by row (``threshold`` 0: no
    dropout). Each row sums its entries in order into one row-sized buffer, as PyTorch's CSR
    product does, then adds the bias. Unit ``k`` of row ``i`` is kept by byte ``k % 8`` of the
    hidden stream's draw ``i * ceil(hidden / 8) + k // 8``; the bytes of a row are drawn first,
    so that the activation is one branch-free pass."""
    hidden = weight.shape[1]
    words = (hidden + 7) // 8
    acc = np.empty(hidden, np.float32)
    draws = np.empty(words, np.uint64)
    keep = draws.view(np.uint8)
    start = seed ^ _HIDDEN_STREAM
    for i in range(crow.shape[0] - 1):
        _accumulate_row(crow[i], crow[i + 1], col, val, weight, acc)
        if threshold == 0:
            for k in range(hidden):
                out[i, k] = max(acc[k] + bias[k], np.float32(0.0))
            continue
        for w in range(words):
            draws[w] = mix64(start + np.uint64(i * words + w) * GOLDEN)
        for k in range(hidden):
            factor = scale if keep[k] >= threshold else np.float32(0.0)
            out[i, k] = max(acc[k] + bias[k], np.float32(0.0)) * factor


@jit
def _backward(crow: np.ndarray, col: np.ndarray, val: np.ndarray, out: np.ndarray,
              grad_out: np.ndarray, scale: np.float32, grad_weight: np.ndarray,
              grad_bias: np.ndarray) -> None:
    """One member's weight and bias gradients from the gradient of its activated output. A
    unit passed the gradient iff its output is positive (ReLU passed it and dropout kept it);
    the weight gradient scatters each kept entry's share into the row of its feature."""
    hidden = out.shape[1]
    grad = np.empty(hidden, np.float32)
    bias_sum = np.zeros(hidden, np.float64)  # a sum over every row: kept in double
    grad_weight[:] = 0.0
    for i in range(crow.shape[0] - 1):
        for k in range(hidden):
            grad[k] = grad_out[i, k] * scale if out[i, k] > 0.0 else np.float32(0.0)
            bias_sum[k] += grad[k]
        for e in range(crow[i], crow[i + 1]):
            v, j = val[e], col[e]
            for k in range(hidden):
                grad_weight[j, k] += v * grad[k]
    grad_bias[:] = bias_sum


@jit
def _member_seeds(seed: np.uint64, members: int) -> np.ndarray:
    """A well-separated stream start per member from the step's one seed."""
    seeds = np.empty(members, np.uint64)
    for m in range(members):
        seeds[m] = mix64(seed + np.uint64(m + 1) * GOLDEN)
    return seeds


def _forward_members(crow: np.ndarray, col: np.ndarray, val: np.ndarray, weight: np.ndarray,
                     bias: np.ndarray, seeds: np.ndarray, threshold: np.uint64,
                     scale: np.float32, out: np.ndarray, kept_crow: np.ndarray,
                     kept_col: np.ndarray, kept_val: np.ndarray) -> None:
    """Every member's :func:`_forward`, on its kept entries when there is dropout."""
    for m in prange(weight.shape[0]):
        if threshold:
            _keep_entries(crow, col, val, seeds[m], threshold, scale, kept_crow[m],
                          kept_col[m], kept_val[m])
            _forward(kept_crow[m], kept_col[m], kept_val[m], weight[m], bias[m], seeds[m],
                     threshold, scale, out[m])
        else:
            _forward(crow, col, val, weight[m], bias[m], seeds[m], threshold, scale, out[m])


def _backward_members(crow: np.ndarray, col: np.ndarray, val: np.ndarray, out: np.ndarray,
                      grad_out: np.ndarray, scale: np.float32, grad_weight: np.ndarray,
                      grad_bias: np.ndarray) -> None:
    """Every member's :func:`_backward` (``crow``/``col``/``val`` with a member axis)."""
    for m in prange(out.shape[0]):
        _backward(crow[m], col[m], val[m], out[m], grad_out[m], scale, grad_weight[m],
                  grad_bias[m])


#: The member loops on one thread, and split between threads (members are independent, so the
#: split changes nothing in the results).
_SERIAL = (jit(_forward_members), jit(_backward_members))
_PARALLEL = (parallel_jit(_forward_members), parallel_jit(_backward_members))


def _drop(p: float) -> tuple[np.uint64, np.float32]:
    """The byte threshold below which a position is dropped (``round(256 p)``) and the scale
    of the kept ones."""
    threshold = round(p * 256)
    return np.uint64(threshold), np.float32(256.0 / (256 - threshold))


class FirstLayer:
    """``dropout(relu(dropout(X) @ W_m + b_m))`` for every member ``m`` of a stack, CSR ``X``
    shared, and its backward.

    Members run side by side on ``threads`` threads where this process may (see
    :func:`gnn.compiled.parallel_allowed`). Threads of our own beside torch's were slower than
    one thread: torch's OpenMP workers keep spinning for a while after each operation, and
    took the cores from them. The kept entries' buffers are reused from step to step, so a
    training step's backward must come before the next training forward, as in any loop."""

    def __init__(self, crow: np.ndarray, col: np.ndarray, val: np.ndarray, features: int,
                 threads: int) -> None:
        self.crow, self.col, self.val, self.features = crow, col, val, features
        self.threads = max(1, threads)
        self._kept: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _loops(self, members: int) -> tuple:
        if self.threads > 1 and members > 1 and parallel_allowed():
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
            return _PARALLEL
        return _SERIAL

    def _kept_buffers(self, members: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._kept is None or self._kept[0].shape[0] != members:
            nnz = self.val.shape[0]
            self._kept = (np.empty((members, self.crow.shape[0]), self.crow.dtype),
                          np.empty((members, nnz), self.col.dtype),
                          np.empty((members, nnz), np.float32))
        return self._kept

    def forward(self, weight: np.ndarray, bias: np.ndarray, out: np.ndarray, p: float,
                seed: int) -> None:
        """Fill ``out [M, N, hidden]`` from ``weight [M, F, hidden]`` and ``bias [M, hidden]``
        with drop probability ``p`` (0: none, as in evaluation) and the step's ``seed``."""
        members = weight.shape[0]
        threshold, scale = _drop(p)
        seeds = _member_seeds(np.uint64(seed), members)
        kept = self._kept_buffers(members) if threshold else (self.crow[None], self.col[None],
                                                             self.val[None])
        self._loops(members)[0](self.crow, self.col, self.val, weight, bias, seeds, threshold,
                                scale, out, *kept)

    def backward(self, out: np.ndarray, grad_out: np.ndarray, grad_weight: np.ndarray,
                 grad_bias: np.ndarray, p: float) -> None:
        """The weight and bias gradients of the last :meth:`forward` with drop probability
        ``p``, from its output ``out`` and the gradient ``grad_out`` flowing into it."""
        members = out.shape[0]
        threshold, scale = _drop(p)
        if threshold:
            crow, col, val = self._kept_buffers(members)
        else:  # every member reads the shared entries
            crow, col, val = (np.broadcast_to(a, (members, *a.shape))
                              for a in (self.crow, self.col, self.val))
        self._loops(members)[1](crow, col, val, out, grad_out, scale, grad_weight, grad_bias)
