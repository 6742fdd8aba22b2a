"""Command line: ``gnn train``, ``gnn predict``, ``gnn bench``, ``gnn scale``, ``gnn tune``,
``gnn smoke``.

Every bad input ends in one line on stderr and exit code 2, before any file is written.
Ctrl-C ends with exit code 130 and SIGTERM with 143, files already written stay complete and
none is left half-written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from gnn.config import Config, load_config, shipped_models
from gnn.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Terminated,
    TrainingError,
    UsageError,
)
from gnn.files import DiskFull, sigterm_raises

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
SPLITS = ("train", "val", "test", "all")
MAX_LOCAL_RANKS = 256
MAX_THREADS = 1024


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
    _add_split_options(p)
    p.add_argument("--split-seed", type=int, metavar="N",
                   help="with --split random: which random split (overrides data.split_seed)")
    p.add_argument("--trust-data", action="store_true", default=None,
                   help="load raw files whose SHA-256 differs from the public ones (warning)")


def _add_split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=("public", "random"),
                   help="the dataset's public split or stratified random splits "
                        "(overrides data.split)")
    p.add_argument("--largest-component", action="store_true", default=None,
                   help="keep the largest connected component (data.largest_component)")


def build_parser() -> Parser:
    parser = Parser(prog="gnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_train, _add_predict, _add_scale, _add_bench, _add_tune):
        add(sub)
    smoke = sub.add_parser("smoke", help="check the installation and that Cora loads")
    smoke.add_argument("--root", help="data root")
    return parser


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train one model from a YAML config")
    _add_run_options(train)
    train.add_argument("--json", help="write the full result record to this path")
    train.add_argument("--save", metavar="PATH",
                       help="write a checkpoint (best weights, config, dataset identity)")
    train.add_argument("--progress", action="store_true", default=None,
                       help="show a progress bar over epochs")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training (DDP) in --nproc local processes; under "
                            "torchrun (WORLD_SIZE set) every process is one rank anyway")
    train.add_argument("--nproc", type=int, help="processes for --distributed (default 2)")
    train.add_argument("--seeds", metavar="A-B|A,B,...",
                       help="train one model per seed (batched where the model allows) and "
                            "write one record per seed; --json then holds a list")
    train.add_argument("--members", default="auto", metavar="auto|N",
                       help="with --seeds: members per batched run (default auto)")
    train.add_argument("--workers", type=int, default=1, metavar="N",
                       help="with --seeds: batched runs in N processes at once, torch's "
                            "threads shared between them (default 1)")


def _add_predict(sub: Any) -> None:
    predict = sub.add_parser("predict", help="predict classes with a saved checkpoint")
    predict.add_argument("--checkpoint", required=True, metavar="PATH",
                         help="checkpoint written by gnn train --save")
    predict.add_argument("--nodes", nargs="+", default=["all"], metavar="N",
                         help="node ids (space or comma separated) or one of "
                              f"{', '.join(SPLITS)} (default: all)")
    predict.add_argument("--out", metavar="PATH", help="write CSV here (default: stdout)")
    predict.add_argument("--root", help="data root (overrides the checkpoint's data.root)")
    predict.add_argument("--dataset", help="predict on this dataset (default: the checkpoint's)")
    predict.add_argument("--device", help="cpu or cuda (default: cpu)")
    predict.add_argument("--trust-data", action="store_true", default=None,
                         help="accept raw files whose SHA-256 differs (warning)")


def _add_scale(sub: Any) -> None:
    scale = sub.add_parser("scale", help="time and memory of models on CSBM graphs of "
                           "growing size; writes scale.md, scale.csv, scale.png")
    scale.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 4e6],
                       help="numbers of nodes (default: 1e4 1e5 1e6 4e6)")
    scale.add_argument("--models", nargs="+", default=["gcn", "sage_sampling"],
                       help=f"shipped models ({', '.join(shipped_models())}) or YAML config "
                            "paths (default: gcn sage_sampling)")
    scale.add_argument("--memory-budget", type=float, default=8.0, metavar="GIB",
                       help="skip a model whose predicted peak memory exceeds this (default 8)")
    scale.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    scale.add_argument("--out", default="results/scale", help="output folder")
    scale.add_argument("--config", help="YAML whose data and train sections are used "
                       "(csbm parameters, lr, ...)")
    scale.add_argument("--device", default="cpu", help="cpu or cuda")
    scale.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); "
                       "1 is steadier on a machine shared with other jobs")


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="train every model on every seed and device; write "
                           "tables, runs, plots and a recommendation")
    bench.add_argument("--models", nargs="+", metavar="NAME",
                       help="config names in --configs (default: every config there; the "
                            f"project's are {', '.join(shipped_models())})")
    bench.add_argument("--seeds", type=int,
                       help="seeds 0..N-1 per model and device (default 5; 2 with --quick)")
    bench.add_argument("--splits", type=int, default=1, metavar="K",
                       help="random splits 0..K-1 (split seeds) per model and device, each "
                            "with every seed (default 1; K > 1 needs --split random)")
    _add_split_options(bench)
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
    bench.add_argument("--members", default="auto", metavar="auto|N",
                       help="train up to N seeds of a model as members of one batched run "
                            "(auto: as many as fit in memory; 1: one run per seed)")
    bench.add_argument("--workers", type=int, default=1, metavar="N",
                       help="train the runs in N processes at once, each with an equal share "
                            "of the threads (CPU runs only; their times are measured while the "
                            "others run; default 1)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--trust-data", action="store_true", default=None,
                       help="load raw files whose SHA-256 differs from the public ones")


def _add_tune(sub: Any) -> None:
    tune = sub.add_parser("tune", help="tune models with an equal budget of Optuna trials on "
                          "validation accuracy; writes best configs, trials.csv, figures")
    tune.add_argument("--models", "--model", nargs="+", required=True, metavar="NAME",
                      help="config names in --configs, tuned one after the other")
    tune.add_argument("--trials", type=int, required=True,
                      help="budget per model: finished trials over every worker of the study")
    tune.add_argument("--splits", type=int, default=1, metavar="K",
                      help="random splits 0..K-1 per trial, each with every seed (default 1; "
                           "K > 1 needs --split random)")
    _add_split_options(tune)
    tune.add_argument("--seeds", type=int, default=2, help="seeds 0..S-1 per split and "
                      "trial (default 2)")
    tune.add_argument("--out", default="results/tune", help="output folder (default "
                      "results/tune)")
    tune.add_argument("--storage", metavar="URL", help="study database (default "
                      "sqlite:///OUT/study.db); postgresql://USER@HOST/DB shares the studies "
                      "between processes on several machines")
    tune.add_argument("--configs", metavar="DIR",
                      help="folder of YAML configs (default: the project's configs/)")
    tune.add_argument("--search", metavar="DIR",
                      help="folder of search spaces NAME.yaml (default: CONFIGS/search)")
    tune.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed (default 0)")
    tune.add_argument("--dataset", help="dataset for every model (default: each config's)")
    tune.add_argument("--root", help="data root (overrides data.root and GNN_DATA_ROOT)")
    tune.add_argument("--epochs", type=int, help="epochs for every trial (default: each "
                      "config's)")
    tune.add_argument("--device", help="cpu or cuda (overrides train.device)")
    tune.add_argument("--trust-data", action="store_true", default=None,
                      help="load raw files whose SHA-256 differs from the public ones")
    tune.add_argument("--heartbeat", type=int, default=10, metavar="S", help="seconds between "
                      "a running trial's heartbeats (default 10)")
    tune.add_argument("--grace", type=int, metavar="S", help="seconds without heartbeat "
                      "before a trial counts as dead and is retried (default 2 x heartbeat)")
    tune.add_argument("--retries", type=int, default=3,
                      help="times a dead worker's trial is retried (default 3)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file with the flags applied; names (model, dataset) are checked by the
    command that uses it, where the registries are loaded."""
    cfg = load_config(args.config)
    overrides: dict[str, Any] = {
        "model.name": args.model, "data.name": args.dataset, "data.root": args.root,
        "train.seed": args.seed, "train.epochs": args.epochs, "train.device": args.device,
        "data.trust_data": args.trust_data,
        "train.progress": getattr(args, "progress", None),
        "data.split_mode": args.split_mode, "data.split": args.split,
        "data.split_seed": args.split_seed, "data.largest_component": args.largest_component,
    }
    return cfg.override(overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from gnn.files import check_distinct_outputs, check_output_file, write_json
    from gnn.training import check_config, fit, resolve_device

    cfg = check_config(config_from_args(args))
    resolve_device(cfg.train.device)
    if args.seeds is not None:
        return train_seeds(args, cfg)
    if args.workers != 1:
        raise UsageError("--workers: only with --seeds")
    if args.nproc is not None and not args.distributed:
        raise UsageError("--nproc: only with --distributed")
    if args.nproc is not None and not 1 <= args.nproc <= MAX_LOCAL_RANKS:
        raise UsageError(f"--nproc: must be 1..{MAX_LOCAL_RANKS}, got {args.nproc}")
    env = None
    if args.distributed or "WORLD_SIZE" in os.environ:
        from gnn import distributed

        distributed.check_config(cfg)
        distributed.check_environment()
        env = distributed.DistEnv.from_environ()
    for path, flag in ((args.json, "--json"), (args.save, "--save")):
        if path:  # every rank checks, so none joins a job that rank 0 must leave
            check_output_file(path, flag)
    check_distinct_outputs({"--json": args.json, "--save": args.save})
    if args.distributed and env is None:  # the launcher: the ranks do the work
        nproc = 2 if args.nproc is None else args.nproc
        return distributed.launch_local(nproc, args.argv, cfg.train.device)
    result = fit(cfg) if env is None else distributed.train_rank(cfg, env)
    if result is None:  # a rank other than 0
        return 0
    print(result.summary_line())
    if args.save:
        from gnn.checkpoint import save_checkpoint

        metrics = {"best_epoch": result.best_epoch, "train_acc": result.train_acc,
                   "val_acc": result.val_acc, "test_acc": result.test_acc}
        save_checkpoint(args.save, result.trained, cfg, result.data, metrics)
    if args.json:
        write_json(args.json, result.to_record())
    return 0


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``A-B`` (inclusive) or ``A,B,...``; at most 10,000 seeds."""
    try:
        if "-" in text.strip("-"):
            first, last = (int(part) for part in text.split("-", 1))
            seeds = list(range(first, last + 1)) if 0 <= last - first < 10_000 else []
        else:
            seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(seeds) > 10_000 or min(seeds) < 0 or max(seeds) > 2**32 - 1:
        raise UsageError(f"--seeds: expected A-B or A,B,... with 1..10000 seeds in "
                         f"0..4294967295, got {text[:40]!r}")
    return seeds


def parse_members(text: str) -> str | int:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--members: expected auto or a number >= 1, got {text[:40]!r}")
    return int(text)


#: Why ``--workers`` leaves GPU runs in the parent process (formatted with the device).
GPU_STAYS = ("--workers: runs on {device} stay in this process (a forked worker cannot use "
             "CUDA once its parent has)")


def parse_workers(workers: int) -> int:
    """``--workers`` of ``train`` and ``bench``, checked."""
    if not 1 <= workers <= MAX_LOCAL_RANKS:
        raise UsageError(f"--workers: must be 1..{MAX_LOCAL_RANKS}, got {workers}")
    return workers


def train_seeds(args: argparse.Namespace, cfg: Config) -> int:
    """``gnn train --seeds``: one result per seed, batched where the model batches."""
    from gnn.data import load_dataset
    from gnn.files import check_output_file, write_json
    from gnn.members import can_batch, fit_many, resolve_members, sequential_reason

    seeds, members = parse_seeds(args.seeds), parse_members(args.members)
    parse_workers(args.workers)
    for flag, given in (("--save", args.save), ("--distributed", args.distributed)):
        if given:
            raise UsageError(f"{flag}: not with --seeds (one checkpoint or job per run)")
    if args.json:
        check_output_file(args.json, "--json")
    data = load_dataset(cfg.data)
    if can_batch(cfg):
        processes = args.workers if cfg.train.device == "cpu" else 1
        members = resolve_members(members, len(seeds), cfg, data, processes)
    elif members not in (1, "auto"):
        warnings.warn(f"--members: {cfg.model.name} trains its seeds one after the other "
                       f"({sequential_reason(cfg)})", stacklevel=2)
    if args.workers > 1 and (members == 1 or not can_batch(cfg)):
        warnings.warn("--workers: only batched runs go to worker processes; these fits run "
                      "one after the other in this one", stacklevel=2)
    elif args.workers > 1 and cfg.train.device != "cpu":
        warnings.warn(GPU_STAYS.format(device=cfg.train.device), stacklevel=2)
    results = fit_many(cfg, seeds, data, members=members if isinstance(members, int) else None,
                       workers=args.workers)
    for result in results:
        print(result.summary_line() + (f" members={result.members}"
                                       if result.members > 1 else ""))
    if args.json:
        write_json(args.json, [result.to_record() for result in results])
    return 0


def parse_nodes(tokens: Sequence[str]) -> str | list[int]:
    """``--nodes``: a split name, or node ids (space or comma separated); checked before any
    data is loaded (the range is checked by :func:`select_nodes`)."""
    if len(tokens) == 1 and tokens[0] in SPLITS:
        return tokens[0]
    ids: list[int] = []
    for token in (t for arg in tokens for t in arg.split(",") if t.strip()):
        try:
            ids.append(int(token))
        except ValueError:
            raise UsageError(f"--nodes: expected node ids or one of {', '.join(SPLITS)}, "
                             f"got {token[:40]!r}") from None
    if not ids:
        raise UsageError("--nodes: no node ids given")
    return ids


def select_nodes(spec: str | list[int], data: Any) -> Any:
    """The node ids of a parsed ``--nodes`` on this dataset."""
    import torch

    if spec == "all":
        return torch.arange(data.num_nodes)
    if isinstance(spec, str):
        return getattr(data, f"{spec}_mask").nonzero().view(-1)
    bad = [i for i in spec if not 0 <= i < data.num_nodes]
    if bad:
        raise UsageError(f"--nodes: node {bad[0]} is out of range for {data.name} "
                         f"({data.num_nodes} nodes: 0..{data.num_nodes - 1})")
    return torch.tensor(spec, dtype=torch.long)


def predictions_csv(nodes: Any, logits: Any) -> str:
    """One row per node: id, predicted class (argmax of the logits, as in training's metrics)
    and the class probabilities."""
    import torch

    pred, proba = logits.argmax(dim=-1), torch.softmax(logits.double(), dim=-1)
    lines = [",".join(["node", "pred", *(f"prob_{c}" for c in range(proba.size(1)))])]
    for node, label, row in zip(nodes.tolist(), pred.tolist(), proba.tolist(), strict=True):
        lines.append(",".join([str(node), str(label), *(f"{p:.6f}" for p in row)]))
    return "\n".join(lines) + "\n"


def cmd_predict(args: argparse.Namespace) -> int:
    from gnn.checkpoint import load_checkpoint
    from gnn.data import load_dataset
    from gnn.files import atomic_write_text, check_output_file
    from gnn.training import check_config, resolve_device

    spec = parse_nodes(args.nodes)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = check_config(ckpt.config.override({"data.root": args.root, "data.name": args.dataset,
                                             "data.trust_data": args.trust_data,
                                             "train.device": args.device or "cpu"}))
    device = resolve_device(cfg.train.device)
    if args.out:
        check_output_file(args.out, "--out")
    data = load_dataset(cfg.data)
    ckpt.check_data(data, trust_data=cfg.data.trust_data)
    nodes = select_nodes(spec, data)
    text = predictions_csv(nodes, ckpt.predict(data, device)[nodes])
    if args.out:
        atomic_write_text(args.out, text)
        print(f"{len(nodes)} predictions for {data.name} written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:

    from gnn.files import ensure_writable_dir
    from gnn.scale import plan_scale, row_line, sweep
    from gnn.training import resolve_device

    resolve_device(args.device)
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise ConfigError(f"--threads: must be 1..{MAX_THREADS}, got {args.threads}")
    plan = plan_scale(args.sizes, args.models, args.memory_budget, args.epochs,
                      config=args.config, device=args.device)
    out = ensure_writable_dir(args.out, "--out")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    for row in sweep(plan):
        rows.append(row)
        print(row_line(row), flush=True)
        _write_scale_report(rows, out, plan)
    print(f"wrote {args.out}/scale.md, scale.csv, scale.png")
    return 0


def _write_scale_report(rows: list[Any], out: Any, plan: Any) -> None:
    import platform

    import torch

    from gnn.memory import probe_for
    from gnn.plots import scale_png
    from gnn.report import scale_csv, scale_markdown, write_files

    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "memory": probe_for(plan.base.train.device).name}
    write_files(out, {
        "scale.csv": scale_csv(rows).encode(),
        "scale.md": scale_markdown(rows, plan.budget_gib, plan.base, meta).encode(),
        "scale.png": scale_png(rows, plan.budget_gib),
    })


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gnn import bench
    from gnn.config import shipped_configs_dir

    configs_dir = Path(args.configs) if args.configs else shipped_configs_dir()
    if not configs_dir.is_dir():
        raise ConfigError(f"--configs: {configs_dir} is not a folder")
    tuned = _tuning_record(configs_dir)
    if args.memory_budget_mb is not None and not args.memory_budget_mb > 0:
        raise ConfigError(f"--memory-budget-mb: must be > 0, got {args.memory_budget_mb}")
    members, workers = parse_members(args.members), parse_workers(args.workers)
    plan = _bench_plan(args, configs_dir)
    latency = bench.QUICK_LATENCY if args.quick else bench.LatencySettings()
    out = Path(args.out)
    try:
        result = bench.run_bench(plan, out, resume=args.resume, latency=latency,
                                 progress=not args.no_progress, members=members,
                                 workers=_bench_workers(workers, args.devices))
    except (KeyboardInterrupt, Terminated) as exc:
        raise type(exc)(f"the finished runs are in {out}; run the same command with --resume "
                        "to finish") from None
    _write_bench_report(args, result, out, tuned)
    return 0


def _bench_plan(args: argparse.Namespace, configs_dir: Any) -> list[Any]:
    """``gnn bench``'s runs: the models, seeds, splits and devices asked for (``--quick``:
    fewer seeds and epochs unless given)."""
    from gnn import bench
    from gnn.config import config_names

    seeds = args.seeds
    if seeds is None:
        seeds = bench.QUICK_SEEDS if args.quick else bench.DEFAULT_SEEDS
    epochs = args.epochs
    if epochs is None and args.quick:
        epochs = bench.QUICK_EPOCHS
    overrides = {"data.name": args.dataset, "data.root": args.root, "train.epochs": epochs,
                 "data.trust_data": args.trust_data, "train.progress": False,
                 "data.split": args.split, "data.largest_component": args.largest_component}
    names = args.models or config_names(configs_dir)
    return bench.plan_runs(names, seeds, args.devices, configs_dir, overrides, args.splits)


def _write_bench_report(args: argparse.Namespace, result: Any, out: Any,
                        tuned: dict[str, Any] | None) -> None:
    """The bench's report and figures in ``out``, its table and a line of what was done."""
    import shlex

    from gnn import bench
    from gnn.plots import bench_figures
    from gnn.report import (
        bench_documents,
        machine_meta,
        summarize,
        terminal_table,
        tuned_line,
        write_files,
    )

    command = "gnn " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    summaries = summarize(result.rows)
    meta = machine_meta(command, args.devices)
    if tuned:
        meta["tuned"] = tuned_line(tuned)
    paths = write_files(out, {**bench_documents(summaries, meta, args.memory_budget_mb),
                              **bench_figures(summaries)})
    print(terminal_table(summaries))
    notes = [f"{result.ran} runs trained", f"{result.resumed} resumed"]
    if result.dropped:
        notes.append(f"{result.dropped} cut or repeated lines dropped from {bench.JSONL}")
    if result.other_rows:
        notes.append(f"{result.other_rows} rows of other runs kept but not reported")
    written = [out / bench.JSONL, out / bench.CSV, *paths]
    print(f"{'; '.join(notes)}. Wrote {', '.join(map(str, written))}")


def _bench_workers(workers: int, devices: Sequence[str]) -> int:
    """``--workers`` for a bench on ``devices``: CUDA runs keep every run in this process."""
    if workers > 1 and "cuda" in devices:
        warnings.warn(GPU_STAYS.format(device="cuda") + ", so every run trains here",
                      stacklevel=2)
        return 1
    return workers


def cmd_tune(args: argparse.Namespace) -> int:
    """``gnn tune``: one study per model, resumed when the storage has it; each model's
    outputs are written as soon as its study has its budget."""
    import dataclasses
    from pathlib import Path

    from gnn.config import shipped_configs_dir
    from gnn.files import ensure_writable_dir
    from gnn.training import resolve_device

    tune = _import_tune()
    configs_dir = Path(args.configs) if args.configs else shipped_configs_dir()
    overrides = {"data.name": args.dataset, "data.root": args.root, "train.epochs": args.epochs,
                 "train.device": args.device, "data.trust_data": args.trust_data,
                 "train.progress": False, "data.split": args.split,
                 "data.largest_component": args.largest_component}
    jobs = tune.plan_jobs(args.models, configs_dir,
                          Path(args.search) if args.search else tune.search_dir(configs_dir),
                          overrides, args.trials, args.splits, args.seeds, args.seed)
    for job in jobs:
        resolve_device(job.base.train.device)
    out = Path(args.out)
    settings = tune.StorageSettings(args.storage or "", args.heartbeat, args.grace, args.retries)
    settings.check()
    storage = tune.open_storage(settings) if args.storage else None  # before --out is made
    ensure_writable_dir(out, "--out")
    if storage is None:
        settings = dataclasses.replace(settings, url=tune.default_storage(out))
        storage = tune.open_storage(settings)
    finished: list[Any] = []
    for job in jobs:
        finished.append(_tune_one(tune, job, storage, settings))
        _write_tune_report(out, finished, args)
    print(f"wrote {out}/tuning.md, trials.csv, best/ and figures")
    return 0


def _import_tune() -> Any:
    try:
        import optuna  # noqa: F401

        from gnn import tune
    except ImportError as exc:
        raise UsageError(f"gnn tune needs Optuna ({exc.name} is missing): pip install "
                         "'gnn[tune]' (or -e '.[tune]' in a checkout)") from None
    return tune


def _tune_one(tune: Any, job: Any, storage: Any, settings: Any) -> tuple[Any, Any]:
    """Run this process's share of one model's study; (the study, its outcome)."""
    from gnn.data import load_dataset
    from gnn.report import trial_line, tune_done_line

    study = tune.open_study(job, storage)
    data = load_dataset(job.base.data)
    ran = tune.run_worker(study, job, data, settings,
                          on_trial=lambda t: print(trial_line(tune.trial_row(job.name, t)),
                                                   flush=True))
    result = tune.outcome(study, job, settings.url, ran)
    print(tune_done_line(result), flush=True)
    return study, result


def _write_tune_report(out: Any, finished: list[tuple[Any, Any]], args: argparse.Namespace) -> None:
    import shlex

    from gnn.files import atomic_write_many
    from gnn.plots import tuning_figures
    from gnn.report import machine_meta, tuning_documents

    command = "gnn " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    outcomes = [result for _, result in finished]
    files = tuning_documents(outcomes, machine_meta(command, ["cpu"]),
                             _tuning_record(out / "best"))
    for study, result in finished:
        files.update(tuning_figures(study, result.job.name))
    atomic_write_many({out / name: payload for name, payload in files.items()})


def _tuning_record(configs_dir: Any) -> dict[str, Any] | None:
    """What ``gnn tune`` recorded beside the configs it wrote (``tuning.json``), if anything."""
    import json

    path = configs_dir / "tuning.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for entry in record["models"].values():
            entry["trials"], entry["splits"], entry["seeds"]  # noqa: B018 - keys checked
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"--configs: {path} is not a gnn tune record ({type(exc).__name__})"
                          ) from None
    return record


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


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "bench": cmd_bench,
            "scale": cmd_scale, "tune": cmd_tune, "smoke": cmd_smoke}


