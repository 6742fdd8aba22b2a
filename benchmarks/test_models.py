"""Speed of the models on Cora: ours next to the plain PyG recipe, in the same run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from benchmarks.helpers import MODELS, build, config_for, graph_info
from benchmarks.reference import reference_model, reference_train
from gnn.training import fit

IMPLS = ["ours", "reference"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_latency(bench, device: torch.device, cora: Data, name: str, impl: str) -> None:
    model, x = build(name, impl, cora, device)
    edge_index = cora.edge_index.to(device)
    model.eval()
    out = bench(lambda: model(x, edge_index), device=device, inference=True,
                group=f"forward-{name}-{device.type}",
                **graph_info(cora, model=name, impl=impl, what="full-graph forward"))
    assert out.shape == (cora.num_nodes, int(cora.y.max()) + 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", MODELS)
def test_train_step(bench, device: torch.device, cora: Data, name: str, impl: str) -> None:
    model, x = build(name, impl, cora, device)
    edge_index, y = cora.edge_index.to(device), cora.y.to(device)
    mask = cora.train_mask.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    model.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, edge_index)[mask], y[mask])
        loss.backward()
        optimizer.step()
        return loss.detach()

    loss = bench(step, device=device, group=f"train-step-{name}-{device.type}",
                 **graph_info(cora, model=name, impl=impl, what="forward+backward+Adam"))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("impl", IMPLS)
def test_full_training_gcn(bench, device: torch.device, cora: Data, impl: str) -> None:
    """200 epochs with validation every epoch, as the report trained."""
    data = cora.to(device)
    if impl == "ours":
        cfg = config_for("gcn", device)
        run = lambda: fit(cfg, data).test_acc  # noqa: E731
    else:
        def run() -> float:
            torch.manual_seed(0)
            model = reference_model("gcn", data.num_features, 16, 7).to(device)
            return reference_train(model, data)

    acc = bench(run, device=device, group=f"train-200-epochs-gcn-{device.type}", rounds=5,
                warmup=1, **graph_info(cora, model="gcn", impl=impl, epochs=200))
    assert acc > 0.7


@pytest.mark.parametrize("name", ["sage"])
def test_layerwise_inference(bench, device: torch.device, cora: Data, name: str) -> None:
    from gnn.sampling import layerwise_inference, make_neighbor_loader

    model, _ = build(name, "ours", cora, device)
    model.eval()
    loader = make_neighbor_loader(cora.to(device), [-1], batch_size=1024, backend="torch")
    out = bench(lambda: layerwise_inference(model, loader), device=device, inference=True,
                group=f"layerwise-inference-{device.type}",
                **graph_info(cora, model=name, impl="ours", batch_size=1024))
    assert out.shape[0] == cora.num_nodes
