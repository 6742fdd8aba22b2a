"""gnn: accuracy and speed of graph neural networks for node classification, measured honestly.

The package is layered: a module imports only modules of lower layers (``tests/test_layers.py``
checks every import, at the top of a file or inside a function, and names any that goes up or
sideways). From the bottom:
"""

__version__ = "0.1.0"

#: The declared import order, lowest first; modules of one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),  # every exception type; imports nothing
    ("config",),  # dataclasses, YAML, field checks; no torch
    ("files", "timing", "metrics", "memory", "stats", "compiled", "workers"),  # writes, clocks,
    # scores, RSS, statistics; numba compilation and random bits for the compiled kernels;
    # forked worker processes
    ("synthetic", "npz"),  # the CSBM graph generator; the .npz graph reader (no unpickling)
    ("data",),  # Planetoid and .npz loading, the cache, splits, graph checks, the dataset registry
    ("kernels", "sample_kernel", "member_kernel", "attention_kernel"),  # cached sparse
    # operators, CSR products; the compiled sampler; the members' compiled first layer and
    # GAT attention
    ("models",),  # the model registry: thin subclasses of PyG's models
    ("sampling",),  # the neighbour sampler and its loader
    ("batching",),  # full-batch and sampled epochs behind one protocol
    ("training",),  # fit() and its typed FitResult
    ("members",),  # M members of one config trained in one batched run
    ("checkpoint", "distributed", "bench", "scale", "tune"),  # what is built on fit()
    ("report",),  # every markdown and CSV table
    ("plots",),  # every figure (matplotlib Figure, never pyplot)
    ("cli",),  # the command line
    ("__main__",),
)
