"""Datasets: Planetoid (Cora, CiteSeer, PubMed) loaded safely, CSBM graphs, split checks.

The raw Planetoid files are Python pickles, and unpickling a tampered file runs arbitrary code.
They are therefore (1) checked against the SHA-256 of the public files where those are known and
(2) read with a restricted unpickler that builds only numpy arrays, scipy CSR matrices and plain
containers; PyG's processing then reads copies re-pickled from those checked objects, never the
raw bytes. Processing happens in a writable cache keyed by the raw files' hash, built in a
temporary folder and renamed into place (one process at a time: a lock file serialises fills),
with a manifest of the raw hashes and of the SHA-256 of every processed file. A cache whose
files do not match their manifest, do not load (``torch.load(weights_only=True)``), or fail the
structural checks (:func:`check_graph`) is removed and rebuilt with one warning.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid
from torch_geometric.transforms import NormalizeFeatures

from gnn.config import DataConfig, did_you_mean, show
from gnn.errors import ConfigError, DataError
from gnn.npz import read_graph_npz
from gnn.synthetic import check_csbm, csbm

#: Lower-case name -> PyG's spelling. Every Planetoid dataset goes through the same code;
#: ``csbm`` is generated (:mod:`gnn.synthetic`).
PLANETOID: dict[str, str] = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}


@dataclass(frozen=True)
class NpzSource:
    """A graph stored as one ``.npz`` file (:mod:`gnn.npz`), where PyG's dataset of the same
    family fetches it; such graphs have no public split."""

    name: str  # our spelling, e.g. Amazon-Computers
    family: str  # PyG's dataset class: Amazon, Coauthor or CitationFull
    folder: str  # PyG's folder for it under a root of that class
    file: str
    url: str


_SHCHUR = "https://github.com/shchur/gnn-benchmark/raw/master/data/npz"
_G2G = "https://github.com/abojchevski/graph2gauss/raw/master/data"
NPZ: dict[str, NpzSource] = {s.name.lower(): s for s in (
    NpzSource("Amazon-Computers", "Amazon", "Computers", "amazon_electronics_computers.npz",
              _SHCHUR),
    NpzSource("Amazon-Photo", "Amazon", "Photo", "amazon_electronics_photo.npz", _SHCHUR),
    NpzSource("Coauthor-CS", "Coauthor", "CS", "ms_academic_cs.npz", _SHCHUR),
    NpzSource("Coauthor-Physics", "Coauthor", "Physics", "ms_academic_phy.npz", _SHCHUR),
    *(NpzSource(f"CitationFull-{name}", "CitationFull", name.lower(), f"{name.lower()}.npz",
                _G2G) for name in ("Cora", "CiteSeer", "PubMed", "Cora_ML", "DBLP")),
)}
DATASETS: dict[str, str] = {**PLANETOID, **{k: s.name for k, s in NPZ.items()}, "csbm": "csbm"}
PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")

#: SHA-256 of the public raw files (as PyG downloads them). A dataset without an entry is
#: loaded with a warning, still through the restricted unpickler.
KNOWN_SHA256: dict[str, dict[str, str]] = {
    "Cora": {
        "allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
        "ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
        "graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
        "test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
        "tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
        "ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
        "x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
        "y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    },
    "CiteSeer": {
        "allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
        "ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
        "graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
        "test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
        "tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
        "ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
        "x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
        "y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    },
}

#: Expected sizes of the public split, checked whenever one of these datasets is loaded.
PUBLIC_SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "Cora": (140, 500, 1000), "CiteSeer": (120, 500, 1000), "PubMed": (60, 500, 1000),
}

MANIFEST = "manifest.json"
#: Seconds a process waits for another one filling the same cache before giving up.
LOCK_TIMEOUT_S = 600


# --------------------------------------------------------------------------------------------
# Where data lives


def cache_dir() -> Path:
    """Writable per-user cache (``GNN_CACHE_DIR`` overrides it)."""
    env = os.environ.get("GNN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("gnn"))


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """``--root`` / ``data.root``, else ``GNN_DATA_ROOT``, else the user cache."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("GNN_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"


def raw_candidates(root: Path, name: str) -> list[Path]:
    """Folders searched for raw files: PyG's ``root/Name/raw`` and ``root/Planetoid/Name/raw``."""
    return [root / name / "raw", root / "Planetoid" / name / "raw"]


def raw_file_names(name: str) -> list[str]:
    return [f"ind.{name.lower()}.{suffix}" for suffix in PLANETOID_FILES]


