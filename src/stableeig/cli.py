"""The ``stableeig`` command line: demo, train, reproduce, bench."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .bench.config import STEM_CHANNELS

__all__ = ["EXIT_FAILED_RUN", "EXIT_OK", "EXIT_REFUSED", "Refused", "main"]

EXIT_OK = 0  # success
EXIT_FAILED_RUN = 1  # a run that failed numerically (its result recorded)
EXIT_REFUSED = 2  # refused input or an environment fault: one line on stderr, no lock left


class Refused(Exception):
    """Input or environment the command refuses: one line on stderr, exit code 2."""


def _dataset(name: str, data_dir: Optional[str], allow_subset: bool = False) -> Any:
    from .bench.data import MissingDataError, load_dataset

    try:
        return load_dataset(name, data_dir)
    except MissingDataError as error:
        if allow_subset and name == "fashion-mnist":
            print(f"note: {error}\n      Using the 4,000-image subset shipped with stableeig.\n")
            return load_dataset("fashion-mnist-subset")
        raise Refused(str(error)) from None


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .bench import demo
    from .bench.reproduce import plot, render_table, run_cells, table_cells

    torch.set_num_threads(args.threads)
    dataset = _dataset("fashion-mnist", args.data_dir, allow_subset=True)
    print("== 1. The mechanism ==\n")
    print("\n".join(demo.mechanism(dataset)))
    output = Path(args.output)
    results = output / "demo.jsonl"
    if results.exists():
        results.unlink()  # the demo always runs fresh
    print("\n== 2. A short training (computed now) ==\n")
    print(
        f"A small ResNet-18 on Fashion-MNIST, ZCA whitening of all {STEM_CHANNELS} stem channels "
        "(one group),"
    )
    print("one run per rule, preset 'demo': 90 SGD steps, float32 decomposition, the reference")
    print("code's truncation. Failure = NaN/Inf or loss > 10x its first value. 90 steps are too")
    print("few for the baselines to fail reliably; section 3 has the long runs.\n")
    rows = run_cells(
        table_cells("demo", seeds=1), dataset, "demo", results, progress=_progress(args)
    )
    print()
    for row in rows:
        outcome = (
            f"finished, test error {row['test_error']:.2f}%"
            if row["success"]
            else f"failed at step {row['failure_step']} ({row['failure_reason']})"
        )
        print(f"  {row['method']:9s} {outcome}  [{row['seconds']:.0f}s]")
    plot(rows, "demo", output / "demo.png")
    print(f"\n{render_table(rows, 'demo')}\nplot: {output / 'demo.png'}; runs: {results}")
    print("\n== 3. The evidence (read from committed results) ==\n")
    print("\n".join(demo.evidence(Path(args.results))))
    print("\nplot: results/table1_survival.png")
    return 0


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .bench.files import atomic_write, run_directory
    from .bench.training import CheckpointError, RunConfig, config_dict, train_run

    torch.set_num_threads(args.threads)
    config: RunConfig = args.config
    dataset = _dataset(config.dataset, args.data_dir)
    _check_memory(args, config, dataset)
    run_dir = Path(args.run_dir)
    with run_directory(run_dir, config_dict(config), restart=args.restart):
        try:
            result = train_run(config, dataset, run_dir=run_dir, progress=_progress(args))
        except CheckpointError as error:
            raise Refused(str(error)) from None
        summary = dataclasses.asdict(result)
        text = json.dumps(config_dict(config), indent=1) + "\n"
        atomic_write(run_dir / "config.json", lambda out: out.write(text))
        text = json.dumps(summary, indent=1, allow_nan=False) + "\n"  # standard JSON only
        atomic_write(run_dir / "result.json", lambda out: out.write(text))
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0 if result.success else 1


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: a log file gets one line per finished run."""
    return not args.quiet and sys.stderr.isatty()


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from .bench import reproduce as rp
    from .bench.files import write_text

    torch.set_num_threads(args.threads)
    folder = Path(args.results)
    if args.table == "survival":
        text = rp.survival_report(folder)
        print(text)
        return 0
    if args.table == "spdnet":
        from .bench import spdnet

        if args.dataset not in (None, "fashion-mnist"):
            raise Refused(
                f"--dataset {args.dataset}: spdnet runs on Fashion-MNIST's region covariances "
                "only (grayscale 28×28 images)"
            )
        steps = args.steps or 1000
        results = folder / f"spdnet_steps{steps}_fashion-mnist.jsonl"
        if args.render_only:
            rows = _rows_to_render(results)
        else:
            dataset = _dataset("fashion-mnist", args.data_dir)
            methods = tuple(args.methods or rp.table_kind("spdnet").methods)
            _check_budget(args, args.seeds or 3, len(methods))  # one run per method and seed
            rows = spdnet.run(dataset, results, seeds=args.seeds or 3, steps=steps, methods=methods)
        table = rp.render_table(rows, "spdnet")
        write_text(folder / f"{results.stem}.md", table + "\n")
        rp.plot(rows, "spdnet", folder / f"{results.stem}.png")
        print(table)
        return 0
    if args.table == "wide":
        return _reproduce_wide(args, folder)
    preset = rp.PRESETS[args.preset]
    dataset_name = args.dataset or preset["dataset"]
    if args.table == "ablations":
        seeds = rp.ABLATION_SEEDS if args.seeds is None else args.seeds
        _check_budget(args, seeds, len(rp.ablation_cells(1)))
        cells = rp.ablation_cells(seeds)
    else:
        seeds = preset["seeds"] if args.seeds is None else args.seeds
        one_seed = rp.table_cells(args.table, 1, args.group_sizes, args.methods)
        _check_budget(args, seeds, len(one_seed))  # the cells grow linearly in the seeds
        cells = rp.table_cells(
            args.table, seeds, group_sizes=args.group_sizes, methods=args.methods
        )
    # rendering reads the results file only: no data needed
    dataset = None if args.render_only else _dataset(dataset_name, args.data_dir)
    name = dataset_name if dataset is None else dataset.name
    stem = f"{args.table}_{args.preset}_{name}" + (f"_steps{args.steps}" if args.steps else "")
    results = folder / f"{stem}.jsonl"
    overrides: dict[str, Any] = {"dataset": name}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if dataset is None:
        rows = _rows_to_render(results)
    else:
        rows = rp.run_cells(
            cells,
            dataset,
            args.preset,
            results,
            device=args.device,
            progress=_progress(args),
            overrides=overrides,
        )
    # the table and plot present the whole results file, whichever cells this call ran
    if args.table == "ablations":
        table = rp.render_ablations(rows)
        rp.plot_ablations(rows, folder / f"{stem}.png")
    else:
        table = rp.render_table(rows, args.table)
        rp.plot(rows, args.table, folder / f"{stem}.png")
    write_text(folder / f"{stem}.md", table + "\n")
    if args.table == "table1":
        rp.survival_report(folder)
    print(table)
    return 0


