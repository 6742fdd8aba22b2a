"""One config object for a run, read from YAML and checked field by field.

Every bad value raises :class:`ConfigError` with a one-line message that names the key, so the
CLI can print it and exit 2 before any work (or any file) is done. This module needs neither
torch nor the registries: a config loads and checks its fields and their ranges without them;
model and dataset names are checked where those registries live
(:func:`gnn.models.check_model_config`, :func:`gnn.data.check_data_config`).

Ranges have upper bounds too where a larger value can only be a mistake (a learning rate of
1e300, a billion layers): such a value is refused here rather than failing deep in torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gnn.errors import ConfigError

#: Largest config file read: a config is a few hundred bytes; a path to /dev/zero or a huge
#: file is refused instead of read until memory runs out.
MAX_CONFIG_BYTES = 1 << 20
INT32_MAX = 2**31 - 1


def _range(lo: float | None = None, hi: float | None = None, *, hi_open: bool = False,
           lo_open: bool = False) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "hi_open": hi_open, "lo_open": lo_open}


@dataclass
class ModelConfig:
    name: str = "gcn"
    hidden_channels: int = field(default=16, metadata=_range(1, 1 << 24))
    num_layers: int = field(default=2, metadata=_range(1, 128))
    dropout: float = field(default=0.5, metadata=_range(0.0, 1.0, hi_open=True))
    # MLP, C&S, GCN: dropout on the input features too (Kipf & Welling's and Shchur et al.'s
    # implementations); other models refuse it
    input_dropout: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    heads: int = field(default=8, metadata=_range(1, 256))  # GAT: attention heads, hidden layers
    attn_dropout: float = field(default=0.6, metadata=_range(0.0, 1.0, hi_open=True))  # GAT
    K: int = field(default=10, metadata=_range(1, 1000))  # APPNP: propagation steps
    # APPNP, label propagation: teleport (restart) probability; GCNII: initial-residual weight
    alpha: float = field(default=0.1, metadata=_range(0.0, 1.0))
    theta: float = field(default=0.5, metadata=_range(0.0, 100.0))  # GCNII: identity mapping
    # C&S: PyG CorrectAndSmooth's alphas (the weight of the propagated term), K steps each
    correction_alpha: float = field(default=1.0, metadata=_range(0.0, 1.0))
    smoothing_alpha: float = field(default=0.8, metadata=_range(0.0, 1.0))
    fast: bool = True  # cached normalised CSR adjacency and sparse-aware layers


@dataclass
class DataConfig:
    name: str = "Cora"
    root: str | None = None
    normalize_features: bool = True
    sparse_features: str = field(default="auto", metadata={"choices": ("auto", "always", "never")})
    download: bool = True
    trust_data: bool = False
    # transductive: training sees the whole graph (test nodes' features and edges included);
    # inductive: training and validation see only the subgraph induced by train + val nodes
    split_mode: str = field(default="transductive",
                            metadata={"choices": ("transductive", "inductive")})
    # name: csbm (gnn.synthetic): contextual stochastic block model parameters
    num_nodes: int = field(default=10_000, metadata=_range(2, INT32_MAX))
    num_classes: int = field(default=5, metadata=_range(2, 1 << 16))
    avg_degree: float = field(default=10.0, metadata=_range(0.0, 1e6))
    homophily: float = field(default=0.8, metadata=_range(0.0, 1.0))
    features: str = field(default="gaussian", metadata={"choices": ("gaussian", "binary")})
    num_features: int = field(default=32, metadata=_range(1, 1 << 20))
    feature_signal: float = field(default=1.0, metadata=_range(0.0, 1e6))
    feature_density: float = field(default=0.05, metadata=_range(0.0, 1.0, lo_open=True))
    graph_seed: int = field(default=0, metadata=_range(0, 2**63 - 1))
    # csbm's own split: train_per_class per class, then num_val and num_test nodes
    train_per_class: int = field(default=20, metadata=_range(1, INT32_MAX))
    num_val: int = field(default=500, metadata=_range(1, INT32_MAX))
    num_test: int = field(default=1000, metadata=_range(1, INT32_MAX))
    # public: the dataset's own split (Planetoid's 20 per class / 500 / 1000, csbm's above);
    # random: train_per_class and val_per_class nodes of every class drawn from split_seed
    # (independent of train.seed), every other node tested (gnn.data.random_split)
    split: str = field(default="public", metadata={"choices": ("public", "random")})
    val_per_class: int = field(default=30, metadata=_range(1, INT32_MAX))
    split_seed: int = field(default=0, metadata=_range(0, 2**32 - 1))
    # keep only the largest connected component (edges taken as undirected), before the split
    largest_component: bool = False


@dataclass
class TrainConfig:
    epochs: int = field(default=200, metadata=_range(1, 10_000_000))
    # validate (and select the model) every k epochs and after the last: on large graphs a
    # full-graph evaluation costs more than a training epoch
    eval_every: int = field(default=1, metadata=_range(1, 10_000_000))
    lr: float = field(default=0.01, metadata=_range(0.0, 100.0, lo_open=True))
    weight_decay: float = field(default=5e-4, metadata=_range(0.0, 100.0))
    # GCNII: weight decay of the convolutions (null: weight_decay), the paper's two-group recipe
    conv_weight_decay: float | None = field(default=None, metadata=_range(0.0, 100.0))
    seed: int = field(default=0, metadata=_range(0, 2**32 - 1))  # numpy's seed range
    # model selection: the first epoch of the best validation accuracy, or of the lowest
    # validation loss (GCNII's recipe, which also stops early); patience: stop after that many
    # evaluations without a better one (0: train every epoch)
    select: str = field(default="val_acc", metadata={"choices": ("val_acc", "val_loss")})
    patience: int = field(default=0, metadata=_range(0, 10_000_000))
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})
    compile: bool = False
    # batched members on CUDA: capture the training step and the evaluation once in CUDA
    # graphs and replay them (false: the same device-side steps, launched eagerly)
    cuda_graph: bool = True
    # Evaluation precision: bfloat16/float16 run the forward under torch.autocast (CUDA or CPU).
    inference_dtype: str = field(default="float32",
                                 metadata={"choices": ("float32", "bfloat16", "float16")})
    progress: bool = False


@dataclass
class SamplerConfig:
    enabled: bool = False
    backend: str = field(default="auto", metadata={"choices": ("auto", "torch", "pyg")})
    fanout: list[int] = field(default_factory=lambda: [10, 10])
    batch_size: int = field(default=64, metadata=_range(1, INT32_MAX))
    replace: bool = False
    inference: str = field(default="layerwise", metadata={"choices": ("layerwise", "sampled")})
    inference_batch_size: int = field(default=4096, metadata=_range(1, INT32_MAX))
    # with inference: layerwise, evaluate with one full-batch forward (the same logits up to
    # float rounding, far fewer operations): auto when it fits in half the free memory
    full_batch_eval: str = field(default="auto", metadata={"choices": ("auto", "always", "never")})
    trim: bool = True
    # DataLoader worker processes sampling the batches (0: in the training process)
    num_workers: int = field(default=0, metadata=_range(0, 256))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> Config:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: top level must be a mapping of sections, "
                              f"got {type(raw).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        built = {}
        for key, value in raw.items():
            _check_known(_key_name(key), sections, "")
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: must be a mapping, got {type(value).__name__}")
            built[key] = _build_section(sections[key].default_factory, value, prefix=f"{key}.")
        cfg = cls(**built)
        cfg.validate()
        return cfg

    def override(self, dotted: Mapping[str, Any]) -> Config:
        """Return a copy with ``{"section.key": value}`` overrides (CLI flags) applied."""
        raw = self.to_dict()
        for key, value in dotted.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            raw.setdefault(section, {})[name] = value
        return Config.from_dict(raw)

    def validate(self) -> None:
        """Cross-field checks that no single field can do on its own (names are checked by
        the registries: :func:`gnn.models.check_model_config`, ``gnn.data``)."""
        if self.sampler.enabled and len(self.sampler.fanout) != self.model.num_layers:
            raise ConfigError(
                f"sampler.fanout: needs one entry per layer (model.num_layers="
                f"{self.model.num_layers}), got {len(self.sampler.fanout)}")
        if self.sampler.num_workers > 0 and self.train.device != "cpu":
            raise ConfigError("sampler.num_workers: worker processes sample on the CPU; with "
                              f"train.device: {self.train.device} the graph is on the GPU, use 0")
        if self.sampler.full_batch_eval == "always" and self.sampler.inference != "layerwise":
            raise ConfigError("sampler.full_batch_eval: always needs sampler.inference: "
                              "layerwise (sampled inference has no full-batch equivalent)")
        _check_split(self.data)
        if any(f == 0 or f < -1 or f > INT32_MAX for f in self.sampler.fanout):
            raise ConfigError("sampler.fanout: entries must be positive or -1 (all "
                              f"neighbours), got {show(self.sampler.fanout)}")


def _check_split(cfg: DataConfig) -> None:
    """A public split is the dataset's one split, on its whole graph."""
    if cfg.split != "public":
        return
    if cfg.split_seed != 0:
        raise ConfigError(f"data.split_seed: data.split: public has one split (0), got "
                          f"{cfg.split_seed}; use data.split: random for others")
    if cfg.largest_component:
        raise ConfigError("data.largest_component: the public split is defined on the whole "
                          "graph; use data.split: random with it")


