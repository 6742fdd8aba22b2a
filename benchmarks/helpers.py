"""Building blocks shared by the benchmark modules: the same model, ours and the reference."""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn
from torch_geometric.data import Data

from benchmarks.reference import reference_model
from gnn.config import Config
from gnn.data import num_classes
from gnn.models import build_model
from gnn.timing import measure_latency

#: Hidden sizes of the shipped configs (configs/*.yaml).
HIDDEN = {"mlp": 64, "gcn": 16, "sage": 64}
MODELS = list(HIDDEN)


def graph_info(data: Data, **extra: Any) -> dict[str, Any]:
    return {"dataset": getattr(data, "name", "?"), "num_nodes": int(data.num_nodes),
            "num_edges": int(data.num_edges), **extra}


def build(name: str, impl: str, data: Data, device: torch.device,
          seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """(model, features) for ``impl`` = ``ours`` (features as training feeds them: CSR on the
    CPU; cached operators) or ``reference`` (the plain PyG recipe: dense features,
    normalisation on every call)."""
    from gnn.batching import node_features

    torch.manual_seed(seed)
    if impl == "ours":
        cfg = Config().override({"model.name": name, "model.hidden_channels": HIDDEN[name],
                                 "train.device": device.type})
        model = build_model(cfg.model, data.num_features, num_classes(data))
        x = node_features(data, cfg)
    else:
        model = reference_model(name, data.num_features, HIDDEN[name], num_classes(data))
        x = data.x
    return model.to(device), x.to(device)


def config_for(name: str, device: torch.device, **overrides: Any) -> Config:
    from gnn.config import load_config

    return load_config(f"configs/{name}.yaml").override({"train.device": device.type,
                                                         **overrides})


def interleaved_ratio(ref_fn, our_fn, device: torch.device, blocks: int = 7,
                      iters: int = 20) -> tuple[float, float, float]:
    """Median over blocks of (reference time / our time), blocks alternating so that drift in
    machine load hits both sides alike. Returns (ratio, ref median s, our median s)."""
    ratios, refs, ours = [], [], []
    for _ in range(blocks):
        ref = measure_latency(ref_fn, device, warmup=2, iters=iters).median
        our = measure_latency(our_fn, device, warmup=2, iters=iters).median
        ratios.append(ref / our)
        refs.append(ref)
        ours.append(our)
    return statistics.median(ratios), statistics.median(refs), statistics.median(ours)