def _rows_to_render(results: Path) -> list[dict[str, Any]]:
    """The usable rows of ``results`` for ``--render-only``; refused when there are none."""
    from .bench import reproduce as rp

    if not results.is_file():
        raise Refused(f"{results}: no results file to render")
    rows = rp.unique_rows(rp.read_results(results))
    if not rows:
        raise Refused(f"{results}: nothing to render (no usable rows)")
    return rows


MAX_QUEUED_RUNS = 10_000  # beyond this a reproduce call is refused unless --force
MAX_SEEDS = 10_000  # even with --force: the cell list is built in memory (the paper ran 15)


def _check_budget(args: argparse.Namespace, seeds: int, runs_per_seed: int) -> None:
    """Refuse, before any work or allocation, a queue of runs no machine finishes (the cell
    list was materialized: --seeds 10000000 ran out of memory after a minute). The count is
    the target's own: ``seeds × runs_per_seed``."""
    queued = seeds * runs_per_seed
    if queued > MAX_QUEUED_RUNS and not args.force:
        raise Refused(
            f"--seeds {seeds}: {queued:,} runs would be queued (more than {MAX_QUEUED_RUNS:,}; "
            "pass --force to queue them anyway)"
        )


def _check_memory(args: argparse.Namespace, config: Any, dataset: Any) -> None:
    """Refuse, before any work, a run whose estimated memory exceeds what the machine has
    available (``--force`` to try anyway); the estimate comes from a meta-device pass."""
    from .bench.training import activation_bytes, available_memory

    if config.device != "cpu" or getattr(args, "force", False):
        return
    needed, available = activation_bytes(config, dataset), available_memory()
    if available is not None and needed > available:
        raise Refused(
            f"--batch-size {config.batch_size} --width {config.width}: a training step needs "
            f"about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB are available "
            "(pass --force to try anyway)"
        )