def _find_raw_dir(root: Path, name: str) -> Path | None:
    files = raw_file_names(name)
    for folder in raw_candidates(root, name):
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def _is_writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _download(root: Path, name: str) -> Path:
    """Fetch the raw files as PyG's ``Planetoid.download`` would, all or nothing."""
    from torch_geometric.io import fs

    target = root / name / "raw"
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            for file in raw_file_names(name):
                fs.cp(f"{Planetoid.url}/{file}", tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            os.makedirs(tmp)  # TemporaryDirectory removes it again on exit
    except BaseException:
        for folder in created:  # deepest first: leave the tree as it was found
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return target


def _fetch(root: Path, download: bool, fetch: Callable[[Path], Path],
           missing: Callable[[str], str]) -> Path:
    """Download what is missing under ``root`` (or the user cache when ``root`` is read-only);
    offline or with downloads disabled, one :class:`DataError` line saying what is missing."""
    if not download:
        raise DataError(missing("downloads disabled"))
    target = root if _is_writable(root) else cache_dir() / "data"
    try:
        return fetch(target)
    except Exception as exc:  # network errors come in many types
        raise DataError(missing(f"download failed: {exc.__class__.__name__}")) from None


def _missing_message(root: Path, name: str, reason: str) -> str:
    folders = " or ".join(str(p) for p in raw_candidates(root, name))
    return (f"{name}: raw files not found ({reason}); looked for "
            f"{', '.join(raw_file_names(name))} in {folders}; put them there or point at "
            f"their root with --root DIR or GNN_DATA_ROOT=DIR")


# --------------------------------------------------------------------------------------------
# Safe reading of the raw pickles


def _safe_globals() -> dict[tuple[str, str], Any]:
    import numpy as np
    import scipy.sparse as sp

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, any version
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "defaultdict"): __import__("collections").defaultdict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("scipy.sparse.csr", "csr_matrix"): sp.csr_matrix,
        ("scipy.sparse._csr", "csr_matrix"): sp.csr_matrix,
    }
    for module in ("builtins", "__builtin__"):
        for container in (list, dict, set, frozenset, tuple):
            allowed[(module, container.__name__)] = container
    return allowed


class UnsafePickleError(pickle.UnpicklingError):
    """A raw file asked for a global outside the allow-list: it may be trying to run code."""


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only what Planetoid files contain; any other global is refused."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _safe_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: not a type Planetoid files contain"
            ) from None


def read_raw_pickle(path: Path) -> Any:
    """One raw Planetoid pickle through :class:`RestrictedUnpickler` (as PyG reads them:
    latin-1 strings); every failure is a :class:`DataError` naming the file."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise DataError(f"unsafe raw file {path.name}: {exc}") from None
    except Exception as exc:
        raise DataError(f"truncated or corrupt raw file {path.name} "
                        f"({exc.__class__.__name__}: {exc})") from None


def sanitized_copy(raw_dir: Path, target: Path, name: str) -> None:
    """Copy the raw files into ``target`` with every pickle re-written from the objects the
    restricted unpickler built: PyG's reader (plain ``pickle``) then only ever sees bytes made
    here from allowed types."""
    target.mkdir(parents=True)
    for file in raw_file_names(name):
        if file.endswith(".test.index"):
            shutil.copyfile(raw_dir / file, target / file)
        else:
            payload = pickle.dumps(read_raw_pickle(raw_dir / file), protocol=4)
            (target / file).write_bytes(payload)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def raw_hashes(raw_dir: Path, name: str) -> dict[str, str]:
    return {suffix: sha256_file(raw_dir / f"ind.{name.lower()}.{suffix}")
            for suffix in PLANETOID_FILES}


def verify_raw(hashes: dict[str, str], name: str, trust_data: bool) -> None:
    """Compare with the public files' SHA-256; a mismatch is fatal unless trusted."""
    known = KNOWN_SHA256.get(name)
    if known is None:
        warnings.warn(f"{name}: no known SHA-256 for its raw files; reading them through the "
                      "restricted unpickler only", stacklevel=3)
        return
    bad = [s for s in PLANETOID_FILES if hashes[s] != known[s]]
    if not bad:
        return
    files = ", ".join(f"ind.{name.lower()}.{s}" for s in bad)
    if not trust_data:
        raise DataError(f"{name}: SHA-256 mismatch for {files} (not the public files); "
                        "pass --trust-data to load them anyway")
    warnings.warn(f"{name}: SHA-256 mismatch for {files}; loading anyway (--trust-data), "
                  "through the restricted unpickler", stacklevel=3)


