"""The ``stableeig`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .bench.gradient_report import format_report, gradient_report

    torch.set_num_threads(args.threads)
    print("Gradient of <G, inv_sqrtm(A)> for float32 A: relative error against the float64")
    print("exact (Loewner) gradient of the same input; NaN/Inf = the gradient is not finite.\n")
    print(format_report(gradient_report()))
    print("\nanalytic = torch.linalg.eigh's rule; power = the paper's SVD-PI (K=19);")
    print("taylor = degree-9 series; clip = gap clamped at 1e-2; loewner = exact (default).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stableeig", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="gradient stability report on adversarial matrices")
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    demo.set_defaults(run=_demo)
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
