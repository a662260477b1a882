"""Fixed cost of one small call (issue 29): a 3×3 ``logm`` forward + backward against
``torch.linalg.eigh`` autograd, interleaved, medians of 400 rounds, 1 thread; with two
floors for comparison, then a cProfile of ours (where the time goes).

The floors are the least a Python ``autograd.Function`` can do for the same result: one
Function with the same three host checks as ours (finite and symmetric input before LAPACK
sees it, positive eigenvalues, a finite backward) and the same cancellation-free Loewner
matrix, and the same without the checks. They bound what restructuring our Python could
reach without fused kernels.

    python benchmarks/call_overhead.py > results/call_overhead.txt
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from typing import Any, Callable

import torch

import stableeig as se
from stableeig._validation import max_abs
from stableeig.bench.timing import environment
from stableeig.matrix_functions import _log_loewner

TOLERANCE = torch.finfo(torch.float64).eps ** 0.5  # ours: sqrt(eps) relative symmetry
LARGEST = torch.finfo(torch.float64).max


class _Floor(torch.autograd.Function):
    """``logm`` in one Function: symmetrize, ``eigh``, ``log``, Loewner backward."""

    checked = True

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if _Floor.checked:  # NaN and Inf fail the comparison; Inf is clamped to fail too
            asymmetry = max_abs(A - A.mT)
            if not bool(asymmetry <= TOLERANCE * max_abs(A).clamp(max=LARGEST)):
                raise ValueError("expected finite symmetric input")
        w, V = torch.linalg.eigh((A + A.mT) * 0.5)
        if _Floor.checked and not bool(w.amin() > 0):
            raise ValueError("expected positive eigenvalues")
        ctx.save_for_backward(w, V)
        return (V * w.log().unsqueeze(-2)) @ V.mT

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        w, V = ctx.saved_tensors
        inner = _log_loewner(w) * (V.mT @ grad @ V)
        if _Floor.checked and not bool(torch.isfinite(inner.sum())):
            raise ValueError("expected a finite gradient")
        grad_A = V @ inner @ V.mT
        return (grad_A + grad_A.mT) * 0.5


def _floor(checked: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def function(A: torch.Tensor) -> torch.Tensor:
        _Floor.checked = checked
        return _Floor.apply(A)  # type: ignore[no-any-return]

    return function


def _torch_logm(A: torch.Tensor) -> torch.Tensor:
    w, V = torch.linalg.eigh(A)
    return (V * w.log().unsqueeze(-2)) @ V.mT


def main() -> None:
    torch.set_num_threads(1)
    A0 = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A0 = A0 @ A0.T + torch.eye(3, dtype=torch.float64)
    G = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "stableeig": se.logm,
        "floor, same checks": _floor(True),
        "floor, no checks": _floor(False),
        "torch.linalg.eigh autograd": _torch_logm,
    }
    gradients = {}
    for name, function in functions.items():  # all four compute the same gradient
        A = A0.clone().requires_grad_()
        function(A).backward(G)
        gradients[name] = A.grad
    for gradient in gradients.values():
        torch.testing.assert_close(gradient, gradients["stableeig"], rtol=1e-12, atol=1e-12)
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for round_ in range(450):
        for name, function in functions.items():
            A = A0.clone().requires_grad_()
            start = time.perf_counter()
            function(A).backward(G)
            if round_ >= 50:  # warm-up
                seconds[name].append(time.perf_counter() - start)
    baseline = seconds["torch.linalg.eigh autograd"]
    print(environment())
    print("3x3 logm fwd+bwd, float64, 1 thread: median us, median ratio to torch [quartiles]")
    for name, times in seconds.items():
        ratios = [ours / theirs for ours, theirs in zip(times, baseline)]
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        print(f"  {name:28s} {statistics.median(times) * 1e6:6.0f} us  "
              f"{median:.2f}x [{q1:.2f}-{q3:.2f}]")  # fmt: skip
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        se.logm(A0.clone().requires_grad_()).backward(G)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
