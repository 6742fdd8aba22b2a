"""The first layer of M stacked members on CSR features as compiled loops (numba), for the CPU:
each member's input dropout, its sparse product with its own weights, its bias and ReLU in one
pass over the rows, its hidden dropout in a second, and the backward of all of it in another;
where the next layer is the output (APPNP's MLP of two layers), that narrow product too, in the
same member loop.

As tensor operations an 8-member APPNP step on Cora spent most of its time outside arithmetic:
drawing a random byte per input entry and per hidden unit, writing the dropped values, the
product, the masked activations and their gradients as separate passes over blocks of
megabytes, and multiplying the half of the entries that dropout had zeroed. Here each member's
kept entries are gathered once per step (about half of them), the product sums a row in
registers (up to 64 units; else in a buffer the size of one row) and writes the activated row
once, and the backward scatters only the kept entries' gradients (a row's unit gradients held
in registers the same way). A member's dropout masks come from a counter-based stream
(:func:`gnn.compiled.mix64` of the step's seed, the member and the position), so no mask is
stored and the results do not depend on how members are split between threads.

The drop probability is ``p`` rounded to a multiple of 1/256 (0.5 exactly), as in the tensor
code: a position is kept unless its random byte falls below ``round(256 p)``. The sums follow
PyTorch's CSR product (each row's entries in order, the bias added last; the weight gradient
summed over rows in order), so without dropout the layer matches the tensor code to float32
rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

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
    reassociating_jit,
    slp_vectorised,
    specialised,
)

__all__ = ["FirstLayer", "Output", "available"]

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
def _hidden_dropout(out: np.ndarray, seed: np.uint64, threshold: np.uint64,
                    scale: np.float32) -> None:
    """One member's hidden dropout over its activated rows, in place. Unit ``k`` of row ``i``
    is kept by byte ``k % 8`` of the hidden stream's draw ``i * ceil(hidden / 8) + k // 8``;
    the bytes of a row are drawn first, so that the masking is one branch-free pass. A pass of
    its own after the rows' sums: inside the row loop it kept that loop from running in
    registers (20 APPNP members on Cora, one thread, with no dropout at all: 6.8 against 4.0
    ms a forward)."""
    hidden = out.shape[1]
    words = (hidden + 7) // 8
    draws = np.empty(words, np.uint64)
    keep = draws.view(np.uint8)
    start = seed ^ _HIDDEN_STREAM
    for i in range(out.shape[0]):
        for w in range(words):
            draws[w] = mix64(start + np.uint64(i * words + w) * GOLDEN)
        for k in range(hidden):
            factor = scale if keep[k] >= threshold else np.float32(0.0)
            out[i, k] = out[i, k] * factor


@jit
def _forward(crow: np.ndarray, col: np.ndarray, val: np.ndarray, weight: np.ndarray,
             bias: np.ndarray, seed: np.uint64, threshold: np.uint64, scale: np.float32,
             out: np.ndarray) -> None:
    """One member: ``out = dropout(relu(X @ W + b))`` row by row (``threshold`` 0: no
    dropout). Each row sums its entries in order into one row-sized buffer, as PyTorch's CSR
    product does, then adds the bias."""
    hidden = weight.shape[1]
    acc = np.empty(hidden, np.float32)
    for i in range(crow.shape[0] - 1):
        _accumulate_row(crow[i], crow[i + 1], col, val, weight, acc)
        for k in range(hidden):
            out[i, k] = max(acc[k] + bias[k], np.float32(0.0))
    if threshold:
        _hidden_dropout(out, seed, threshold, scale)


#: The widest rows kept in registers (:func:`_register_forward`, :func:`_register_backward`):
#: 64 float32 values take four AVX-512 or eight AVX2 registers; twice that would spill on AVX2.
MAX_REGISTER_UNITS = 64


def _generated(name: str, lines: list[str], **names: object) -> Callable[..., None]:
    """The function ``name`` whose source is ``lines``, compiled by numba (not cached on disk:
    numba caches only functions that have a source file). Generated because numba has no vector
    type: a row of ``hidden`` values stays in registers only as ``hidden`` named scalars, which
    LLVM's SLP vectoriser then packs into vector registers (compile under
    :func:`gnn.compiled.slp_vectorised`). In a buffer it does not: numba cannot tell the buffer
    from the arrays the loop reads and writes, so it loads (and stores) the row for every entry."""
    namespace: dict[str, object] = {"np": np, **names}
    exec(compile("\n".join(lines), f"<generated {name}>", "exec"), namespace)
    return numba.njit(nogil=True)(namespace[name])


@functools.cache
def _register_forward(hidden: int) -> Callable[..., None]:
    """:func:`_forward` for rows of ``hidden`` units, each row's sums in ``hidden`` scalars
    (:func:`_generated`), written to a row buffer once so that the bias and ReLU run as one
    vector loop. The same sums in the same order, so the same numbers, bit for bit; 20 APPNP
    members on Cora (64 units), one thread: an evaluation forward about 4 against 7 ms."""
    sums = [f"a{k}" for k in range(hidden)]
    return _generated("forward", [
        "def forward(crow, col, val, weight, bias, seed, threshold, scale, out):",
        f"    acc = np.empty({hidden}, np.float32)",
        "    for i in range(crow.shape[0] - 1):",
        f"        {' = '.join(sums)} = np.float32(0.0)",
        "        for e in range(crow[i], crow[i + 1]):",
        "            v, w = val[e], weight[col[e]]",
        *(f"            {a} += v * w[{k}]" for k, a in enumerate(sums)),
        *(f"        acc[{k}] = {a}" for k, a in enumerate(sums)),
        f"        for k in range({hidden}):",
        "            out[i, k] = max(acc[k] + bias[k], np.float32(0.0))",
        "    if threshold:",
        "        _hidden_dropout(out, seed, threshold, scale)",
    ], _hidden_dropout=_hidden_dropout)


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


@functools.cache
def _register_backward(hidden: int) -> Callable[..., None]:
    """:func:`_backward` for rows of ``hidden`` units, each row's unit gradients held in
    ``hidden`` scalars while its entries scatter them (:func:`_generated`). The same sums in the
    same order, bit for bit; 20 APPNP members on Cora, one thread: 5.8 against 4.3 ms."""
    grads = [f"g{k}" for k in range(hidden)]
    return _generated("backward", [
        "def backward(crow, col, val, out, grad_out, scale, grad_weight, grad_bias):",
        f"    grad = np.empty({hidden}, np.float32)",
        f"    bias_sum = np.zeros({hidden}, np.float64)",
        "    grad_weight[:] = 0.0",
        "    for i in range(crow.shape[0] - 1):",
        f"        for k in range({hidden}):",
        "            grad[k] = grad_out[i, k] * scale if out[i, k] > 0.0 else np.float32(0.0)",
        "            bias_sum[k] += grad[k]",
        *(f"        {g} = grad[{k}]" for k, g in enumerate(grads)),
        "        for e in range(crow[i], crow[i + 1]):",
        "            v, w = val[e], grad_weight[col[e]]",
        *(f"            w[{k}] += v * {g}" for k, g in enumerate(grads)),
        "    grad_bias[:] = bias_sum",
    ])


# --------------------------------------------------------------------------------------------
# The output layer after the hidden one: a narrow product, each member's own


@reassociating_jit
def _output_rows(hidden: np.ndarray, weight_t: np.ndarray, bias: np.ndarray,
                 logits: np.ndarray, member: int) -> None:
    """One member's logits, ``hidden @ weight_t.T + bias``, into its columns of the side-by-side
    ``logits [N, M * C]``. Each of a row's ``C`` sums is a dot product over the row, read from
    cache once for all of them; reassociated, so that it runs as vector lanes of partial sums
    (summed in order, each was one chain of dependent adds)."""
    classes = weight_t.shape[0]
    for i in range(hidden.shape[0]):
        for c in range(classes):
            total = np.float32(0.0)
            for k in range(hidden.shape[1]):
                total += hidden[i, k] * weight_t[c, k]
            logits[i, member * classes + c] = total + bias[c]


@functools.cache
def _output_gradients_for(classes: int) -> Callable[..., None]:
    """One member's output-layer backward for ``classes`` outputs (:func:`_generated`): per row,
    the gradient of its hidden units, ``sum_c g_c weight_t[c]``, and its share of the weight
    gradient, ``g_c hidden[i]`` for each ``c``, in one pass over the row's units with the row's
    ``C`` logit gradients in scalars (as loops over ``C``, the same sums took about twice as
    long: the partial sums went through memory for every class). The weight gradient is summed
    over rows in order in float32, as a GEMM would; the bias gradient in double."""
    grads = [f"g{c}" for c in range(classes)]
    return _generated("gradients", [
        "def gradients(hidden, grad_logits, member, weight_t, grad_hidden, grad_weight_t,",
        "              grad_bias):",
        f"    first = member * {classes}",
        f"    bias_sum = np.zeros({classes}, np.float64)",
        "    grad_weight_t[:] = 0.0",
        "    for i in range(hidden.shape[0]):",
        *(f"        {g} = grad_logits[i, first + {c}]" for c, g in enumerate(grads)),
        *(f"        bias_sum[{c}] += {g}" for c, g in enumerate(grads)),
        "        for k in range(hidden.shape[1]):",
        "            unit = hidden[i, k]",
        "            grad_hidden[i, k] = " + " + ".join(f"{g} * weight_t[{c}, k]"
                                                     for c, g in enumerate(grads)),
        *(f"            grad_weight_t[{c}, k] += {g} * unit" for c, g in enumerate(grads)),
        "    grad_bias[:] = bias_sum",
    ])


# --------------------------------------------------------------------------------------------
# Every member: the loops over members, on one thread or several


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
                     kept_col: np.ndarray, kept_val: np.ndarray,
                     output_weight_t: np.ndarray | None, output_bias: np.ndarray | None,
                     logits: np.ndarray | None) -> None:
    """Every member's :func:`_forward`, on its kept entries when there is dropout, then its
    output layer (:func:`_output_rows`) where ``output_weight_t`` is given (numba compiles
    the loop without that branch where it is ``None``), while the member's rows are still in
    cache."""
    for m in prange(weight.shape[0]):
        if threshold:
            _keep_entries(crow, col, val, seeds[m], threshold, scale, kept_crow[m],
                          kept_col[m], kept_val[m])
            _forward(kept_crow[m], kept_col[m], kept_val[m], weight[m], bias[m], seeds[m],
                     threshold, scale, out[m])
        else:
            _forward(crow, col, val, weight[m], bias[m], seeds[m], threshold, scale, out[m])
        if output_weight_t is not None:
            _output_rows(out[m], output_weight_t[m], output_bias[m], logits, m)


def _backward_members(crow: np.ndarray, col: np.ndarray, val: np.ndarray, out: np.ndarray,
                      grad_out: np.ndarray, scale: np.float32, grad_weight: np.ndarray,
                      grad_bias: np.ndarray) -> None:
    """Every member's :func:`_backward` (``crow``/``col``/``val`` with a member axis)."""
    for m in prange(out.shape[0]):
        _backward(crow[m], col[m], val[m], out[m], grad_out[m], scale, grad_weight[m],
                  grad_bias[m])


