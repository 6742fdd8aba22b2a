"""gnn: accuracy and speed of graph neural networks for node classification, measured honestly."""

__version__ = "0.1.0"
