"""Training-step speed of the affine-invariant SPDBatchNorm against spd-learn's
SPDBatchNormMean (the same forward; spd-learn holds the batch mean constant in the
gradient, ours differentiates it) and of the log-Euclidean layer.

    python benchmarks/spd_batchnorm_speed.py [--threads 1] [--repeats 30]

Times exactly what training runs (``y = layer(X)``, then ``y.backward(G)``), ours and the
baseline interleaved in one process (``stableeig.bench.timing.paired``); prints and writes
``results/bench_spd_batchnorm.md``: medians in ms and the median per-pair ratio with its
quartiles. Rows against spd-learn are skipped where it does not import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import stableeig as se
from stableeig.bench import spdnet
from stableeig.bench.timing import environment, forward_backward, paired

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((128, 6), (128, 32))


def _spd(N: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    A = torch.randn(N, n, 2 * n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    return (A @ A.mT / (2 * n) + 1e-3 * torch.eye(n, dtype=torch.float64)).to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "| input | dtype | ours | baseline | ours ms | baseline ms | ratio [quartiles] |",
        "|---|---|---|---|---|---|---|",
    ]
    for N, n in SHAPES:
        for dtype in (torch.float32, torch.float64):
            X = _spd(N, n, dtype)
            G = torch.randn(X.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
            ai = se.nn.SPDBatchNorm(n, mean="affine-invariant", dtype=dtype).to(dtype)
            le = se.nn.SPDBatchNorm(n, dtype=dtype).to(dtype)
            pairs = [("affine-invariant", ai, "log-euclidean", le)]
            if spdnet.available("spd_learn-bn") is None:
                peer = spdnet.PeerBatchNorm(n, dtype)
                pairs.insert(0, ("affine-invariant", ai, "spd-learn SPDBatchNormMean", peer))
            for ours_name, ours, base_name, base in pairs:
                result = paired(
                    forward_backward(ours, X, G), forward_backward(base, X, G), args.repeats
                )
                q = result.quartiles
                lines.append(
                    f"| ({N}, {n}, {n}) | {str(dtype)[6:]} | {ours_name} | {base_name} | "
                    f"{result.ours_s * 1e3:.2f} | {result.baseline_s * 1e3:.2f} | "
                    f"{result.ratio:.2f} [{q[0]:.2f}–{q[1]:.2f}] |"
                )
                print(lines[-1], flush=True)
    env = environment()
    text = "\n".join(lines) + (
        f"\n\ntorch {env['torch']}, {env['threads']} thread(s), {env['cpu']}; "
        f"{args.repeats} interleaved pairs, training mode, forward then backward(G)\n"
    )
    (ROOT / "results" / "bench_spd_batchnorm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
