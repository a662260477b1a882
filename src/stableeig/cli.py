"""The ``stableeig`` command line: demo, train, reproduce, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main"]


def _dataset(name: str, data_dir: Optional[str], allow_subset: bool = False) -> Any:
    from .bench.data import MissingDataError, load_dataset

    try:
        return load_dataset(name, data_dir)
    except MissingDataError as error:
        if allow_subset and name == "fashion-mnist":
            print(f"note: {error}\n      Using the 4,000-image subset shipped with stableeig.\n")
            return load_dataset("fashion-mnist-subset")
        raise SystemExit(f"error: {error}") from None


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .bench.reproduce import plot, render_table, run_cells, table_cells

    torch.set_num_threads(args.threads)
    dataset = _dataset("fashion-mnist", args.data_dir, allow_subset=True)
    output = Path(args.output)
    results = output / "demo.jsonl"
    if results.exists():
        results.unlink()  # the demo always runs fresh
    print(
        "Training a small ResNet-18 on Fashion-MNIST with ZCA whitening (group size 64) after the"
    )
    print("stem convolution, one run per gradient method (preset 'demo': 90 SGD steps, float32")
    print("decomposition as in the paper). Failure = NaN/Inf or loss > 10x its initial value.\n")
    rows = run_cells(
        table_cells("demo", seeds=1), dataset, "demo", results, progress=not args.quiet
    )
    print()
    for row in rows:
        outcome = (
            f"finished, test error {row['test_error']:.2f}%"
            if row["success"]
            else f"failed at step {row['failure_step']} ({row['failure_reason']})"
        )
        print(f"  {row['method']:9s} {outcome}  [{row['seconds']:.0f}s]")
    print("\n" + render_table(rows, "demo"))
    plot(rows, "demo", output / "demo.png")
    print(f"\nplot: {output / 'demo.png'}; runs: {results}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .bench.training import RunConfig, config_dict, train_run

    torch.set_num_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    config = RunConfig(**overrides)
    dataset = _dataset(config.dataset, args.data_dir)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_dict(config), indent=1) + "\n")
    result = train_run(config, dataset, run_dir=run_dir, progress=not args.quiet)
    summary = dataclasses.asdict(result)
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0 if result.success else 1


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from .bench.reproduce import GROUP_SIZES, PRESETS, plot, render_table, run_cells, table_cells

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    dataset_name = args.dataset or preset["dataset"]
    dataset = _dataset(dataset_name, args.data_dir)
    seeds = args.seeds or preset["seeds"]
    sizes = [int(d) for d in args.group_sizes.split(",")] if args.group_sizes else None
    methods = args.methods.split(",") if args.methods else None
    cells = table_cells(args.table, seeds, group_sizes=sizes or GROUP_SIZES, methods=methods)
    stem = f"{args.table}_{args.preset}_{dataset.name}" + (
        f"_steps{args.steps}" if args.steps else ""
    )
    results = Path(args.results) / f"{stem}.jsonl"
    overrides: dict[str, Any] = {"dataset": dataset.name}
    if args.steps:
        overrides["steps"] = args.steps
    rows = run_cells(
        cells,
        dataset,
        args.preset,
        results,
        device=args.device,
        progress=not args.quiet,
        overrides=overrides,
    )
    wanted = {c.key() for c in cells}
    rows = [r for r in rows if (r["table"], r["method"], r["group_size"], r["seed"]) in wanted]
    table = render_table(rows, args.table)
    (Path(args.results) / f"{stem}.md").write_text(table + "\n")
    plot(rows, args.table, Path(args.results) / f"{stem}.png")
    print(table)
    return 0


def _bench_gradients(args: argparse.Namespace) -> int:
    import torch

    from .bench import gradients

    torch.set_num_threads(args.threads)
    sizes = (4, 16) if args.quick else (4, 16, 64, 256)
    rows = gradients.gradient_sweep(sizes=sizes, draws=1 if args.quick else 3)
    gradients.write(rows, Path(args.results), n=16 if args.quick else 64)
    print(gradients.summary_markdown(rows, n=16 if args.quick else 64))
    print(f"wrote {args.results}/bench_gradients.json, .md, .png")
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    import torch

    from .bench import speed

    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    parts = (
        set(args.only.split(",")) if args.only else {"decomposition", "eigh", "layers", "training"}
    )
    result: dict[str, Any] = {
        "environment": speed.environment(),
        "device": args.device,
        "repeats": repeats,
        "quick": args.quick,
    }
    if "decomposition" in parts:
        sizes = (4, 16) if args.quick else (4, 16, 64, 128, 256)
        result["decomposition"] = speed.decomposition_speed(
            sizes, repeats=repeats, device=args.device
        )
    if "eigh" in parts:
        result["eigh_backward"] = speed.eigh_backward_speed(
            repeats=max(repeats, 5), device=args.device
        )
    if "layers" in parts:
        shape: tuple[int, ...] = (8, 64, 8, 8) if args.quick else (128, 64, 32, 32)
        group_sizes: tuple[int, ...] = (16, 64) if args.quick else (4, 16, 32, 64)
        result["layers"] = speed.layer_speed(
            shape, group_sizes, repeats=repeats, device=args.device
        )
    if "training" in parts:
        result["training"] = speed.training_speed(
            batch=16 if args.quick else 128, repeats=repeats, device=args.device
        )
    stem = (
        "bench_speed"
        + ("_quick" if args.quick else "")
        + ("_cuda" if args.device.startswith("cuda") else "")
    )
    speed.write(result, Path(args.results), stem)
    print(speed.speed_markdown(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stableeig", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
        sub.add_argument("--data-dir", default=None, help="searched first for data sets")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = commands.add_parser("demo", help="train with analytic / power / loewner ZCA (d=64)")
    common(demo)
    demo.add_argument("--output", default="runs/demo", help="where the plot and runs go")
    demo.set_defaults(run=_demo)

    train = commands.add_parser(
        "train", help="one training run (metrics JSONL, checkpoint, resume)"
    )
    common(train)
    train.add_argument(
        "--run-dir", required=True, help="metrics.jsonl, checkpoint.pt (resumed), result.json"
    )
    for name, kind in (
        ("dataset", str),
        ("depth", str),
        ("width", float),
        ("norm", str),
        ("method", str),
        ("group-size", int),
        ("compute-dtype", str),
        ("steps", int),
        ("steps-per-epoch", int),
        ("batch-size", int),
        ("lr", float),
        ("train-subset", int),
        ("test-subset", int),
        ("seed", int),
        ("device", str),
    ):
        train.add_argument(f"--{name}", type=kind, default=None)
    train.set_defaults(run=_train)

    reproduce = commands.add_parser("reproduce", help="the paper's Table 1 (ZCA) or Table 2 (PCA)")
    common(reproduce)
    reproduce.add_argument("table", choices=("table1", "table2"))
    reproduce.add_argument("--preset", choices=("quick", "long", "paper"), default="quick")
    reproduce.add_argument("--dataset", default=None, help="override the preset's data set")
    reproduce.add_argument("--seeds", type=int, default=None, help="seeds per cell (preset's)")
    reproduce.add_argument("--group-sizes", default=None, help="comma list, e.g. 4,8,16,32,64,128")
    reproduce.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    reproduce.add_argument("--methods", default=None, help="comma list (default: the table's)")
    reproduce.add_argument("--device", default="cpu", help="cpu or cuda")
    reproduce.add_argument(
        "--results", default="results", help="folder of the JSONL/MD/PNG outputs"
    )
    reproduce.set_defaults(run=_reproduce)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    gradients = bench_commands.add_parser(
        "gradients", help="gradient fidelity sweep (JSON, MD, plot)"
    )
    common(gradients)
    gradients.add_argument("--quick", action="store_true", help="n = 4, 16 and one draw (smoke)")
    gradients.add_argument("--results", default="results")
    gradients.set_defaults(run=_bench_gradients)
    speed_parser = bench_commands.add_parser(
        "speed", help="speed vs torch eigh, BatchNorm (JSON, MD, plot)"
    )
    common(speed_parser)
    speed_parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats (smoke)")
    speed_parser.add_argument("--repeats", type=int, default=10)
    speed_parser.add_argument(
        "--only", default=None, help="comma list of decomposition,eigh,layers,training"
    )
    speed_parser.add_argument("--device", default="cpu")
    speed_parser.add_argument("--results", default="results")
    speed_parser.set_defaults(run=_bench_speed)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
