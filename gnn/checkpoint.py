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
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from gnn.config import Config
from gnn.data import num_classes
from gnn.errors import CheckpointError, ConfigError
from gnn.files import atomic_write_bytes
from gnn.models import build_model
from gnn.training import check_config

FORMAT = "gnn-checkpoint"
VERSION = 1
#: Largest checkpoint file read, and the most its archive may expand to: a gnn checkpoint is
#: stored uncompressed, so an archive that would grow far beyond its size is refused unread.
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_EXPANSION = 4


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
    blob = _read_regular_file(path)
    _check_expansion(path, blob)
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a plain pickle's protocol
            warnings.simplefilter("ignore")
            raw = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, refused global: all bad input
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:120]
        raise CheckpointError(f"checkpoint {path} is truncated or not a gnn checkpoint "
                              f"({exc.__class__.__name__}: {detail})") from None
    return _parse(path, raw)


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file of bounded size (a FIFO would block, a device never end)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"cannot read checkpoint {path}: not a regular file")
        if info.st_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"checkpoint {path} is larger than {MAX_CHECKPOINT_BYTES} "
                                  "bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        if isinstance(exc, CheckpointError):
            raise
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None


def _check_expansion(path: Path, blob: bytes) -> None:
    """Refuse an archive whose members would expand to far more than the file (a zip bomb):
    ``torch.save`` stores members uncompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            expanded = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip: torch.load reports it
    if expanded > MAX_EXPANSION * len(blob) + (1 << 20):
        raise CheckpointError(f"checkpoint {path} is truncated or not a gnn checkpoint (its "
                              f"archive expands to {expanded} bytes from {len(blob)})")


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
    sha = dataset.get("sha256", {})
    if not isinstance(sha, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sha.items()):
        raise bad("dataset identity has malformed sha256")
    dataset = {"name": str(dataset.get("name", "")), "sha256": dataset.get("sha256", {}),
               "num_features": dataset["num_features"], "num_classes": dataset["num_classes"]}
    try:
        config = check_config(Config.from_dict(raw.get("config"),
                                               source=f"checkpoint {path} config"))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: stored config is invalid: {exc}") from None
    metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {}
    return Checkpoint(path, config, dataset, state, metrics)
