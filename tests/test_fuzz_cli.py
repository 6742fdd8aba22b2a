"""Random YAML documents and random argument lists fed to ``gnn.cli.main``: the only outcomes
are success (0) or exit 2 with exactly one ``gnn: error:`` line and no file written; never an
uncaught exception. Training is stubbed (a valid config returns at once), downloads are cut
off, so each example costs milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Data

import gnn.data
import gnn.training
from gnn.cli import main
from gnn.config import Config, load_config
from gnn.errors import ConfigError
from gnn.training import FitResult, History, check_config

REPO = Path(__file__).resolve().parents[1]
SECTIONS = [f.name for f in dataclasses.fields(Config)]
FIELDS = sorted({f.name for section in (Config().model, Config().data, Config().train,
                                        Config().sampler) for f in dataclasses.fields(section)})
PLAUSIBLE = [0, 1, 2, 3, 8, 64, -1, 0.0, 0.5, 0.01, 1.0, 5.0e-4, "gcn", "mlp", "sage", "gat",
             "Cora", "cora", "PubMed", "cpu", "cuda", "auto", "never", "torch", "layerwise",
             True, False, None, [10, 10], [5], [10, 0], [], "5e-4"]
#: Values at the edges of what Python, numpy and torch accept.
EDGES = [2**31, 2**32 - 1, 2**32, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400), 1e308,
         float("nan"), float("inf"), float("-inf"), 5e-324, "1e400", "nan", "", "\x85", [10**400]]

scalars = st.one_of(st.sampled_from(PLAUSIBLE), st.sampled_from(EDGES), st.none(),
                    st.booleans(), st.integers(),
                    st.integers(-(10**450), 10**450), st.floats(), st.text(max_size=12))
keys = st.one_of(st.sampled_from(SECTIONS + FIELDS), st.text(max_size=10), st.integers(),
                 st.booleans(), st.none())
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=16)


@st.composite
def near_defaults(draw: st.DrawFn) -> dict[str, Any]:
    """The default config with a few fields replaced: valid often, one bad field otherwise."""
    document = Config().to_dict()
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(SECTIONS))
        value = draw(st.one_of(st.sampled_from(EDGES), scalars))
        document[section][draw(st.sampled_from(sorted(document[section])))] = value
    return document


#: Near-default and schema-shaped documents (so that valid configs and every field's checks
#: come up), and fully random nested values.
documents = st.one_of(
    near_defaults(),
    st.dictionaries(st.sampled_from(SECTIONS) | keys,
                    st.dictionaries(st.sampled_from(FIELDS) | keys, scalars, max_size=5)
                    | nested, max_size=4),
    nested,
)


def fuzz(examples: int) -> Any:
    """Settings for these tests: no deadline (the machine is shared); the stubs fixture is
    per test, not per example, which is fine since it only records calls."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


class Stubs:
    """A fit() that returns at once (with a tiny real model, so --save works)."""

    def __init__(self) -> None:
        self.calls: list[Config] = []

    def fit(self, cfg: Config, data: Data | None = None, on_epoch: Any = None) -> FitResult:
        self.calls.append(cfg)
        data = Data(x=torch.zeros(4, 3), y=torch.tensor([0, 1, 0, 1]), name="Cora")
        return FitResult(
            model=cfg.model.name, dataset=cfg.data.name, seed=cfg.train.seed,
            device=cfg.train.device, sampled=cfg.sampler.enabled,
            split_mode=cfg.data.split_mode, num_nodes=4, num_edges=0, train_graph_nodes=4,
            train_graph_edges=0, num_params=8, epochs=1, best_epoch=1, train_acc=1.0,
            val_acc=1.0, test_acc=1.0, train_macro_f1=1.0, val_macro_f1=1.0,
            test_macro_f1=1.0, total_train_time_s=0.0, train_loop_time_s=0.0,
            epoch_times_s=[0.0], history=History(), config=cfg.to_dict(), versions={},
            threads=1, timestamp="", trained=torch.nn.Linear(3, 2), data=data)


@pytest.fixture()
def stubs(monkeypatch: pytest.MonkeyPatch) -> Stubs:
    stubs = Stubs()
    monkeypatch.setattr(gnn.training, "fit", stubs.fit)

    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("offline (test)")

    monkeypatch.setattr(gnn.data, "_download", offline)
    return stubs


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        yield Path(tmp)


