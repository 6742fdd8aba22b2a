"""Command line: ``gnn train``, ``gnn bench``, ``gnn smoke``.

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

    bench = sub.add_parser("bench", help="train every model on every seed and device; write "
                           "tables, runs, plots and a recommendation")
    bench.add_argument("--models", nargs="+", metavar="NAME",
                       help="config names in --configs (default: those of "
                            "mlp gcn sage sage_sampling gat appnp that exist)")
    bench.add_argument("--seeds", type=int,
                       help="seeds 0..N-1 per model and device (default 5; 2 with --quick)")
    bench.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu"],
                       help="devices to run on (default: cpu)")
    bench.add_argument("--dataset", help="dataset for every model (default: each config's)")
    bench.add_argument("--root", help="data root (overrides data.root and GNN_DATA_ROOT)")
    bench.add_argument("--epochs", type=int, help="epochs for every model (default: each "
                       "config's; 10 with --quick)")
    bench.add_argument("--configs", metavar="DIR",
                       help="folder of YAML configs (default: the project's configs/)")
    bench.add_argument("--out", default="results/bench", help="output folder "
                       "(default: results/bench)")
    bench.add_argument("--resume", action="store_true",
                       help="keep the runs already in --out and run only the missing ones")
    bench.add_argument("--quick", action="store_true",
                       help="sanity run: 2 seeds, 10 epochs, 5 timed forwards")
    bench.add_argument("--memory-budget-mb", type=float, metavar="MB",
                       help="leave out models whose peak memory exceeds MB when recommending")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--trust-data", action="store_true", default=None,
                       help="load raw files whose SHA-256 differs from the public ones")

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


def cmd_bench(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from gnn import bench
    from gnn.report import machine_meta, write_report

    configs_dir = Path(args.configs) if args.configs else bench.default_configs_dir()
    if not configs_dir.is_dir():
        raise ConfigError(f"--configs: {configs_dir} is not a folder")
    names = args.models or bench.default_models(configs_dir)
    seeds = args.seeds
    if seeds is None:
        seeds = bench.QUICK_SEEDS if args.quick else bench.DEFAULT_SEEDS
    epochs = args.epochs
    if epochs is None and args.quick:
        epochs = bench.QUICK_EPOCHS
    if args.memory_budget_mb is not None and not args.memory_budget_mb > 0:
        raise ConfigError(f"--memory-budget-mb: must be > 0, got {args.memory_budget_mb}")
    overrides = {"data.name": args.dataset, "data.root": args.root, "train.epochs": epochs,
                 "data.trust_data": args.trust_data, "train.progress": False}
    plan = bench.plan_runs(names, seeds, args.devices, configs_dir, overrides)
    latency = bench.QUICK_LATENCY if args.quick else bench.LatencySettings()
    out = Path(args.out)
    try:
        result = bench.run_bench(plan, out, resume=args.resume, latency=latency,
                                 progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"gnn bench: interrupted; the finished runs are in {out}, "
              "run the same command with --resume to finish", file=sys.stderr)
        raise
    command = "gnn " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    paths, table = write_report(result.rows, out, machine_meta(command, args.devices),
                                args.memory_budget_mb)
    print(table)
    notes = [f"{result.ran} runs trained", f"{result.resumed} resumed"]
    if result.dropped:
        notes.append(f"{result.dropped} cut or repeated lines dropped from {bench.JSONL}")
    if result.other_rows:
        notes.append(f"{result.other_rows} rows of other runs kept but not reported")
    written = [out / bench.JSONL, out / bench.CSV, *paths]
    print(f"{'; '.join(notes)}. Wrote {', '.join(map(str, written))}")
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


COMMANDS = {"train": cmd_train, "bench": cmd_bench, "smoke": cmd_smoke}


def _fail(message: str, code: int) -> int:
    print(f"gnn: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from gnn.data import DataError
    from gnn.training import TrainingError

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    try:
        args = build_parser().parse_args(argv)
        args.argv = None if argv is None else list(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, DataError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except TrainingError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