def _backward_members_through_output(crow: np.ndarray, col: np.ndarray, val: np.ndarray,
                                     out: np.ndarray, grad_logits: np.ndarray,
                                     scale: np.float32, grad_weight: np.ndarray,
                                     grad_bias: np.ndarray, output_weight_t: np.ndarray,
                                     grad_output_weight_t: np.ndarray,
                                     grad_output_bias: np.ndarray) -> None:
    """:func:`_backward_members` behind an output layer: each member's output layer first
    fills the gradient of its rows (``_output_gradients``: :func:`_output_gradients_for`, put
    in that name's place by :func:`gnn.compiled.specialised`) into a block of the thread's
    own, which its first layer then reads from cache. numba allocates that block once per
    thread (it hoists the allocation out of each thread's share of the loop): ``[N, hidden]``
    a thread, where a buffer for every member would be ``[M, N, hidden]``."""
    for m in prange(out.shape[0]):
        grad_rows = np.empty(out.shape[1:], np.float32)
        _output_gradients(out[m], grad_logits, m, output_weight_t[m],  # noqa: F821
                          grad_rows, grad_output_weight_t[m], grad_output_bias[m])
        _backward(crow[m], col[m], val[m], out[m], grad_rows, scale, grad_weight[m],
                  grad_bias[m])