def run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with captured output; any exception fails the test with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException:  # noqa: BLE001 (that is what the test looks for)
            pytest.fail(f"main({argv!r}) raised:\n{traceback.format_exc()}")
    return code, out.getvalue(), err.getvalue()


def check_outcome(code: int, err: str, stubs: Stubs, calls_before: int, out: Path) -> None:
    assert code in (0, 2), (code, err)
    event(f"exit {code}")  # shown by pytest --hypothesis-show-statistics
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("gnn: error: "), err
        assert "Traceback" not in err
        assert len(stubs.calls) == calls_before, "trained despite bad input"
        assert list(out.iterdir()) == [], "a file was written despite bad input"
    else:
        assert all(line.startswith("gnn: warning: ") for line in err.splitlines()), err


def expected_valid(path: Path) -> bool:
    """The oracle: what the config layer and the registries say, independently of the CLI."""
    try:
        cfg = check_config(load_config(path))
    except ConfigError:
        return False
    return cfg.train.device != "cuda" or torch.cuda.is_available()


def _check_document(path: Path, root: Path, stubs: Stubs) -> None:
    out = root / "out"
    calls = len(stubs.calls)
    code, _, err = run(["train", "--config", str(path), "--json", str(out / "r.json")])
    check_outcome(code, err, stubs, calls, out)
    assert (code == 0) == expected_valid(path), err
    if code == 0:
        assert isinstance(stubs.calls[-1], Config)
        assert json.loads((out / "r.json").read_text())["model"] == stubs.calls[-1].model.name


@fuzz(200)
@given(document=documents)
def test_random_yaml_documents(document: Any, stubs: Stubs) -> None:
    with workdir() as root:
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        _check_document(path, root, stubs)


@fuzz(100)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_text_as_config(text: str | bytes, stubs: Stubs) -> None:
    with workdir() as root:
        path = root / "config.yaml"
        if isinstance(text, str):
            path.write_text(text)
        else:
            path.write_bytes(text)
        _check_document(path, root, stubs)


FLAGS = ["--config", "--model", "--dataset", "--root", "--seed", "--epochs", "--device",
         "--trust-data", "--json", "--save", "--progress", "--checkpoint", "--nodes", "--out",
         "-h", "--help", "--", "-", "--e", "--nope"]


@fuzz(200)
@given(data=st.data())
def test_random_command_lines(data: st.DataObject, stubs: Stubs) -> None:
    with workdir() as root:
        out = root / "out"
        (root / "a_file").write_text("")
        (root / "bad.yaml").write_text("model: [1, 2\n")
        (root / "truncated.pt").write_bytes(b"PK\x03\x04 truncated")
        values = [str(out / "r.json"), str(out / "m.pt"), str(out / "p.csv"), str(out),
                  str(root / "a_file" / "x.json"), str(out / "new" / "r.json"),
                  str(REPO / "configs" / "gcn.yaml"), str(root / "bad.yaml"),
                  str(root / "truncated.pt"), str(root / "missing.pt"), str(root),
                  "gcn", "mlp", "sage", "gnc", "Cora", "citeseer", "cpu", "cuda", "0", "1",
                  "-1", "3", "99999999999999999999", "1e3", "test", "all", "0,1", "abc", "",
                  "\x00", "\udcff", "x" * 5000]
        token = st.one_of(st.sampled_from(FLAGS), st.sampled_from(values), st.text(max_size=8))
        # bench and scale train for real (their bad inputs are tested in test_bench/test_scale)
        command = st.sampled_from(["train", "predict", "smoke", "bogus", "", "-h"])
        argv = [data.draw(command), *data.draw(st.lists(token, max_size=8))]
        if data.draw(st.booleans()):
            argv = data.draw(st.lists(token, max_size=6))  # not even a command
        calls = len(stubs.calls)
        code, _, err = run(argv)
        # smoke may read the real data root and succeed; everything else that succeeds trained
        check_outcome(code, err, stubs, calls, out)
        if code == 0 and argv[:1] == ["train"] and not {"-h", "--help"} & set(argv):
            assert len(stubs.calls) == calls + 1
