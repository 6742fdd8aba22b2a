"""The compiled first layer of stacked members (``gnn.member_kernel``), alone and with the
output layer after it: the same numbers as the tensor code without dropout, a correct backward
with dropout, masks of each member's own, the same results on one thread or several, and a
forked child that runs it too."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch_geometric.data import Data

from gnn import member_kernel, members
from gnn.config import load_config
from gnn.members import MemberBatch, MemberMasks, _initial_members

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytest.importorskip("numba", reason="the compiled first layer needs numba")
from gnn.member_kernel import MAX_REGISTER_UNITS, FirstLayer, Output  # noqa: E402


def _layer(seed: int = 0) -> tuple[FirstLayer, Tensor]:
    """A compiled layer over random CSR features (300 x 40, about 30% filled)."""
    generator = torch.Generator().manual_seed(seed)
    dense = torch.rand(300, 40, generator=generator)
    x = (dense * (torch.rand(300, 40, generator=generator) < 0.3)).to_sparse_csr()
    return members._first_layer_kernel(x), x


def _weights(m: int, features: int, hidden: int, seed: int = 1,
             ) -> tuple[np.ndarray, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(m, features, hidden, generator=generator) * 0.3
    bias = torch.randn(m, hidden, generator=generator) * 0.1
    return weight.numpy(), bias.numpy()


def _run(layer: FirstLayer, weight: np.ndarray, bias: np.ndarray, p: float, seed: int,
         classes: int | None) -> list[np.ndarray]:
    """A forward and a backward of ``layer`` (with an output layer of ``classes`` where given)
    from a fixed gradient: every array either fills."""
    members, hidden = weight.shape[0], weight.shape[2]
    rows = len(layer.crow) - 1
    rng = np.random.default_rng(2)
    out = np.empty((members, rows, hidden), np.float32)
    grad_weight, grad_bias = np.empty_like(weight), np.empty_like(bias)
    if classes is None:
        layer.forward(weight, bias, out, p, seed)
        grad = rng.standard_normal(out.shape).astype(np.float32)
        layer.backward(out, grad, grad_weight, grad_bias, p)
        return [out, grad_weight, grad_bias]
    weight_t, out_bias = (a.transpose(0, 2, 1).copy() if a.ndim == 3 else a
                          for a in _weights(members, hidden, classes, seed=3))
    logits = np.empty((rows, members * classes), np.float32)
    layer.forward(weight, bias, out, p, seed, Output(weight_t, out_bias, logits))
    grad_logits = rng.standard_normal(logits.shape).astype(np.float32)
    grads = Output(weight_t, out_bias, grad_logits, np.empty_like(weight_t),
                   np.empty_like(out_bias))
    layer.backward(out, None, grad_weight, grad_bias, p, grads)
    return [out, logits, grad_weight, grad_bias, grads.grad_weight_t, grads.grad_bias]


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_compiled_stack_equals_tensor_code_without_dropout(layers: int, cora: Data,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    """APPNP members without dropout: logits and every gradient as the tensor operations give
    them, to float32 rounding, in training and evaluation mode (with one layer, layer 0 is the
    output and has no ReLU)."""
    cfg = load_config(CONFIGS / "appnp.yaml").override(
        {"model.dropout": 0.0, "model.num_layers": layers})
    model = _initial_members(cfg, cora, [0, 1, 2])
    batch = MemberBatch.build(cfg, cora, MemberMasks.shared(cora, 3), torch.device("cpu"))
    assert batch.x.layout == torch.sparse_csr
    grad = torch.randn(cora.num_nodes, 3, 7, generator=torch.Generator().manual_seed(0))
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(members, "_compiled_first_layer", lambda x, w: False)
        model.train()
        out = model(batch.x, batch.edge_index)
        grads = torch.autograd.grad((out * grad).sum(), list(model.parameters()))
        model.eval()
        with torch.inference_mode():
            evaluated = model(batch.x, batch.edge_index)
        results.append((out.detach(), grads, evaluated))
    (out, grads, evaluated), (ref_out, ref_grads, ref_evaluated) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(evaluated, ref_evaluated, rtol=1e-5, atol=1e-6)
    for ours, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize(("hidden", "classes"), [(1, None), (7, None), (16, None),
                                                 (MAX_REGISTER_UNITS, None), (7, 3),
                                                 (MAX_REGISTER_UNITS, 3)])
def test_sums_in_registers_equal_the_row_buffer(hidden: int, classes: int | None, p: float,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of up to ``MAX_REGISTER_UNITS`` units stay in registers in generated code: the
    row buffer's outputs and gradients, bit for bit, with and without dropout, with and
    without an output layer after the first, on one thread or two."""
    layer, _ = _layer()
    weight, bias = _weights(3, 40, hidden)
    results = []
    for limit, threads in ((MAX_REGISTER_UNITS, 1), (MAX_REGISTER_UNITS, 2), (0, 1)):
        monkeypatch.setattr(member_kernel, "MAX_REGISTER_UNITS", limit)
        layer.threads = threads
        results.append(_run(layer, weight, bias, p, 9, classes))
    for ours, buffered in zip(results[0] + results[1], results[2] * 2, strict=True):
        assert np.array_equal(ours, buffered)
    out, grad_weight = results[0][0], results[0][-4 if classes else 1]
    assert (out > 0).any() and (out == 0).any() and (grad_weight != 0).any()