class SafePlanetoid(Planetoid):
    """PyG's Planetoid that reads its processed file with ``torch.load(weights_only=True)``
    and never the ``pre_transform.pt`` / ``pre_filter.pt`` files that PyG would unpickle in
    full; the cache's manifest stands in for those checks."""

    def _process(self) -> None:
        if all(Path(p).is_file() for p in self.processed_paths):
            return
        os.makedirs(self.processed_dir, exist_ok=True)
        self.process()

    def load(self, path: str, data_cls: type = Data) -> None:
        out = torch.load(path, weights_only=True)  # no fallback to full unpickling
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise DataError(f"{Path(path).name} does not hold a processed dataset")
        data, self.slices, data_cls = out if len(out) == 3 else (*out, data_cls)
        self.data = data_cls.from_dict(data) if isinstance(data, dict) else data

    def download(self) -> None:  # raw files are placed by load_planetoid, never fetched here
        raise DataError(_missing_message(Path(self.root), self.name, "not in the cache"))


@contextlib.contextmanager
def _quiet_pyg() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*scipy.sparse.csr.*")
        warnings.filterwarnings("ignore", message=".*pre_transform.*")
        warnings.filterwarnings("ignore", message=".*pre_filter.*")
        yield


def load_planetoid(name: str, root: str | os.PathLike[str] | None = None, *,
                   download: bool = True, trust_data: bool = False) -> Data:
    """Load a Planetoid dataset with the public split, verified and cached."""
    name = PLANETOID.get(name.lower(), name)
    root_path = resolve_root(root)
    raw_dir = _find_raw_dir(root_path, name)
    if raw_dir is None:
        raw_dir = _fetch(root_path, download, lambda target: _download(target, name),
                         lambda reason: _missing_message(root_path, name, reason))

    hashes = raw_hashes(raw_dir, name)
    verify_raw(hashes, name, trust_data)
    key = hashlib.sha256("".join(hashes[s] for s in PLANETOID_FILES).encode()).hexdigest()[:16]
    work = cache_dir() / "planetoid" / f"{name}-{key}"
    work.parent.mkdir(parents=True, exist_ok=True)
    with _cache_lock(work):
        _remove_stale_builds(work)
        data = _load_cache(work, name, hashes)
        if data is None:
            _process_into(work, raw_dir, name, hashes)
            data = _load_cache(work, name, hashes, rebuilt=True)
    data.name = name
    data.raw_sha256 = hashes  # the dataset's identity, stored in checkpoints
    check_split(data, expected_sizes=PUBLIC_SPLIT_SIZES.get(name))
    return data


