"""Command line: ``gnn train``, ``gnn scale``, ``gnn smoke``.

Every bad input ends in one line on stderr and exit code 2, before any file is written.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from gnn.config import Config, ConfigError, load_config

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Raised by the argument parser instead of printing usage and exiting."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults when omitted)")
    p.add_argument("--model", help="model name from the registry (overrides model.name)")
    p.add_argument("--dataset", help="dataset name, e.g. Cora, CiteSeer, PubMed")
    p.add_argument("--root", help="data root (overrides data.root and GNN_DATA_ROOT)")
    p.add_argument("--seed", type=int, help="random seed (overrides train.seed)")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides train.epochs)")
    p.add_argument("--device", help="cpu or cuda (overrides train.device)")
    p.add_argument("--split-mode", help="transductive or inductive (overrides data.split_mode)")
    p.add_argument("--trust-data", action="store_true", default=None,
                   help="load raw files whose SHA-256 differs from the public ones (warning)")


def build_parser() -> Parser:
    parser = Parser(prog="gnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train one model from a YAML config")
    _add_run_options(train)
    train.add_argument("--json", help="write the full result record to this path")
    train.add_argument("--progress", action="store_true", default=None,
                       help="show a progress bar over epochs")

    scale = sub.add_parser("scale", help="time and memory of models on CSBM graphs of "
                           "growing size; writes scale.md, scale.csv, scale.png")
    scale.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 4e6],
                       help="numbers of nodes (default: 1e4 1e5 1e6 4e6)")
    scale.add_argument("--models", nargs="+", default=["gcn", "sage_sampling"],
                       help="presets (gcn, sage, mlp, sage_sampling) or YAML config paths")
    scale.add_argument("--memory-budget", type=float, default=8.0, metavar="GIB",
                       help="skip a model whose predicted peak memory exceeds this (default 8)")
    scale.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    scale.add_argument("--out", default="results/scale", help="output folder")
    scale.add_argument("--config", help="YAML whose data and train sections are used "
                       "(csbm parameters, lr, ...)")
    scale.add_argument("--device", default="cpu", help="cpu or cuda")
    scale.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); "
                       "1 is steadier on a machine shared with other jobs")

    smoke = sub.add_parser("smoke", help="check the installation and that Cora loads")
    smoke.add_argument("--root", help="data root")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    overrides: dict[str, Any] = {
        "model.name": args.model, "data.name": args.dataset, "data.root": args.root,
        "train.seed": args.seed, "train.epochs": args.epochs, "train.device": args.device,
        "data.trust_data": args.trust_data,
        "train.progress": getattr(args, "progress", None),
        "data.split_mode": args.split_mode,
    }
    return cfg.override(overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from gnn.files import check_output_file, write_json
    from gnn.training import fit, public_record, resolve_device, summary_line

    cfg = config_from_args(args)
    resolve_device(cfg.train.device)
    if args.json:
        check_output_file(args.json, "--json")
    result = fit(cfg)
    print(summary_line(result))
    if args.json:
        write_json(args.json, public_record(result))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gnn.scale import run_scale
    from gnn.training import resolve_device

    if args.memory_budget <= 0:
        raise ConfigError(f"--memory-budget: must be > 0 GiB, got {args.memory_budget}")
    sizes = []
    for size in args.sizes:
        if size != int(size) or size < 2:
            raise ConfigError(f"--sizes: node counts must be whole numbers >= 2, got {size:g}")
        sizes.append(int(size))
    resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads: must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    run_scale(sizes, args.models, args.memory_budget, args.epochs, Path(args.out),
              config=args.config, device=args.device)
    print(f"wrote {args.out}/scale.md, scale.csv, scale.png")
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    import torch
    import torch_geometric

    from gnn.data import load_planetoid

    print(f"torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, "
          f"CUDA available: {torch.cuda.is_available()}")
    data = load_planetoid("Cora", args.root)
    expected = (2708, 1433, 10556, 7)
    got = (data.num_nodes, data.num_features, data.num_edges, int(data.y.max()) + 1)
    ok = got == expected
    print(f"Cora: nodes={got[0]} features={got[1]} edges={got[2]} classes={got[3]} "
          f"train/val/test={int(data.train_mask.sum())}/{int(data.val_mask.sum())}/"
          f"{int(data.test_mask.sum())}: {'ok' if ok else f'expected {expected}'}")
    return 0 if ok else 1


COMMANDS = {"train": cmd_train, "scale": cmd_scale, "smoke": cmd_smoke}


def _fail(message: str, code: int) -> int:
    print(f"gnn: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from gnn.data import DataError
    from gnn.training import TrainingError

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, DataError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except TrainingError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
