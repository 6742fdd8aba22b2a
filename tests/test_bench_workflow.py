"""The regression workflow of the README works: autosave a baseline, compare against it, and an
injected slowdown makes --benchmark-compare-fail fail (exit code non-zero)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELECT = "test_forward_latency and gcn and ours and cpu"


def run_bench(storage: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_models.py", "-q", "-k", SELECT,
           "--quick", "-p", "no:cacheprovider", f"--benchmark-storage=file://{storage}", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_autosave_compare_and_injected_slowdown_fails(data_root: Path, tmp_path: Path) -> None:
    storage = tmp_path / "bench"
    saved = run_bench(storage, "--benchmark-autosave")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    files = list(storage.glob("*/*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())["benchmarks"][0]
    for key in ("model", "device", "dataset", "num_nodes", "num_edges", "torch",
                "torch_geometric", "threads"):
        assert key in record["extra_info"], key

    # 0.5 s of sleep on a sub-millisecond forward: far beyond noise and the 25% threshold.
    slowed = run_bench(storage, "--benchmark-compare", "--benchmark-compare-fail=median:25%",
                       "--inject-slowdown", "0.5")
    assert slowed.returncode != 0
    assert "Performance has regressed" in slowed.stdout + slowed.stderr


@pytest.mark.parametrize("flag", ["--quick"])
def test_benchmarks_collect(flag: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--collect-only", "-q",
                           flag, "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_forward_latency" in proc.stdout
