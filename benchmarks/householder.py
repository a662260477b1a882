"""BiMap's Householder map: the closed-form product (``stableeig.nn.orthogonal``) against
``torch.linalg.householder_product``, forward + backward of ``W`` from its parameters,
interleaved, medians of per-pair ratios (1 thread).

    python benchmarks/householder.py > results/householder.md
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from stableeig.bench.timing import environment
from stableeig.nn.orthogonal import householder_columns


def step(product: Callable[..., torch.Tensor], X: torch.Tensor, G: torch.Tensor) -> float:
    """Seconds of one forward + backward of ``W`` from the parameters ``X``."""
    start = time.perf_counter()
    leaf = X.clone().requires_grad_()
    A = leaf.tril(-1)
    product(A, 2.0 / (1.0 + (A * A).sum(dim=-2))).backward(G)
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    print(environment())
    print("| shape (channels, in, out) | dtype | closed form / householder_product [quartiles] |")
    print("|---|---|---|")
    products = (householder_columns, torch.linalg.householder_product)
    for shape in [(1, 22, 16), (8, 22, 16), (1, 64, 32), (1, 256, 128)]:
        for dtype in (torch.float32, torch.float64):
            X = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
            G = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
            for product in products:
                step(product, X, G)
            ratios = []
            for _ in range(60):
                ours, theirs = (step(product, X, G) for product in products)
                ratios.append(ours / theirs)
            q1, median, q3 = statistics.quantiles(ratios, n=4)
            print(f"| {shape} | {str(dtype)[6:]} | {median:.2f}× [{q1:.2f}–{q3:.2f}] |")


if __name__ == "__main__":
    main()
