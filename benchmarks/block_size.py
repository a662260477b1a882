"""Choose the CPU block size of the streamed layer passes: train fwd+bwd / BatchNorm2d.

Times ``ZCAWhitening2d`` (loewner) on (128, 64, 32, 32) float32, forward then
``y.backward(G)``, interleaved with ``nn.BatchNorm2d``, for blocks of 2^17 … 2^23 elements
(the whole batch is 2^23), and prints the median per-pair ratio for each group size.
``stableeig.nn.statistics.CPU_BLOCK_ELEMENTS`` is the best of these on the development
machine. Run: ``python benchmarks/block_size.py`` on a quiet machine.
"""

from __future__ import annotations

import torch
from torch import nn

from stableeig.bench.timing import forward_backward, paired
from stableeig.nn import ZCAWhitening2d, statistics


def main() -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 64, 32, 32, generator=g)
    upstream = torch.randn(128, 64, 32, 32, generator=g)
    batchnorm = nn.BatchNorm2d(64)
    baseline = forward_backward(batchnorm, x, upstream)
    chosen = statistics.CPU_BLOCK_ELEMENTS
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; chosen 2^"
        f"{chosen.bit_length() - 1}"
    )
    for group_size in (16, 64):
        layer = ZCAWhitening2d(64, group_size=group_size, method="loewner")
        ours = forward_backward(layer, x, upstream)
        ratios = []
        for power in range(17, 24):
            statistics.CPU_BLOCK_ELEMENTS = 1 << power
            ratios.append(f"2^{power}: {paired(ours, baseline, repeats=15).ratio:.2f}x")
        statistics.CPU_BLOCK_ELEMENTS = chosen
        print(f"d={group_size}: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
