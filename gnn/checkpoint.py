"""Checkpoints: the best model's weights with the config and the identity of its dataset.

A checkpoint is a plain dict of tensors, strings and numbers written with ``torch.save`` and
read back with ``torch.load(weights_only=True)``, so loading one never runs code. It stores the
config (the model is rebuilt from it with :func:`gnn.models.build_model`) and the dataset's
identity (name, SHA-256 of the raw files, number of features and classes), so predictions on a
dataset of another shape, or on other raw files, are refused instead of being silently wrong.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from gnn.config import Config, ConfigError
from gnn.data import num_classes
from gnn.files import atomic_write_bytes

FORMAT = "gnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, malformed or made for another dataset."""


def dataset_identity(data: Data) -> dict[str, Any]:
    """What a model's weights depend on: shape, and the exact raw files when known."""
    return {"name": str(getattr(data, "name", "")),
            "sha256": dict(getattr(data, "raw_sha256", None) or {}),
            "num_features": int(data.num_features), "num_classes": num_classes(data)}


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, cfg: Config, data: Data,
                    metrics: dict[str, Any] | None = None) -> None:
    """Write the checkpoint atomically: a reader sees the old file or the whole new one."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "state_dict": state,
               "config": cfg.to_dict(), "dataset": dataset_identity(data),
               "metrics": dict(metrics or {})}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class Checkpoint:
    path: Path
    config: Config
    dataset: dict[str, Any]
    state_dict: dict[str, Tensor]
    metrics: dict[str, Any]

    def check_data(self, data: Data, trust_data: bool = False) -> None:
        """Refuse data the weights were not trained for (other shape, or other raw files)."""
        want, have = self.dataset, dataset_identity(data)
        shape = ("num_features", "num_classes")
        if any(want[k] != have[k] for k in shape):
            raise CheckpointError(
                f"checkpoint {self.path} is for {want['name']} with {want['num_features']} "
                f"features and {want['num_classes']} classes; {have['name']} here has "
                f"{have['num_features']} features and {have['num_classes']} classes")
        if want["sha256"] and have["sha256"] and want["sha256"] != have["sha256"]:
            differ = ", ".join(sorted(k for k in want["sha256"]
                                      if want["sha256"][k] != have["sha256"].get(k)))
            if not trust_data:
                raise CheckpointError(
                    f"checkpoint {self.path} was trained on other {want['name']} raw files "
                    f"(SHA-256 differs for {differ or 'the file set'}); "
                    "pass --trust-data to predict anyway")
            warnings.warn(f"checkpoint {self.path} was trained on other {want['name']} raw "
                          f"files (SHA-256 differs for {differ}); predicting anyway (--trust-data)",
                          stacklevel=2)

    def build_model(self, device: torch.device) -> nn.Module:
        """The model of the stored config with the stored weights, in eval mode."""
        from gnn.models import build_model

        model = build_model(self.config.model, self.dataset["num_features"],
                            self.dataset["num_classes"])
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split()[6:])[:160]  # after "Error(s) in loading ... X:"
            raise CheckpointError(f"checkpoint {self.path}: weights do not fit model "
                                  f"{self.config.model.name!r} of its config ({detail})") from None
        return model.to(device).eval()

    def predict(self, data: Data, device: torch.device) -> Tensor:
        """Logits for every node, the graph fed exactly as training fed it, so the argmax
        equals the one behind the result record's accuracies."""
        from gnn.training import make_batching

        model = self.build_model(device)
        return make_batching(self.config, data, device).predict(model).cpu()


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and check a checkpoint; every problem is one :class:`CheckpointError` line."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    try:
        raw = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, refused global: all bad input
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:120]
        raise CheckpointError(f"checkpoint {path} is truncated or not a gnn checkpoint "
                              f"({exc.__class__.__name__}: {detail})") from None
    return _parse(path, raw)


def _parse(path: Path, raw: Any) -> Checkpoint:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is not a gnn checkpoint: {why}")

    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise bad(f"no {FORMAT!r} format tag")
    if raw.get("version") != VERSION:
        raise bad(f"unsupported version {raw.get('version')!r} (this gnn reads {VERSION})")
    state, dataset = raw.get("state_dict"), raw.get("dataset")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise bad("state_dict is not a mapping of names to tensors")
    if not isinstance(dataset, dict) or not all(
            isinstance(dataset.get(k), int) and dataset[k] > 0
            for k in ("num_features", "num_classes")):
        raise bad("dataset identity lacks num_features / num_classes")
    if not isinstance(dataset.get("sha256", {}), dict):
        raise bad("dataset identity has malformed sha256")
    dataset = {"name": str(dataset.get("name", "")), "sha256": dataset.get("sha256", {}),
               "num_features": dataset["num_features"], "num_classes": dataset["num_classes"]}
    try:
        config = Config.from_dict(raw.get("config"), source=f"checkpoint {path} config")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: stored config is invalid: {exc}") from None
    metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {}
    return Checkpoint(path, config, dataset, state, metrics)