def test_backward_with_dropout_is_the_gradient_of_its_forward() -> None:
    """With dropout: the output is ``relu(X_kept @ W + b)`` times each unit's mask (the kept
    entries, values scaled, are what the layer kept for its backward), and the weight and bias
    gradients are that function's."""
    layer, _ = _layer()
    weight, bias = _weights(4, 40, 16)
    out = np.empty((4, 300, 16), np.float32)
    layer.forward(weight, bias, out, 0.5, seed=7)
    grad = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    grad_weight, grad_bias = np.empty_like(weight), np.empty_like(bias)
    layer.backward(out, grad, grad_weight, grad_bias, 0.5)
    crow, col, val = layer._kept
    for m in range(4):
        kept = torch.sparse_csr_tensor(torch.from_numpy(crow[m].copy()),
                                       torch.from_numpy(col[m][:crow[m][-1]].astype(np.int64)),
                                       torch.from_numpy(val[m][:crow[m][-1]].copy()),
                                       (300, 40)).to_dense()
        w = torch.from_numpy(weight[m]).requires_grad_()
        b = torch.from_numpy(bias[m]).requires_grad_()
        unit_mask = torch.from_numpy(out[m] > 0).float() * 2.0  # scale 1 / (1 - 0.5)
        ref = torch.relu(kept @ w + b) * unit_mask
        torch.testing.assert_close(torch.from_numpy(out[m]), ref.detach(), rtol=1e-5,
                                   atol=1e-6)
        ref.backward(torch.from_numpy(grad[m]))
        torch.testing.assert_close(torch.from_numpy(grad_weight[m]), w.grad, rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(grad_bias[m]), b.grad, rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_output_layer_is_the_gradient_of_its_forward(p: float) -> None:
    """An output layer after the first, in the same member loop: each member's logits, side by
    side, are ``h_m @ V_m + c_m`` of the hidden rows the layer returns, and the gradients of
    both layers' weights and biases, and of the hidden rows, are that function's (the kept
    entries and unit masks as the layer drew them). The layer keeps the hidden rows' gradient
    to itself: its output-layer kernel is called alone for it."""
    layer, x = _layer()
    weight, bias = _weights(4, 40, 16)
    out, logits, grad_weight, grad_bias, grad_weight_t, grad_out_bias = _run(
        layer, weight, bias, p, 7, 5)
    weight_t, out_bias = (a.transpose(0, 2, 1).copy() if a.ndim == 3 else a
                          for a in _weights(4, 16, 5, seed=3))
    grad_logits = np.random.default_rng(2).standard_normal(logits.shape).astype(np.float32)
    scale = 1.0 / (1.0 - p)
    for m in range(4):
        if p:
            crow, col, val = (a[m] for a in layer._kept)
            x = torch.sparse_csr_tensor(torch.from_numpy(crow.copy()),
                                        torch.from_numpy(col[:crow[-1]].astype(np.int64)),
                                        torch.from_numpy(val[:crow[-1]].copy()), (300, 40))
        w, b, v, c = (torch.from_numpy(a[m].copy()).requires_grad_()
                      for a in (weight, bias, weight_t, out_bias))
        unit_mask = torch.from_numpy(out[m] > 0).float() * scale
        h = (torch.relu(x.to_dense() @ w + b) * unit_mask).detach().requires_grad_()
        ref = h @ v.t() + c
        columns = slice(m * 5, (m + 1) * 5)
        torch.testing.assert_close(torch.from_numpy(logits[:, columns]), ref.detach(),
                                   rtol=1e-5, atol=1e-5)
        ref.backward(torch.from_numpy(grad_logits[:, columns]))
        grad_hidden = np.empty_like(out[m])
        member_kernel._output_gradients_for(5)(out[m], grad_logits, m, weight_t[m], grad_hidden,
                                               np.empty_like(weight_t[m]),
                                               np.empty_like(out_bias[m]))
        torch.testing.assert_close(torch.from_numpy(grad_hidden), h.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(grad_weight_t[m]), v.grad, rtol=1e-5,
                                   atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(grad_out_bias[m]), c.grad, rtol=1e-5,
                                   atol=1e-5)
        first = torch.relu(x.to_dense() @ w + b) * unit_mask
        first.backward(h.grad)
        for ours, theirs in ((grad_weight[m], w.grad), (grad_bias[m], b.grad)):
            torch.testing.assert_close(torch.from_numpy(ours), theirs, rtol=1e-5, atol=1e-4)


def test_members_draw_their_own_masks_at_the_drop_rate() -> None:
    """Members with equal weights get different outputs; about 1 - p of the input entries
    and of the positive units are kept; the same seed repeats a step, another does not."""
    layer, x = _layer()
    weight, bias = _weights(1, 40, 16)
    weight, bias = np.repeat(weight, 6, 0), np.repeat(bias, 6, 0)
    out = np.empty((6, 300, 16), np.float32)
    layer.forward(weight, bias, out, 0.25, seed=3)
    assert all(not np.array_equal(out[0], out[m]) for m in range(1, 6))
    kept_entries = layer._kept[0][:, -1].sum() / (6 * x.values().numel())
    assert kept_entries == pytest.approx(0.75, abs=0.02)
    clean = np.empty_like(out)
    layer.forward(weight, bias, clean, 0.0, seed=3)
    assert (clean > 0).any()
    again = np.empty_like(out)
    layer.forward(weight, bias, again, 0.25, seed=3)
    assert np.array_equal(out, again)
    layer.forward(weight, bias, again, 0.25, seed=4)
    assert not np.array_equal(out, again)


@pytest.mark.parametrize("classes", [None, 7])
def test_threads_change_nothing(classes: int | None) -> None:
    """One thread or two: bit for bit the same outputs and gradients, with an output layer
    after the first or without."""
    weight, bias = _weights(5, 40, 16)
    results = []
    for threads in (1, 2):
        layer, _ = _layer()
        layer.threads = threads
        results.append(_run(layer, weight, bias, 0.5, 11, classes))
    for ours, other in zip(*results, strict=True):
        assert np.array_equal(ours, other)


def test_a_forked_child_runs_the_layer_after_its_parent(tmp_path: Path) -> None:
    """The threading layer cannot serve a child forked from a process that used it (numba
    ends such a child): after the parent ran the layer on two threads, a forked child runs it
    on one and gets the parent's numbers."""
    weight, bias = _weights(4, 40, 16)
    layer, _ = _layer()
    layer.threads = 2
    out = np.empty((4, 300, 16), np.float32)
    layer.forward(weight, bias, out, 0.5, seed=5)
    result = tmp_path / "child.pkl"
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no torch operations, only the layer
        code = 1
        try:
            child = np.empty_like(out)
            layer.forward(weight, bias, child, 0.5, seed=5)
            result.write_bytes(pickle.dumps(child))
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert np.array_equal(pickle.loads(result.read_bytes()), out)


def test_an_output_layer_given_by_halves_is_an_error() -> None:
    """The output layer's weight without its bias, or a backward given both the rows'
    gradient and an output layer's (or neither): one clear error, not the hidden rows or a
    gradient computed from the wrong one."""
    layer, _ = _layer()
    weight, bias = (torch.from_numpy(a) for a in _weights(2, 40, 8))
    with pytest.raises(ValueError, match="weight and its bias"):
        members._CompiledFirstLayer.apply(layer, weight, bias, 0.0, 0, torch.zeros(2, 8, 3))
    out = np.empty((2, 300, 8), np.float32)
    layer.forward(weight.numpy(), bias.numpy(), out, 0.0, 0)
    grads = (np.empty_like(weight.numpy()), np.empty_like(bias.numpy()))
    with pytest.raises(ValueError, match="exactly one"):
        layer.backward(out, None, *grads, 0.0)
    output = Output(np.zeros((2, 3, 8), np.float32), None, np.zeros((300, 6), np.float32),
                    np.empty((2, 3, 8), np.float32), np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="exactly one"):
        layer.backward(out, np.zeros_like(out), *grads, 0.0, output)