def _fail(message: str, code: int) -> int:
    print(f"gnn: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _out_of_memory(exc: BaseException) -> bool:
    """A model or batch too large for the machine (torch reports CPU exhaustion as a plain
    RuntimeError): the size came from the user, so it gets one line, not a traceback."""
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) \
        or "can't allocate memory" in str(exc)


def _allocation(exc: BaseException) -> str:
    found = re.search(r"tried to allocate ([\d.]+ ?\w+)", str(exc), re.IGNORECASE)
    return f"tried to allocate {found.group(1)}" if found else exc.__class__.__name__


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: Any = None, line: str | None = None) -> None:
    print(f"gnn: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0 ok, 1 failed, 2 bad input, 130/143 stopped).

    A process that joined a distributed job does not return: it ends with the code through
    :func:`gnn.distributed.exit_rank`, without freeing its process group."""
    with sigterm_raises():  # first: a signal while torch is imported is handled too
        code = _run(argv)
    distributed = sys.modules.get("gnn.distributed")
    if distributed is not None and distributed.joined():
        distributed.exit_rank(code)
    return code


def _run(argv: Sequence[str] | None) -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # libraries' deprecation notes (torch.jit.script in PyG's imports) are not the user's
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.showwarning = _one_line_warning
        try:
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as exc:  # --help; errors raise UsageError instead
                return exc.code if isinstance(exc.code, int) else 0
            args.argv = list(sys.argv[1:] if argv is None else argv)  # for a distributed relaunch
            return COMMANDS[args.command](args)
        except (UsageError, ConfigError, DataError, CheckpointError) as exc:
            return _fail(str(exc), EXIT_BAD_INPUT)
        except TrainingError as exc:  # a distributed launcher passes on its failed rank's code
            return _fail(str(exc), exc.exit_code)
        except DiskFull as exc:
            return _fail(f"{exc.strerror}; no partial file was written", 1)
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            return _fail(f"out of memory ({_allocation(exc)}); reduce model.hidden_channels "
                         "or model.num_layers, or use a larger machine", 1)
        except KeyboardInterrupt as exc:
            return _fail(f"interrupted (SIGINT); {_stop_note(exc)}", EXIT_INTERRUPTED)
        except Terminated as exc:
            return _fail(f"terminated (SIGTERM); {_stop_note(exc)}", EXIT_TERMINATED)


def _stop_note(exc: BaseException) -> str:
    """What a stopped command leaves: a command may say (``gnn bench``: where its finished
    runs are); by default, that no partial file was written."""
    note = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    return note or "no partial file was written"