def _reproduce_wide(args: argparse.Namespace, folder: Path) -> int:
    """``reproduce wide``: d = 128 … 1024 whitened in one group (see bench/wide.py)."""
    from .bench import wide
    from .bench.files import write_text

    steps = args.steps or 300
    results = folder / f"wide_steps{steps}_fashion-mnist.jsonl"
    floors_path = folder / "wide_floor.json"
    if args.render_only:
        rows = _rows_to_render(results)
    else:
        dataset = _dataset("fashion-mnist", args.data_dir)
        methods = tuple(args.methods or wide.METHODS)
        _check_budget(args, args.seeds or 5, len(methods) * len(wide.WIDTHS))  # at most
        rows = wide.run(dataset, results, seeds=args.seeds or 5, steps=steps, methods=methods)
    if not floors_path.is_file() and not args.render_only:
        write_text(floors_path, json.dumps(wide.floor_seconds(), indent=1) + "\n")
    floors = wide.read_floors(floors_path)
    table = wide.render(rows, floors)
    write_text(folder / f"{results.stem}.md", table + "\n")
    wide.plot(rows, folder / f"{results.stem}.png", floors)
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


SPEED_PARTS = ("decomposition", "eigh", "layers", "placement", "training", "compiled")
USERS_SECTIONS = ("calls", "embeddings", "spdnet", "fid", "precision", "compiled")  # bench.users


def _bench_report(args: argparse.Namespace, name: str, **options: Any) -> int:
    """A bench whose module has ``measure(quick, ...)`` and ``render(result)``: measured,
    written as ``bench_<name>[_quick].json`` and ``.md``, and printed."""
    import torch

    from .bench import files

    module = importlib.import_module(f".bench.{name}", __package__)
    torch.set_num_threads(args.threads)
    result = module.measure(quick=args.quick, **options)
    stem = f"bench_{name}" + ("_quick" if args.quick else "")
    text = module.render(result)
    files.write_report(Path(args.results), stem, result, text)
    print(text)
    print(f"wrote {args.results}/{stem}.json, .md")
    return 0


def _bench_svd(args: argparse.Namespace) -> int:
    return _bench_report(args, "svd", repeats=args.repeats)


def _bench_eigsh(args: argparse.Namespace) -> int:
    return _bench_report(args, "eigsh")


def _bench_small(args: argparse.Namespace) -> int:
    return _bench_report(args, "small")


def _bench_spectral(args: argparse.Namespace) -> int:
    import torch

    from .bench import spectral

    torch.set_num_threads(args.threads)
    data = spectral.run(Path(args.results), quick=args.quick)
    print(spectral.render_all(data))
    print(f"wrote {args.results}/bench_spectral.json, .md, .png")
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    import torch

    from .bench import speed, speed_report, timing

    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    parts = set(args.only or SPEED_PARTS)
    if parts == {"placement"} and not args.device.startswith("cuda"):
        raise Refused("--only placement: measures host vs device placement; needs --device cuda")
    result: dict[str, Any] = {
        "environment": timing.environment(),
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
        result["pi_over_power"] = speed.pi_over_power(shape, repeats, args.device)
    if "placement" in parts:
        result["placement"] = speed.placement_speed(args.device, repeats=repeats)
    if "training" in parts:
        result["training"] = speed.training_speed(
            batch=16 if args.quick else 128, repeats=repeats, device=args.device
        )
    if "compiled" in parts:
        result["compiled"] = speed.compiled_training_speed(
            batch=16 if args.quick else 128, repeats=repeats, device=args.device
        )
    stem = (
        "bench_speed"
        + ("_quick" if args.quick else "")
        + ("_cuda" if args.device.startswith("cuda") else "")
    )
    speed_report.write(result, Path(args.results), stem)
    print(speed_report.speed_markdown(result))
    print(f"wrote {args.results}/{stem}.json, .md, _summary.md, .png")
    return 0


def _bench_users(args: argparse.Namespace) -> int:
    import torch

    from .bench import users

    torch.set_num_threads(args.threads)
    sections = tuple(args.only or users.SECTIONS)
    result = users.measure(sections, args.runs, 3 if args.quick else args.repeats, args.quick)
    stem = "bench_users" + ("_quick" if args.quick else "")
    users.write(result, Path(args.results), stem)
    print(users.render(result))
    print(f"wrote {args.results}/{stem}.json, .md, .png")
    return 0


def _at_least(least: int, most: int = 10**7) -> Any:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):  # int() also reads "٦٤" as 64
            raise argparse.ArgumentTypeError(f"expected an integer in ASCII digits (got {text!r})")
        value = int(text)
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(
                f"expected an integer in [{least}, {most}] (got {value})"
            )
        return value

    return parse


