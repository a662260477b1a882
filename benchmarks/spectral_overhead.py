"""Where a spectral function's time goes beyond ``torch.linalg.eigh`` autograd: ``logm``
forward + ``backward(G)`` on 128 float32 SPD 256×256 matrices (one thread, the setting of
``stableeig bench spectral --threads 1``), median of 5 interleaved pairs, ours against eigh
autograd in float64, and the same with ``se.host_checks(False)``; then the fixed cost per
call on a 2 × 4×4 batch (median of 5 × 300 calls), where the arithmetic is negligible.

    python benchmarks/spectral_overhead.py
"""

from __future__ import annotations

import statistics
import time

import torch

import stableeig as se
from stableeig.bench.timing import forward_backward, paired


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 256, 512, generator=g)
    A = X @ X.mT / 512 + 0.1 * torch.eye(256)
    G = torch.randn(A.shape, generator=g)

    def eigh_logm(M: torch.Tensor) -> torch.Tensor:
        w, V = torch.linalg.eigh(M.double())
        return ((V * w.log().unsqueeze(-2)) @ V.mT).float()

    base = forward_backward(eigh_logm, A, G)
    timed = paired(forward_backward(se.logm, A, G), base, 5)
    print(f"logm vs eigh autograd (float64): {timed.ratio:.2f}x {timed.quartiles}, "
          f"{timed.ours_s * 1e3:.0f} ms vs {timed.baseline_s * 1e3:.0f} ms")  # fmt: skip
    with se.host_checks(False):
        timed = paired(forward_backward(se.logm, A, G), base, 5)
    print(f"  with host_checks(False): {timed.ratio:.2f}x {timed.quartiles}")
    tiny = torch.eye(4).repeat(2, 1, 1) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    upstream = torch.randn(tiny.shape, generator=g)
    for name, function in (("logm", se.logm), ("eigh autograd logm", eigh_logm)):
        step = forward_backward(function, tiny, upstream)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(300):
                step()
            times.append((time.perf_counter() - start) / 300 * 1e6)
        print(f"{name} on 2 x 4x4: {statistics.median(times):.0f} us per call")


if __name__ == "__main__":
    main()
