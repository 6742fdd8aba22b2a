"""Test-suite settings: one torch thread unless ``GNN_TEST_THREADS`` says otherwise, and a
throwaway PostgreSQL server for the tuning tests.

The tests check results, not speed. On a machine whose cores are busy with other jobs, OpenMP
threads waiting on each other made the sampled-GraphSAGE accuracy gate take 484 s with two
threads instead of about 40 s with one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _test_threads() -> None:
    torch.set_num_threads(int(os.environ.get("GNN_TEST_THREADS", "1")))


@pytest.fixture(params=["compiled", "vectorised"])
def sampler_code(request: pytest.FixtureRequest) -> Iterator[str]:
    """The neighbour sampler's two implementations of the same semantics: the compiled hop loop
    (CPU graphs, where numba is installed) and the vectorised tensor code."""
    from gnn.sampling import TorchNeighborSampler, compiled_sampler_available

    if request.param == "compiled" and not compiled_sampler_available():
        pytest.skip("the compiled sampler needs numba, which is not installed")
    saved = TorchNeighborSampler.use_compiled
    TorchNeighborSampler.use_compiled = request.param == "compiled"
    try:
        yield request.param
    finally:
        TorchNeighborSampler.use_compiled = saved


@pytest.fixture()
def root(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of Cora's raw files and a private cache, so nothing leaks."""
    monkeypatch.setenv("GNN_CACHE_DIR", str(tmp_path / "cache"))
    from gnn.data import raw_file_names

    source = next(data_root.glob("**/Cora/raw"))
    raw = tmp_path / "root" / "Cora" / "raw"
    raw.mkdir(parents=True)
    for name in raw_file_names("Cora"):
        shutil.copyfile(source / name, raw / name)
    return tmp_path / "root"


def postgres_bindir() -> Path | None:
    """PostgreSQL's server binaries: Debian's ``/usr/lib/postgresql/VERSION/bin`` (newest
    first), else ``initdb`` on the PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """A running server that trusts local TCP connections as ``postgres``."""

    bindir: Path
    port: int
    _names: Iterator[int]

    def new_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL."""
        name = f"gnn_test_{next(self._names)}"
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", name], check=True, capture_output=True, timeout=60)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server (``initdb`` + ``pg_ctl``) in a temporary folder, stopped
    and removed after the session. The server refuses to run as root, so as root it runs as
    the ``postgres`` system user. Skips (fails under CI) where the binaries are absent."""
    bindir = postgres_bindir()
    if bindir is None:
        reason = ("PostgreSQL server binaries (initdb, pg_ctl) not found in "
                  "/usr/lib/postgresql/*/bin or on the PATH; install the postgresql package")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="gnn-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres",
        "--no-sync", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w",
        "-t", "60", "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start")
    try:
        yield PostgresServer(bindir, port, count())
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w",
            "stop")
        shutil.rmtree(folder, ignore_errors=True)