#: The member loops without an output layer and with rows in a buffer, on one thread, and
#: split between threads (members are independent, so the split changes nothing in the
#: results); cached on disk.
_SERIAL = (jit(_forward_members), jit(_backward_members))
_PARALLEL = (parallel_jit(_forward_members), parallel_jit(_backward_members))


@functools.cache
def _specialised_loops(hidden: int, registers: bool, classes: int | None,
                       parallel: bool) -> tuple[Callable[..., None], ...]:
    """The member loops with rows of ``hidden`` units in registers (:func:`_register_forward`,
    :func:`_register_backward`) where ``registers``, and with an output layer of ``classes``
    where given (its generated backward). Compiled at their first call, which must be made
    under :func:`gnn.compiled.slp_vectorised`, in each process: 64 units and 7 classes, about
    1.6 s the forward and 4.1 s the backward."""
    forward = {"_forward": _register_forward(hidden)} if registers else {}
    backward = {"_backward": _register_backward(hidden)} if registers else {}
    backward_members = _backward_members
    if classes is not None:
        backward["_output_gradients"] = _output_gradients_for(classes)
        backward_members = _backward_members_through_output
    return (specialised(_forward_members, parallel, **forward),
            specialised(backward_members, parallel, **backward))


def _in_parallel(threads: int, members: int) -> bool:
    """Whether members run side by side on ``threads`` threads (numba's, set here)."""
    parallel = threads > 1 and members > 1 and parallel_allowed()
    if parallel:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return parallel