def _ascii_number(kind: type) -> Any:
    """``int`` or ``float`` of ASCII text only (both also read "١٠" or "１０" as 10)."""

    def parse(text: str) -> Any:
        if not text.isascii():
            raise argparse.ArgumentTypeError(f"expected an ASCII {kind.__name__} (got {text!r})")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} (got {text!r})") from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _comma_list(choices: Optional[Sequence[str]] = None, kind: Any = str) -> Any:
    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list (got nothing)")
        if choices is not None:
            bad = [item for item in items if item not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"expected items from {', '.join(choices)} (got {', '.join(bad)})"
                )
        try:
            return [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}s (got {text!r})") from None

    return parse


def _group_size(text: str) -> int:
    value = _at_least(1)(text)
    if STEM_CHANNELS % value:
        raise argparse.ArgumentTypeError(f"expected a divisor of {STEM_CHANNELS} (got {value})")
    return value


def _device(text: str) -> str:
    from .bench.training import check_device
    from .exceptions import ArgumentError

    try:
        return check_device("device", text)
    except ArgumentError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _existing_dir(text: str) -> str:
    if not text.strip() or not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected an existing directory (got {text!r})")
    return text


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`RunConfig` field: type, default, help and choices from it."""
    import dataclasses
    import typing

    from .bench.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    for field in dataclasses.fields(RunConfig):
        if "help" not in field.metadata:
            continue
        kind = next((t for t in typing.get_args(hints[field.name]) if t is not type(None)), None)
        kind = kind or hints[field.name]
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=_ascii_number(kind) if kind in (int, float) else kind,
            default=field.default,
            choices=field.metadata["choices"],
            help=field.metadata["help"]
            + ("" if "default:" in field.metadata["help"] else " (default: %(default)s)"),
        )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .bench.config import DATASETS, RULE_NAMES

    parser = argparse.ArgumentParser(prog="stableeig", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stableeig {__version__}")
    commands = parser.add_subparsers(dest="command")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--threads", type=_at_least(1, 1024), default=2, help="torch CPU threads (default: 2)"
        )
        sub.add_argument(
            "--data-dir", type=_existing_dir, default=None, help="searched first for data sets"
        )
        sub.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = commands.add_parser(
        "demo", help="the phenomenon: gradients on a real stem covariance, then short training"
    )
    common(demo)
    demo.add_argument("--output", default="runs/demo", help="where the plot and runs go")
    demo.add_argument(
        "--results", default="results", help="committed results read in part 3 (default: results)"
    )
    demo.set_defaults(run=_demo)

    train = commands.add_parser(
        "train",
        help="one training run (metrics JSONL, checkpoint, resume)",
    )
    common(train)
    train.add_argument(
        "--run-dir",
        required=True,
        help="metrics.jsonl, checkpoint.pt (resumed if the configuration matches), result.json",
    )
    train.add_argument(
        "--restart", action="store_true", help="delete the run directory's run and start over"
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="run even if the estimated memory of a step exceeds what is available",
    )
    _add_config_options(train)
    train.set_defaults(run=_train)

    reproduce = commands.add_parser(
        "reproduce",
        help="the paper's tables and our extensions: table1, table2, covpool, spdnet, wide, "
        "ablations, survival",
    )
    common(reproduce)
    reproduce.add_argument(
        "table",
        choices=("table1", "table2", "covpool", "spdnet", "wide", "ablations", "survival"),
        help="table1 (ZCA), table2 (PCA), covpool (covariance-pooling heads), spdnet (an "
        "SPDNet on region covariances), wide (an MLP whose d = 128…1024 hidden channels are "
        "whitened in one group; --seeds, --steps, --methods), ablations (PCA "
        "energy / components / iterations and the ε ablation), or survival (plot from every "
        "committed table1 row; runs nothing)",
    )
    reproduce.add_argument(
        "--preset",
        choices=("quick", "long", "paper"),
        default="quick",
        help="run length and data: quick (Fashion-MNIST, 120 steps, 3 seeds; minutes on 2 "
        "cores), long (1,000 steps, 3 seeds; the baselines' failures show), paper (CIFAR-10, "
        "350 epochs of a full-width ResNet-18, 15 seeds; a GPU's work) (default: quick)",
    )
    reproduce.add_argument(
        "--dataset", default=None, choices=DATASETS, help="override the preset's data set"
    )
    reproduce.add_argument(
        "--seeds",
        type=_at_least(1, MAX_SEEDS),
        default=None,
        help=f"seeds per cell, at most {MAX_SEEDS:,} (default: the preset's)",
    )
    reproduce.add_argument(
        "--group-sizes",
        type=_comma_list(kind=_group_size),
        default=None,
        help=f"comma list of divisors of {STEM_CHANNELS} (default: 4,8,16,32,64)",
    )
    reproduce.add_argument(
        "--steps", type=_at_least(1), default=None, help="override the preset's steps"
    )
    reproduce.add_argument(
        "--methods",
        type=_comma_list(
            choices=(
                *RULE_NAMES,
                "average",
                "batchnorm",
                "newton-schulz",
                "spdbn-le",
                "spdbn-ai",
                "geoopt",
                "spd_learn",
                "spd_learn-bn",
            )
        ),
        default=None,
        help="comma list of gradient rules (covpool also: average, newton-schulz; spdnet "
        "also spdbn-le, spdbn-ai (loewner + SPDBatchNorm) and the peers geoopt, spd_learn, "
        "spd_learn-bn; default: the table's)",
    )
    reproduce.add_argument(
        "--device", type=_device, default="cpu", help="cpu or cuda (default: cpu)"
    )
    reproduce.add_argument(
        "--force",
        action="store_true",
        help=f"queue more than {10_000:,} runs (refused otherwise, with the count)",
    )
    reproduce.add_argument(
        "--render-only",
        action="store_true",
        help="write the table and plot from the rows already in the results file; run nothing",
    )
    reproduce.add_argument(
        "--results", default="results", help="folder of the JSONL/MD/PNG outputs (default: results)"
    )
    reproduce.set_defaults(run=_reproduce)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)

    def bench_command(name: str, help: str, run: Any, quick: str) -> argparse.ArgumentParser:
        """A ``bench`` subcommand: the common options, ``--quick``, ``--results``."""
        sub = bench_commands.add_parser(name, help=help)
        common(sub)
        sub.add_argument("--quick", action="store_true", help=quick)
        sub.add_argument("--results", default="results", help="output folder (default: results)")
        sub.set_defaults(run=run)
        return sub

    def timed_options(
        sub: argparse.ArgumentParser, repeats: str, parts: Sequence[str], everything: str
    ) -> None:
        """A timing subcommand's ``--repeats`` (default 10) and ``--only`` (of ``parts``)."""
        sub.add_argument(
            "--repeats", type=_at_least(1), default=10, help=f"{repeats} (default: 10)"
        )
        sub.add_argument(
            "--only",
            type=_comma_list(choices=parts),
            default=None,
            help=f"comma list of {','.join(parts)} (default: {everything})",
        )

    bench_command(
        "gradients", "gradient fidelity sweep (JSON, MD, plot)", _bench_gradients,
        "n = 4, 16 and one draw (smoke)",
    )  # fmt: skip
    bench_command(
        "spectral", "spectral-function gradient accuracy vs mpmath and peers (JSON, MD, plot)",
        _bench_spectral, "three gaps, one scale (smoke)",
    )  # fmt: skip
    speed_parser = bench_command(
        "speed", "speed vs torch eigh, BatchNorm (JSON, MD, plot)", _bench_speed,
        "tiny sizes, 3 repeats (smoke)",
    )  # fmt: skip
    timed_options(speed_parser, "timed repeats", SPEED_PARTS, "all; placement needs a GPU")
    speed_parser.add_argument(
        "--device", type=_device, default="cpu", help="cpu or cuda (default: cpu)"
    )
    svd_parser = bench_command(
        "svd", "rotations and polar factors vs torch.linalg.svd autograd and RoMa: gradient "
        "accuracy against mpmath, speed (JSON, MD)", _bench_svd, "fewer points and sizes (smoke)",
    )  # fmt: skip
    svd_parser.add_argument(
        "--repeats", type=_at_least(1), default=7, help="timed repeats (default: 7)"
    )
    bench_command(
        "eigsh", "partial eigenproblems of sparse graph Laplacians vs scipy eigsh, torch.lobpcg "
        "and dense eigh autograd: accuracy, speed (JSON, MD)", _bench_eigsh,
        "~400 and ~10⁴ nodes (smoke)",
    )  # fmt: skip
    bench_command(
        "small", "many small matrices: logm, normals and rotations on B × 2×2 … 4×4, 22×22 "
        "vs torch.linalg autograd, and the Jacobi/LAPACK crossover (JSON, MD)", _bench_small,
        "small batches (smoke)",
    )  # fmt: skip
    users_parser = bench_command(
        "users",
        "the shapes users run first vs the code they write today: small calls, (N, C) "
        "whitening, SPDNet, FID, float32 vs float64 compute, compiled models (JSON, MD, plot)",
        _bench_users, "tiny sizes (smoke)",
    )  # fmt: skip
    users_parser.add_argument(
        "--runs", type=_at_least(1, 10), default=2, help="runs of every row (default: 2)"
    )
    timed_options(users_parser, "timed pairs per row", USERS_SECTIONS, "all")
    return parser


