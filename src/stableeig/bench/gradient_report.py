"""The gradient report: per method, is the gradient of ``inv_sqrtm`` finite, and how exact?

For each named float32 matrix, every backward rule's gradient of ``<G, inv_sqrtm(A)>`` is
compared with the float64 Loewner gradient of the same (float32-rounded) input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..spectral import SPECTRAL_BACKWARDS, inv_sqrtm
from .matrices import clustered, stem_covariance

__all__ = ["GradientRow", "default_matrices", "format_report", "gradient_report"]


@dataclass(frozen=True)
class GradientRow:
    matrix: str
    method: str
    finite: bool
    relative_error: float  # NaN when the gradient is not finite


def default_matrices() -> dict[str, torch.Tensor]:
    return {
        "identity 64": torch.eye(64, dtype=torch.float64),
        "stem conv 1->64 (rank 9) + 1e-4 I": stem_covariance(64, in_channels=1),
        "stem conv 3->64 (rank 27) + 1e-4 I": stem_covariance(64, in_channels=3),
        "clustered 1 + k*1e-7": clustered(64, 1e-7),
    }


def _gradient(A: torch.Tensor, upstream: torch.Tensor, method: str) -> torch.Tensor:
    A = A.detach().clone().requires_grad_(True)
    (inv_sqrtm(A, method) * upstream.to(A.dtype)).sum().backward()
    assert A.grad is not None
    return A.grad.double()


def gradient_report(
    matrices: dict[str, torch.Tensor] | None = None, seed: int = 0
) -> list[GradientRow]:
    rows = []
    for name, matrix in (matrices or default_matrices()).items():
        A32 = matrix.float()
        n = A32.shape[-1]
        upstream = torch.randn(
            n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        truth = _gradient(A32.double(), upstream, "loewner")
        for method in SPECTRAL_BACKWARDS:
            grad = _gradient(A32, upstream, method)
            finite = bool(torch.isfinite(grad).all())
            error = float((grad - truth).norm() / truth.norm()) if finite else math.nan
            rows.append(GradientRow(name, method, finite, error))
    return rows


def format_report(rows: list[GradientRow]) -> str:
    methods = list(dict.fromkeys(row.method for row in rows))
    lines = [
        "| matrix (float32) | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for matrix in dict.fromkeys(row.matrix for row in rows):
        cells = []
        for method in methods:
            row = next(r for r in rows if r.matrix == matrix and r.method == method)
            cells.append(f"{row.relative_error:.1e}" if row.finite else "NaN/Inf")
        lines.append(f"| {matrix} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