def load_config(path: str | Path | None) -> Config:
    """Read a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    return Config.from_dict(load_yaml(path, "config file"), source=str(path))


def load_yaml(path: str | Path, what: str) -> Any:
    """The YAML document in a small regular file (a config, a search space), or one line
    naming the problem: a missing file, one that cannot be read, malformed YAML."""
    path = Path(path)
    try:
        text = _read_small_text(path, what)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"cannot read {what} {path}: {exc.__class__.__name__}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None
    except ValueError as exc:  # an integer beyond Python's 4300-digit conversion limit
        raise ConfigError(f"{path}: malformed YAML: {str(exc).split(':')[0]}") from None


def _read_small_text(path: Path, what: str) -> str:
    """The text of a regular file of at most :data:`MAX_CONFIG_BYTES`; a FIFO (which would
    block) or a device (which may never end) is refused before it is opened for reading."""
    import stat

    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise ConfigError(f"cannot read {what} {path}: not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_CONFIG_BYTES} bytes")
    return data.decode()


def show(value: Any, limit: int = 80) -> str:
    """``repr`` for one-line messages: shortened, and safe for integers too long to print
    (YAML integers have no size limit; ``repr`` refuses those over 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too long to print>"
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _key_name(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 80 else show(key)


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_known(key: str, known: Mapping[str, Any], prefix: str) -> None:
    if key not in known:
        raise ConfigError(f"{prefix}{key}: unknown key{did_you_mean(key, known)}")


def _build_section(factory: Any, raw: Mapping[str, Any], prefix: str) -> Any:
    defaults = factory()
    hints = typing.get_type_hints(type(defaults))
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    values = {}
    for key, value in raw.items():
        _check_known(_key_name(key), fields, prefix)
        values[key] = _coerce(f"{prefix}{key}", value, hints[key], fields[key].metadata)
    return dataclasses.replace(defaults, **values)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Check ``value`` against the annotated type and the field's range or choices."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, "
                              f"got {type(value).__name__}")
        return [_coerce(f"{key}[{i}]", v, item_tp, {}) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {show(value)}")
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {show(value)}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {show(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {show(value)}")
        try:
            value = float(value)
        except OverflowError:  # YAML integers have no size limit
            raise ConfigError(f"{key}: expected a finite number, got {show(value)}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {show(value)}")
    elif tp is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {show(value)}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: must be one of {', '.join(meta['choices'])}, got {show(value)}"
                          f"{did_you_mean(str(value), meta['choices'])}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo)):
        bound = f"> {lo}" if meta["lo_open"] else f">= {lo}"
        raise ConfigError(f"{key}: must be {bound}, got {show(value)}")
    if hi is not None and (value > hi or (meta["hi_open"] and value == hi)):
        bound = f"< {hi}" if meta["hi_open"] else f"<= {hi}"
        raise ConfigError(f"{key}: must be {bound}, got {show(value)}")
    return value


def shipped_configs_dir() -> Path:
    """The project's ``configs/`` folder beside the package (a source checkout), else
    ``./configs``."""
    beside = Path(__file__).resolve().parent.parent / "configs"
    return beside if beside.is_dir() else Path("configs")


def config_names(folder: Path) -> list[str]:
    """The configs in ``folder``, by name (file stem), sorted."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def shipped_models() -> list[str]:
    """The one list of the models the project ships: a config each in ``configs/``. The bench
    runs them, ``gnn scale`` accepts them, and the tests gate each one's accuracy."""
    return config_names(shipped_configs_dir())
