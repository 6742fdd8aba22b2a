"""Graphs stored as ``.npz`` files (Shchur et al.'s Amazon and Coauthor graphs, Bojchevski &
Günnemann's CitationFull graphs), read without ever unpickling.

The format (as PyG's ``read_npz`` reads it): a sparse adjacency in CSR parts ``adj_data``,
``adj_indices``, ``adj_indptr``, ``adj_shape``; sparse node attributes ``attr_data``,
``attr_indices``, ``attr_indptr``, ``attr_shape``; one integer ``labels`` per node. Some files
also hold pickled Python objects (index-to-name maps); ``numpy.load(allow_pickle=False)`` refuses
to load those, so no code in a file can run, and the arrays above never need them. The graph is
then built by PyG's own ``parse_npz`` (self-loops removed, edges made undirected, attributes
binarised, as PyG's ``Amazon``, ``Coauthor`` and ``CitationFull`` datasets do).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from gnn.errors import DataError

#: The arrays a graph file must hold.
NPZ_KEYS = ("adj_data", "adj_indices", "adj_indptr", "adj_shape", "attr_data", "attr_indices",
            "attr_indptr", "attr_shape", "labels")


def read_graph_npz(path: Path) -> Data:
    """The graph in ``path``; every problem (not a zip, a missing array, a pickled array the
    graph needs, arrays that do not fit together) is one :class:`DataError` naming the file."""
    if not zipfile.is_zipfile(path):  # numpy would take it for a pickle (and refuse it)
        raise DataError(f"{path.name} is truncated or not an .npz file (a zip of arrays)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in NPZ_KEYS if key not in arrays.files]
            if missing:
                raise DataError(f"{path.name} is not a graph .npz file (no {missing[0]} array)")
            return _parse(arrays, path)
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path.name}: refused an array stored as pickled Python objects "
                            "(loading it could run code)") from None
        raise DataError(f"{path.name} is corrupt ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path.name} is truncated or not an .npz file "
                        f"({exc.__class__.__name__})") from None


def _parse(arrays: np.lib.npyio.NpzFile, path: Path) -> Data:
    from torch_geometric.io.npz import parse_npz

    try:
        return parse_npz(arrays)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise
        raise DataError(f"{path.name}: its arrays do not form a graph ({exc})") from None
    except (IndexError, TypeError) as exc:
        raise DataError(f"{path.name}: its arrays do not form a graph "
                        f"({exc.__class__.__name__}: {exc})") from None
