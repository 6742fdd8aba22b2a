"""The package's declared import order (``gnn.LAYERS``): no module imports one of its own or
a higher layer, whether at the top of the file or inside a function, so there is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gnn

PACKAGE = Path(gnn.__file__).resolve().parent
LAYER_OF = {name: i for i, layer in enumerate(gnn.LAYERS) for name in layer}


def gnn_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) for every import of a ``gnn`` module anywhere in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names
                      if a.name.startswith("gnn.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("gnn."):
                found.append((node.lineno, node.module.split(".")[1]))
            elif node.module == "gnn":  # from gnn import bench, __version__
                found += [(node.lineno, a.name) for a in node.names if a.name in LAYER_OF]
    return found


def violations(files: dict[str, str]) -> list[str]:
    """One line per import that goes to the same or a higher layer."""
    problems = []
    for module, source in sorted(files.items()):
        for line, target in gnn_imports(source):
            if target not in LAYER_OF:
                problems.append(f"{module}.py:{line} imports gnn.{target}, which has no layer")
            elif LAYER_OF[target] >= LAYER_OF[module]:
                problems.append(f"{module}.py:{line} imports gnn.{target} (layer "
                                f"{LAYER_OF[target]}), not below {module} (layer "
                                f"{LAYER_OF[module]})")
    return problems


def package_sources() -> dict[str, str]:
    return {p.stem: p.read_text() for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_layer() -> None:
    assert sorted(package_sources()) == sorted(LAYER_OF)


def test_no_import_goes_up_or_sideways() -> None:
    assert violations(package_sources()) == []


@pytest.mark.parametrize(("module", "source", "pair"), [
    ("config", "import torch\nfrom gnn.models import MODELS\n", "config.py:2 imports gnn.models"),
    ("data", "def f():\n    from gnn.training import fit\n", "data.py:2 imports gnn.training"),
    ("report", "from gnn import plots\n", "report.py:1 imports gnn.plots"),
    ("scale", "import gnn.bench\n", "scale.py:1 imports gnn.bench"),
])
def test_an_upward_import_is_named(module: str, source: str, pair: str) -> None:
    """The check is not vacuous: an upward or sideways import, at the top or inside a
    function, is reported with the module pair."""
    files = {**package_sources(), module: package_sources()[module] + "\n" + source}
    found = violations(files)
    assert len(found) == 1 and found[0].startswith(pair.rsplit(":", 1)[0].split(".")[0]), found
    assert pair.split(" imports ")[1] in found[0]


def test_config_loads_without_torch(tmp_path: Path) -> None:
    """Loading and checking a config needs neither torch nor the registries."""
    import subprocess
    import sys

    code = ("import sys; from gnn.config import load_config; "
            "load_config('configs/gcn.yaml'); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, check=True)