EXTRAS = {  # what each command imports beyond torch, checked before any work
    "demo": ("matplotlib", "tqdm"),
    "reproduce": ("matplotlib", "tqdm"),
    "train": ("tqdm",),
    "bench": ("matplotlib", "tqdm", "mpmath", "scipy"),
}


def _missing_extras(command: str) -> list[str]:
    """The modules ``command`` needs that cannot be imported here."""
    missing = []
    for name in EXTRAS.get(command, ()):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _check_output_folder(args: argparse.Namespace) -> None:
    """A ``bench`` results folder that cannot be created fails before the measurements."""
    from .bench.files import make_dirs

    folder = Path(args.results)
    if folder.exists() and not folder.is_dir():
        raise Refused(f"--results {folder}: expected a folder (got a file)")
    make_dirs(folder, "results folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Refused(f"--results {folder}: expected a writable folder")


def _one_line(error: BaseException) -> str:
    from .bench.files import FileFault

    if isinstance(error, FileFault):
        return str(error.strerror)
    out_of_memory = isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )  # torch's allocator under an address-space limit (ulimit -v) raises RuntimeError
    if out_of_memory:
        return "out of memory (reduce --batch-size, --width or the number of runs)"
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
        where = error.filename or "a file the command needed"
        return f"{where}: {error.strerror or type(error).__name__}"
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ["MPLBACKEND"] = "Agg"  # plots go to files only, whatever the environment says
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    missing = _missing_extras(args.command)
    if missing:
        print(
            f"stableeig {args.command}: error: needs {', '.join(missing)}, which are not "
            "installed; install the harness with: pip install 'stableeig[bench]'",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if args.command == "train":  # every field validated before any work
        import dataclasses

        from .bench.training import RunConfig
        from .exceptions import StableEigError

        names = {f.name for f in dataclasses.fields(RunConfig) if "help" in f.metadata}
        try:
            args.config = RunConfig(**{name: getattr(args, name) for name in names})
        except StableEigError as error:
            parser.error(f"train: {error}")
    from .bench.data import ChecksumError
    from .exceptions import StableEigError

    try:
        if args.command == "bench":
            _check_output_folder(args)
        return int(args.run(args))
    except (OSError, StableEigError, Refused, ChecksumError, MemoryError) as error:
        # a file fault, a refused input, corrupt data, or a late argument check
        print(f"stableeig {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as error:  # anything else: still one line and exit 2, never 1
        if os.environ.get("STABLEEIG_TRACEBACK"):
            raise
        message = _one_line(error)
        if not message.startswith("out of memory"):
            message = f"{type(error).__name__}: {message} (STABLEEIG_TRACEBACK=1 shows where)"
        print(f"stableeig {args.command}: error: {message}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
