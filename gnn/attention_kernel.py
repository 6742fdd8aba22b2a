"""GAT's attention for M stacked members as compiled loops (numba), for the CPU: every
member's and head's attention logits, their softmax over each node's incoming edges, attention
dropout and the weighted sum of the neighbours' features in passes over each node's edges (the
exponentials between two of them, vectorised by numpy), and the backward of all of it in two
more (one over each node's incoming edges, one over its outgoing ones).

As tensor operations (PyG's ``GATConv``, or the same with a member axis) a step writes the
messages ``[E, heads, channels]`` and scatters them, draws a float per edge and head for the
dropout, and passes over edge-sized blocks once per operation: 20 members on Cora took about as
long per member as one ``GATConv`` model each. Here a node's edges are read where they lie in
memory and each output row is written once.

Layouts: features ``h [N, K, C]`` node-major (K = members x heads of C channels each: a node's
row is read whole for each of its edges), attention vectors ``[K, C]``, per-edge values
``[E, K]``. The graph is a CSR of incoming edges (each node's sources, self-loops included, as
``GATConv`` adds them) with its transpose for the backward. The sums follow PyG's: logits
``leaky_relu(a_src[j] + a_dst[i])`` with ``a_* = sum_c h[., q, c] att_*[q, c]``, softmax
``exp(z - max) / (sum + 1e-16)``; their order differs (a node's edges in CSR order), so results
agree with ``GATConv`` to float32 rounding.

Dropout keeps an attention weight unless its 16-bit draw falls below ``round(65536 p)``, from
a counter-based stream (:func:`gnn.compiled.mix64` of the step's seed and the position), so no
mask is drawn by the tensor library and the results do not depend on the threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

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
    specialised,
)

__all__ = ["Attention", "available"]


#: Nodes per block of the loops' thread split (each block allocates its buffers once).
_BLOCK = 64


def _logits(ptr: np.ndarray, src: np.ndarray, a_src: np.ndarray, a_dst: np.ndarray,
            slope: np.float32, alpha: np.ndarray) -> None:
    """``alpha[e, q] = leaky_relu(a_src[j, q] + a_dst[i, q])`` for every edge ``e = (j, i)``,
    less its maximum over node ``i``'s incoming edges (the softmax's shift)."""
    n, width = ptr.shape[0] - 1, a_src.shape[1]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        top = np.empty(width, np.float32)
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            top[:] = -np.inf
            for e in range(ptr[i], ptr[i + 1]):
                j = src[e]
                for q in range(width):
                    z = a_src[j, q] + a_dst[i, q]
                    z = z if z > 0 else z * slope
                    alpha[e, q] = z
                    if z > top[q]:
                        top[q] = z
            for e in range(ptr[i], ptr[i + 1]):
                for q in range(width):
                    alpha[e, q] -= top[q]


#: The channel count of a head in the loops below: a placeholder here, each compile of them
#: binds its own (:func:`_loops`).
_C = 0


def _terms(h: np.ndarray, att_src: np.ndarray, att_dst: np.ndarray, a_src: np.ndarray,
           a_dst: np.ndarray) -> None:
    """The logits' two terms of every node, ``a_src[n, q] = sum_c h[n, q, c]
    att_src[q, c]`` and ``a_dst`` alike."""
    n, width = a_src.shape
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            for q in range(width):
                s = np.float32(0.0)
                d = np.float32(0.0)
                for c in range(_C):
                    s += h[i, q * _C + c] * att_src[q, c]
                    d += h[i, q * _C + c] * att_dst[q, c]
                a_src[i, q] = s
                a_dst[i, q] = d


def _aggregate(ptr: np.ndarray, src: np.ndarray, h: np.ndarray, seed: np.uint64,
               threshold: np.uint64, scale: np.float32, alpha: np.ndarray,
               factor: np.ndarray, out: np.ndarray) -> None:
    """From ``alpha = exp(shifted logits)``: the softmax (kept in ``alpha``), its dropout
    (factors 0 or ``scale`` in ``factor``; edge ``e``'s draws are words ``e *
    ceil(width / 4) + w`` of the seed's stream, four 16-bit lanes each) and ``out[i] =
    sum_e weight[e] * h[j]`` per head."""
    n, width = ptr.shape[0] - 1, alpha.shape[1]
    words = (width + 3) // 4
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        total = np.empty(width, np.float32)
        weight = np.empty(width, np.float32)
        acc = np.empty(width * _C, np.float32)
        draws = np.zeros(words, np.uint64)
        lanes = draws.view(np.uint16)
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            total[:] = 0.0
            for e in range(ptr[i], ptr[i + 1]):
                for q in range(width):
                    total[q] += alpha[e, q]
            for q in range(width):
                total[q] += np.float32(1e-16)
            acc[:] = 0.0
            for e in range(ptr[i], ptr[i + 1]):
                j = src[e]
                if threshold:
                    for w in range(words):
                        draws[w] = mix64(seed + np.uint64(e * words + w) * GOLDEN)
                for q in range(width):
                    a = alpha[e, q] / total[q]
                    alpha[e, q] = a
                    if threshold:
                        f = scale if lanes[q] >= threshold else np.float32(0.0)
                        factor[e, q] = f
                        a = a * f
                    weight[q] = a
                for q in range(width):
                    a = weight[q]
                    for c in range(_C):
                        acc[q * _C + c] += a * h[j, q * _C + c]
            out[i, :] = acc


def _backward_targets(ptr: np.ndarray, src: np.ndarray, a_src: np.ndarray,
                      a_dst: np.ndarray, h: np.ndarray, alpha: np.ndarray,
                      factor: np.ndarray, dropout: bool, grad_out: np.ndarray,
                      slope: np.float32, grad_logit: np.ndarray,
                      grad_dst: np.ndarray) -> None:
    """Over each node's incoming edges: the gradient of every edge's logit before the
    softmax (``grad_logit``, through dropout, softmax and leaky ReLU) and of ``a_dst``."""
    n, width = ptr.shape[0] - 1, alpha.shape[1]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        dot = np.empty(width, np.float32)
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            dot[:] = 0.0
            for e in range(ptr[i], ptr[i + 1]):
                j = src[e]
                for q in range(width):
                    s = np.float32(0.0)
                    for c in range(_C):
                        s += grad_out[i, q * _C + c] * h[j, q * _C + c]
                    if dropout:
                        s = s * factor[e, q]
                    grad_logit[e, q] = s
                    dot[q] += alpha[e, q] * s
            for e in range(ptr[i], ptr[i + 1]):
                j = src[e]
                for q in range(width):
                    d = alpha[e, q] * (grad_logit[e, q] - dot[q])
                    d = d if a_src[j, q] + a_dst[i, q] > 0 else d * slope
                    grad_logit[e, q] = d
                    grad_dst[i, q] += d


def _backward_sources(tptr: np.ndarray, tedge: np.ndarray, dst: np.ndarray,
                      alpha: np.ndarray, factor: np.ndarray, dropout: bool,
                      grad_out: np.ndarray, grad_logit: np.ndarray, h: np.ndarray,
                      att_src: np.ndarray, att_dst: np.ndarray, grad_dst: np.ndarray,
                      grad_h: np.ndarray, part_src: np.ndarray,
                      part_dst: np.ndarray) -> None:
    """Over each node's outgoing edges (the transposed CSR): the gradient of the
    features it sent, through the weighted sums and through the logits' two terms, and
    per block of nodes the attention vectors' partial gradients ``part_* [blocks, K,
    _C]``."""
    n, width = tptr.shape[0] - 1, alpha.shape[1]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        acc = np.empty(width * _C, np.float32)
        weight = np.empty(width, np.float32)
        grad_src = np.empty(width, np.float32)
        for j in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            acc[:] = 0.0
            grad_src[:] = 0.0
            for t in range(tptr[j], tptr[j + 1]):
                e = tedge[t]
                i = dst[e]
                for q in range(width):
                    grad_src[q] += grad_logit[e, q]
                    weight[q] = alpha[e, q] * factor[e, q] if dropout else alpha[e, q]
                for q in range(width):
                    a = weight[q]
                    for c in range(_C):
                        acc[q * _C + c] += a * grad_out[i, q * _C + c]
            for q in range(width):
                s, d = grad_src[q], grad_dst[j, q]
                for c in range(_C):
                    acc[q * _C + c] += s * att_src[q, c] + d * att_dst[q, c]
                    part_src[block, q, c] += s * h[j, q * _C + c]
                    part_dst[block, q, c] += d * h[j, q * _C + c]
            grad_h[j, :] = acc


@functools.cache
def _loops(channels: int, parallel: bool) -> tuple[Callable[..., None], ...]:
    """The loops for ``channels`` channels a head, compiled with that count as a constant
    (:func:`gnn.compiled.specialised`): the inner loops over a head's channels then unroll
    into vector instructions (with the count a variable, 20 members x 8 heads x 8 channels
    aggregated 2.9x slower). Once per process and count, about a second."""
    return tuple(specialised(f, parallel, _C=channels)
                 for f in (_terms, _aggregate, _backward_targets, _backward_sources))


_LOGITS = {False: jit(_logits), True: parallel_jit(_logits)}


def _drop(p: float) -> tuple[np.uint64, np.float32]:
    """The 16-bit threshold below which a weight is dropped and the scale of the kept ones."""
    threshold = round(p * 65536)
    return np.uint64(threshold), np.float32(65536.0 / (65536 - threshold))


class Saved(NamedTuple):
    """What a forward keeps for its backward: the logits' terms ``[N, K]``, the softmax
    weights and the dropout factors ``[E, K]`` (empty without dropout)."""

    a_src: np.ndarray
    a_dst: np.ndarray
    alpha: np.ndarray
    factor: np.ndarray


class Attention:
    """The attention of one graph (CSR of incoming edges ``ptr``/``src``, its transpose
    ``tptr``/``tedge`` and each edge's target ``dst``), on ``threads`` threads where this
    process may (see :func:`gnn.compiled.parallel_allowed`). A forward with dropout keeps its
    weights and dropout factors for the backward that follows it."""

    def __init__(self, ptr: np.ndarray, src: np.ndarray, tptr: np.ndarray, tedge: np.ndarray,
                 dst: np.ndarray, threads: int) -> None:
        self.ptr, self.src, self.tptr, self.tedge, self.dst = ptr, src, tptr, tedge, dst
        self.threads = max(1, threads)

    def _parallel(self) -> bool:
        if self.threads > 1 and parallel_allowed():
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
            return True
        return False

    def forward(self, h: np.ndarray, att_src: np.ndarray, att_dst: np.ndarray, slope: float,
                p: float, seed: int) -> tuple[np.ndarray, Saved]:
        """The attended features ``[N, K, C]`` from ``h [N, K, C]`` and the attention vectors
        ``att_* [K, C]``, and what the backward reads."""
        threshold, scale = _drop(p)
        n, width, channels = h.shape
        parallel = self._parallel()
        loops = _loops(channels, parallel)
        flat = h.reshape(n, -1)
        a_src, a_dst = np.empty((n, width), np.float32), np.empty((n, width), np.float32)
        loops[0](flat, att_src, att_dst, a_src, a_dst)
        alpha = np.empty((len(self.src), width), np.float32)
        factor = np.empty((len(self.src) if threshold else 0, width), np.float32)
        out = np.empty_like(h)
        _LOGITS[parallel](self.ptr, self.src, a_src, a_dst, np.float32(slope), alpha)
        np.exp(alpha, out=alpha)  # numpy's vectorised exp: 3-6x the compiled loop's
        loops[1](self.ptr, self.src, flat, np.uint64(seed), threshold, scale, alpha, factor,
                 out.reshape(n, -1))
        return out, Saved(a_src, a_dst, alpha, factor)

    def backward(self, h: np.ndarray, att_src: np.ndarray, att_dst: np.ndarray, saved: Saved,
                 grad_out: np.ndarray, slope: float) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
        """The gradients of ``h``, ``att_src`` and ``att_dst`` from that of the output."""
        n, width, channels = h.shape
        loops = _loops(channels, self._parallel())
        dropout = saved.factor.shape[0] > 0
        flat, grad_out = h.reshape(n, -1), grad_out.reshape(n, -1)
        grad_logit = np.empty_like(saved.alpha)
        grad_dst = np.zeros_like(saved.a_dst)
        loops[2](self.ptr, self.src, saved.a_src, saved.a_dst, flat, saved.alpha, saved.factor,
                 dropout, grad_out, np.float32(slope), grad_logit, grad_dst)
        grad_h = np.empty_like(h)
        blocks = (n + _BLOCK - 1) // _BLOCK
        part_src = np.zeros((blocks, width, channels), np.float32)
        part_dst = np.zeros((blocks, width, channels), np.float32)
        loops[3](self.tptr, self.tedge, self.dst, saved.alpha, saved.factor, dropout, grad_out,
                 grad_logit, flat, att_src, att_dst, grad_dst, grad_h.reshape(n, -1),
                 part_src, part_dst)
        return grad_h, part_src.sum(0), part_dst.sum(0)