def _drop(p: float) -> tuple[np.uint64, np.float32]:
    """The byte threshold below which a position is dropped (``round(256 p)``) and the scale
    of the kept ones."""
    threshold = round(p * 256)
    return np.uint64(threshold), np.float32(256.0 / (256 - threshold))


@dataclass
class Output:
    """An output layer right after the first layer, computed in the same member loop: each
    member's weight transposed, ``[M, C, hidden]``, and bias ``[M, C]`` (which a backward does
    not read); the side-by-side logits ``[N, M * C]`` a forward fills, or the gradient of those
    a backward reads, with the weight's and bias's gradients it fills (shaped as the two)."""

    weight_t: np.ndarray
    bias: np.ndarray | None
    logits: np.ndarray
    grad_weight_t: np.ndarray | None = None
    grad_bias: np.ndarray | None = None


class FirstLayer:
    """``dropout(relu(dropout(X) @ W_m + b_m))`` for every member ``m`` of a stack, CSR ``X``
    shared, and its backward; optionally followed by an output layer (:class:`Output`), each
    member's rows passed on to it while in cache (20 APPNP members on Cora, one thread: with
    torch's batched product for the output, an epoch of training and evaluation took about
    6 ms more).

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

    def _loops(self, members: int, hidden: int,
               output: Output | None) -> tuple[Callable[..., None], ...]:
        """The forward and backward member loops for rows of ``hidden`` units and ``output``;
        call them under :func:`gnn.compiled.slp_vectorised` (a first call compiles)."""
        parallel = _in_parallel(self.threads, members)
        registers = hidden <= MAX_REGISTER_UNITS
        if not registers and output is None:
            return _PARALLEL if parallel else _SERIAL
        classes = None if output is None else output.weight_t.shape[1]
        return _specialised_loops(hidden, registers, classes, parallel)

    def _kept_buffers(self, members: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._kept is None or self._kept[0].shape[0] != members:
            nnz = self.val.shape[0]
            self._kept = (np.empty((members, self.crow.shape[0]), self.crow.dtype),
                          np.empty((members, nnz), self.col.dtype),
                          np.empty((members, nnz), np.float32))
        return self._kept

    def forward(self, weight: np.ndarray, bias: np.ndarray, out: np.ndarray, p: float,
                seed: int, output: Output | None = None) -> None:
        """Fill ``out [M, N, hidden]`` from ``weight [M, F, hidden]`` and ``bias [M, hidden]``
        with drop probability ``p`` (0: none, as in evaluation) and the step's ``seed``, and
        ``output.logits`` from ``out`` where ``output`` is given."""
        members = weight.shape[0]
        threshold, scale = _drop(p)
        seeds = _member_seeds(np.uint64(seed), members)
        kept = self._kept_buffers(members) if threshold else (self.crow[None], self.col[None],
                                                             self.val[None])
        forward = self._loops(members, weight.shape[2], output)[0]
        arrays = (None, None, None) if output is None else (output.weight_t, output.bias,
                                                            output.logits)
        with slp_vectorised():
            forward(self.crow, self.col, self.val, weight, bias, seeds, threshold, scale, out,
                    *kept, *arrays)

    def backward(self, out: np.ndarray, grad_out: np.ndarray | None, grad_weight: np.ndarray,
                 grad_bias: np.ndarray, p: float, output: Output | None = None) -> None:
        """The weight and bias gradients of the last :meth:`forward` with drop probability
        ``p``, from its output ``out`` and the gradient ``grad_out`` flowing into it; with
        ``output``, from the gradient of the logits, ``output.logits``, instead (``grad_out``
        is then not read: pass ``None``), and the output layer's weight and bias gradients
        fill ``output``."""
        if (grad_out is None) == (output is None):
            raise ValueError("the backward takes either the gradient of the rows or an output "
                             "layer's, exactly one")
        members = out.shape[0]
        threshold, scale = _drop(p)
        if threshold:
            crow, col, val = self._kept_buffers(members)
        else:  # every member reads the shared entries
            crow, col, val = (np.broadcast_to(a, (members, *a.shape))
                              for a in (self.crow, self.col, self.val))
        backward = self._loops(members, out.shape[2], output)[1]
        with slp_vectorised():
            if output is None:
                backward(crow, col, val, out, grad_out, scale, grad_weight, grad_bias)
            else:
                backward(crow, col, val, out, output.logits, scale, grad_weight, grad_bias,
                         output.weight_t, output.grad_weight_t, output.grad_bias)