@contextlib.contextmanager
def _cache_lock(work: Path) -> Iterator[None]:
    """One process at a time fills or checks a cache folder; the others wait their turn and
    then find it built."""
    lock = FileLock(f"{work}.lock", timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except TimeoutError:
        raise DataError(f"cache {work} stayed locked for {LOCK_TIMEOUT_S} s by another gnn "
                        f"process; remove {work}.lock if none is running") from None
    try:
        yield
    finally:
        lock.release()


def _remove_stale_builds(work: Path) -> None:
    """Temporary build folders of this cache entry left by a killed process (only the lock
    holder builds, so under the lock any such folder is stale)."""
    for stale in work.parent.glob(f".{work.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _file_hashes(folder: Path) -> dict[str, str]:
    return {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file()}


def _load_cache(work: Path, name: str, hashes: dict[str, str], *,
                rebuilt: bool = False) -> Data | None:
    """The cached dataset if its manifest, files and structure all check out; otherwise the
    folder is removed (one warning) and ``None`` returned so that the caller rebuilds it."""
    if not work.exists():
        return None
    try:
        manifest = json.loads((work / MANIFEST).read_text())
        if manifest.get("raw_sha256") != hashes:
            raise DataError("its manifest names other raw files")
        if manifest.get("processed_sha256") != _file_hashes(work / name / "processed"):
            raise DataError("its files differ from their manifest")
        with _quiet_pyg():
            data = SafePlanetoid(str(work), name)[0]
        check_graph(data)
        check_split(data)
        return data
    except Exception as exc:  # whatever is wrong, the cache is not trusted
        shutil.rmtree(work, ignore_errors=True)
        reason = str(exc) if isinstance(exc, DataError) else \
            f"is unreadable ({exc.__class__.__name__})"
        if rebuilt:
            raise DataError(f"{name}: the freshly built cache in {work} fails its checks: "
                            f"{reason}") from None
        warnings.warn(f"{name}: processed cache in {work} was removed and rebuilt: {reason}",
                      stacklevel=3)
        return None


def _process_into(work: Path, raw_dir: Path, name: str, hashes: dict[str, str]) -> None:
    """Build the cache in a temporary folder (sanitised raw copies, PyG's processing,
    structural checks, manifest) and rename it into place only when all of that succeeded."""
    tmp = Path(tempfile.mkdtemp(dir=work.parent, prefix=f".{work.name}-"))
    try:
        sanitized_copy(raw_dir, tmp / name / "raw", name)
        with _quiet_pyg():
            data = SafePlanetoid(str(tmp), name)[0]
        try:
            check_graph(data)
            check_split(data)
        except DataError as exc:
            raise DataError(f"raw files fail the structural checks: {exc}") from None
        manifest = {"raw_sha256": hashes,
                    "processed_sha256": _file_hashes(tmp / name / "processed")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if work.exists():
            shutil.rmtree(work)
        os.replace(tmp, work)
    except BaseException as exc:  # Ctrl-C and SIGTERM too: never leave a half-built folder
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, DataError):
            raise DataError(f"{name}: {exc} in {raw_dir}") from None
        if isinstance(exc, Exception):
            raise DataError(f"{name}: truncated or corrupt raw files in {raw_dir} "
                            f"({exc.__class__.__name__}: {exc})") from None
        raise


# --------------------------------------------------------------------------------------------
# Graphs stored as .npz files


def npz_candidates(root: Path, source: NpzSource) -> list[Path]:
    """Where an ``.npz`` graph is looked for: ``root/<Name>/raw`` and PyG's layout for a root of
    the family, ``root/<Family>/<folder>/raw``."""
    return [root / source.name / "raw" / source.file,
            root / source.family / source.folder / "raw" / source.file]


def _npz_missing(root: Path, source: NpzSource, reason: str) -> str:
    folders = " or ".join(str(p.parent) for p in npz_candidates(root, source))
    return (f"{source.name}: raw file not found ({reason}); looked for {source.file} in "
            f"{folders}; put it there or point at its root with --root DIR or "
            "GNN_DATA_ROOT=DIR")


def _download_npz(root: Path, source: NpzSource) -> Path:
    """Fetch the file as PyG's dataset would, into ``root/<Name>/raw``, all or nothing."""
    from torch_geometric.io import fs

    target = root / source.name / "raw" / source.file
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        fs.cp(f"{source.url}/{source.file}", tmp)
        os.replace(Path(tmp) / source.file, target)
    return target


def load_npz_graph(name: str, root: str | os.PathLike[str] | None = None, *,
                   download: bool = True) -> Data:
    """An ``.npz`` graph by name (:data:`NPZ`), downloaded when missing and the network is
    reachable; read with :func:`gnn.npz.read_graph_npz` (no unpickling) and checked."""
    source = NPZ[name.lower()]
    root_path = resolve_root(root)
    path = next((p for p in npz_candidates(root_path, source) if p.is_file()), None)
    if path is None:
        path = _fetch(root_path, download, lambda target: _download_npz(target, source),
                      lambda reason: _npz_missing(root_path, source, reason))
    data = read_graph_npz(path)
    try:
        check_graph(data)
    except DataError as exc:
        raise DataError(f"{source.name}: {path.name} fails the structural checks: {exc}") from None
    data.name = source.name
    data.raw_sha256 = {source.file: sha256_file(path)}  # the dataset's identity
    return data


# --------------------------------------------------------------------------------------------
# Random splits


@dataclass(frozen=True)
class SplitMasks:
    """The train/val/test masks of several splits of one graph: ``[K, N]`` booleans, row ``k``
    being split ``ids[k]``."""

    ids: tuple[int, ...]
    train: Tensor
    val: Tensor
    test: Tensor

    def index(self, split: int) -> int:
        """The row of split id ``split``."""
        return self.ids.index(split)


def random_split(y: Tensor, train_per_class: int, val_per_class: int,
                 split_seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Train, val and test masks drawn stratified: exactly ``train_per_class`` and
    ``val_per_class`` nodes of every class, every other node tested.

    The draw depends on ``split_seed`` alone (numpy's PCG64 generator, seeded explicitly, so no
    global random state and no initialisation seed moves it, and every machine draws the same
    masks). A class with fewer than ``train_per_class + val_per_class`` nodes is an error.
    """
    labels = y.cpu().numpy()
    classes, counts = np.unique(labels, return_counts=True)
    need = train_per_class + val_per_class
    if counts.min() < need:
        small = int(classes[counts.argmin()])
        raise DataError(f"data.train_per_class: class {small} has {int(counts.min())} nodes, "
                        f"fewer than train_per_class + val_per_class = {train_per_class} + "
                        f"{val_per_class}")
    rng = np.random.default_rng(split_seed)
    train = np.zeros(labels.size, dtype=bool)
    val = np.zeros(labels.size, dtype=bool)
    for c in classes:  # ascending, so the draw's order is fixed
        members = rng.permutation(np.flatnonzero(labels == c))
        train[members[:train_per_class]] = True
        val[members[train_per_class:need]] = True
    test = ~(train | val)
    if not test.any():
        raise DataError(f"data.val_per_class: every node is in training or validation "
                        f"({need} per class); no node is left to test")
    return torch.from_numpy(train), torch.from_numpy(val), torch.from_numpy(test)


def split_masks(data: Data, cfg: DataConfig, splits: Sequence[int]) -> SplitMasks:
    """The masks of split ids ``splits`` of ``data`` as ``cfg`` draws them: the graph's own
    split for ``data.split: public`` (which has one split, id 0), else :func:`random_split`
    with each id as its split seed."""
    ids = tuple(int(s) for s in splits)
    if not ids:
        raise ConfigError("--splits: at least one split is needed")
    if cfg.split == "public":
        if any(s != 0 for s in ids):
            raise ConfigError(f"--splits: data.split: public has one split (0), asked for "
                              f"{len(set(ids))}; use data.split: random for more")
        rows = [tuple(getattr(data, f"{s}_mask") for s in ("train", "val", "test"))] * len(ids)
    else:
        rows = [random_split(data.y, cfg.train_per_class, cfg.val_per_class, s) for s in ids]
    train, val, test = (torch.stack(list(masks)) for masks in zip(*rows, strict=True))
    masks = SplitMasks(ids, train, val, test)
    if cfg.split_mode == "inductive":
        for k, split in enumerate(ids):
            _check_inductive_edges(data, masks.train[k] | masks.val[k], split)
    return masks


def _check_inductive_edges(data: Data, seen: Tensor, split: int) -> None:
    """Inductive training sees only edges between train and val nodes; a split that leaves it
    none would train a graph model on features alone."""
    ei = data.edge_index
    if not bool((seen[ei[0]] & seen[ei[1]]).any()):
        raise ConfigError(f"data.split_mode: inductive training on split {split} has no edge "
                          f"(none joins two of its {int(seen.sum())} train and val nodes); "
                          "use more nodes per class or split_mode: transductive")


def with_split(data: Data, masks: SplitMasks, split: int) -> Data:
    """``data`` with split ``split``'s masks: a shallow copy sharing features and edges."""
    k = masks.index(split)
    out = copy.copy(data)
    out.train_mask, out.val_mask, out.test_mask = masks.train[k], masks.val[k], masks.test[k]
    return out


def data_for_split(data: Data, cfg: DataConfig, split: int) -> Data:
    """``data`` with the masks of split id ``split`` (see :func:`split_masks`)."""
    return with_split(data, split_masks(data, cfg, [split]), split)


def largest_component(data: Data) -> Data:
    """The subgraph of the largest connected component, edges taken as undirected (PyG's
    ``LargestConnectedComponents``, weak connection), nodes relabelled in their order."""
    from torch_geometric.transforms import LargestConnectedComponents

    return LargestConnectedComponents(num_components=1, connection="weak")(data)


# --------------------------------------------------------------------------------------------
# Splits and the public entry point


def check_split(data: Data, expected_sizes: tuple[int, int, int] | None = None) -> None:
    """Raise ``DataError`` unless train/val/test masks are boolean, full-length, non-empty and
    pairwise disjoint (and, when given, of the expected sizes)."""
    num_nodes = data.num_nodes
    masks: dict[str, Tensor] = {}
    for split in ("train", "val", "test"):
        mask = getattr(data, f"{split}_mask", None)
        if mask is None:
            raise DataError(f"split: {split}_mask is missing")
        if mask.dtype != torch.bool:
            raise DataError(f"split: {split}_mask must be boolean, got {mask.dtype}")
        if mask.dim() != 1 or mask.numel() != num_nodes:
            raise DataError(f"split: {split}_mask has shape {tuple(mask.shape)}, "
                            f"expected ({num_nodes},)")
        if not bool(mask.any()):
            raise DataError(f"split: {split}_mask is empty")
        masks[split] = mask
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        overlap = int((masks[a] & masks[b]).sum())
        if overlap:
            raise DataError(f"split: {a} and {b} masks overlap in {overlap} nodes")
    if expected_sizes is not None:
        sizes = tuple(int(masks[s].sum()) for s in ("train", "val", "test"))
        if sizes != tuple(expected_sizes):
            raise DataError(f"split: sizes train/val/test {sizes} differ from the public "
                            f"split {tuple(expected_sizes)}")


def check_graph(data: Data) -> None:
    """Raise ``DataError`` unless the graph is well formed: 2-D float features with one row
    per node, a ``[2, E]`` integer edge index whose ids lie in ``0..N-1``, and one integer
    label per node in ``0..C-1`` with ``C <= N``."""
    n = data.num_nodes
    x, edge_index, y = data.x, data.edge_index, data.y
    if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != n or not x.is_floating_point():
        raise DataError(f"graph: features must be a float [{n}, F] tensor, got "
                        f"{_describe(x)}")
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2 \
            or edge_index.dtype != torch.long:
        raise DataError(f"graph: edge_index must be a long [2, E] tensor, got "
                        f"{_describe(edge_index)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        bad = int(edge_index.max()) if int(edge_index.max()) >= n else int(edge_index.min())
        raise DataError(f"graph: edge_index holds node {bad}, outside 0..{n - 1}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.numel() != n or y.dtype != torch.long:
        raise DataError(f"graph: labels must be a long [{n}] tensor, got {_describe(y)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= n):
        raise DataError(f"graph: labels must lie in 0..C-1 with C <= {n}, got "
                        f"{int(y.min())}..{int(y.max())}")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__


def num_classes(data: Data) -> int:
    return int(data.y.max()) + 1


def check_data_config(cfg: DataConfig) -> None:
    """The dataset name is one the loaders know, and a CSBM's parameters fit together."""
    if cfg.name.lower() not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {show(cfg.name)}"
                          f"{did_you_mean(cfg.name.lower(), DATASETS)}; choose from "
                          f"{', '.join(sorted(DATASETS.values()))}")
    if cfg.name.lower() == "csbm":
        check_csbm(cfg)
    if cfg.name.lower() in NPZ and cfg.split != "random":
        raise ConfigError(f"data.split: {NPZ[cfg.name.lower()].name} has no public split; "
                          "use data.split: random")


def load_dataset(cfg: DataConfig) -> Data:
    """The dataset a config asks for, with its transforms applied: the largest connected
    component when asked, row-normalised features (bag-of-words features: Planetoid, binary
    csbm; Gaussian csbm features are standardised by construction and left as they are), and
    the masks of split ``split_seed`` for ``split: random``."""
    check_data_config(cfg)
    if cfg.name.lower() == "csbm":
        data = csbm(cfg)
        normalize = cfg.normalize_features and cfg.features == "binary"
    elif cfg.name.lower() in NPZ:
        data = load_npz_graph(cfg.name, cfg.root, download=cfg.download)
        normalize = cfg.normalize_features
    else:
        data = load_planetoid(cfg.name, cfg.root, download=cfg.download,
                              trust_data=cfg.trust_data)
        normalize = cfg.normalize_features
    if cfg.largest_component:
        data = largest_component(data)
    if normalize:
        data = NormalizeFeatures()(data)
    if cfg.split == "random":
        data = data_for_split(data, cfg, cfg.split_seed)
    return data


def training_view(data: Data) -> Data:
    """The inductive training graph: the subgraph induced by train and validation nodes,
    relabelled ``0..n-1``. Test nodes, their features and every edge touching them are absent,
    and so is ``test_mask`` (never read here)."""
    from torch_geometric.utils import subgraph

    keep = data.train_mask | data.val_mask
    edge_index, _ = subgraph(keep, data.edge_index, relabel_nodes=True,
                             num_nodes=data.num_nodes)
    view = Data(x=data.x[keep], edge_index=edge_index, y=data.y[keep],
                train_mask=data.train_mask[keep], val_mask=data.val_mask[keep],
                num_nodes=int(keep.sum()))
    view.name = getattr(data, "name", None)
    return view
