"""Measure every deliberate difference between stableeig and the authors' reference code.

Each row of the README's fidelity table comes from here. The reference algorithms are the
transcriptions in ``tests/reference.py`` (the arbiter the test suite uses). Writes
``results/fidelity.json`` and ``results/fidelity.md``. Run: ``python benchmarks/fidelity.py``
(about 20 s on 2 CPU cores).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import reference  # noqa: E402
import stableeig as se  # noqa: E402
from stableeig.bench.matrices import stem_covariance  # noqa: E402
from stableeig.nn.zca import paper_truncation_mask  # noqa: E402

SEEDS = range(5)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def _spectral_loss(V: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    scale = torch.arange(1, V.shape[-1] + 1, dtype=V.dtype)
    return ((V * scale) @ V.mT * weights).sum()


def series_length() -> dict[str, float]:
    """``eigh(backward=power)`` vs the reference SVD-PI with deflation, float64, n = 16."""
    out = {}
    for label, rule in (("power (20 terms, default)", se.Power()), ("19 terms", se.Power(18))):
        errors = []
        for seed in SEEDS:
            g = torch.Generator().manual_seed(seed)
            X = torch.randn(16, 64, generator=g, dtype=torch.float64)
            A = X @ X.T / 64 + 1e-4 * torch.eye(16, dtype=torch.float64)
            weights = torch.randn(16, 16, generator=g, dtype=torch.float64)
            A1 = A.clone().requires_grad_(True)
            _spectral_loss(reference.svdpi_eigenvectors(A1, 19), weights).backward()
            A2 = A.clone().requires_grad_(True)
            _spectral_loss(se.eigh(A2, rule)[1], weights).backward()
            assert A1.grad is not None and A2.grad is not None
            errors.append(_relative(A2.grad, (A1.grad + A1.grad.T) / 2))
        out[label] = max(errors)
    return out


def kept_counts() -> list[dict[str, Any]]:
    """Eigenvectors SVD-PI keeps on stem covariances: reference code vs the two conventions."""
    sources = {
        f"synthetic {c}-channel (rank {9 * c})": functools.partial(_synthetic_stem, c)
        for c in (1, 3)
    }
    sources["Fashion-MNIST batch, stem conv at init (rank <= 9)"] = fashion_stem_covariance
    rows = []
    for label, source in sources.items():
        for dtype in (torch.float32, torch.float64):
            counts: dict[str, list[int]] = {"reference code": [], "reference": [], "stableeig": []}
            for seed in SEEDS:
                M = source(seed).to(dtype)
                counts["reference code"].append(_reference_count(M))
                w, V = torch.linalg.eigh(M)
                for convention in ("reference", "stableeig"):
                    keep, _ = paper_truncation_mask(w, V, M, 1e-4, convention)
                    counts[convention].append(int(keep.sum()))
            rows.append(
                {
                    "stem": label,
                    "dtype": str(dtype).replace("torch.", ""),
                    **{k: sum(v) / len(v) for k, v in counts.items()},
                }
            )
    return rows


def _synthetic_stem(in_channels: int, seed: int) -> torch.Tensor:
    return stem_covariance(64, in_channels, seed=seed)


def fashion_stem_covariance(seed: int) -> torch.Tensor:
    """The float32 covariance (+ 1e-4·I) a ZCA layer sees after the stem convolution of the
    quick-preset ResNet-18 at initialisation, on one batch of 128 real Fashion-MNIST images."""
    from stableeig.bench.data import load_dataset
    from stableeig.bench.demo import stem_covariance_of_batch

    return stem_covariance_of_batch(load_dataset("fashion-mnist"), seed)


def _reference_count(M: torch.Tensor, eps: float = 1e-4) -> int:
    """How many eigenvectors ``ZCANormSVDPI`` whitens (its loops, its dtype)."""
    _, e, Vh = torch.linalg.svd(M)
    ratio = torch.cumsum(e, 0) / e.sum()
    count = 0
    for j in range(M.shape[0]):
        if ratio[j] >= 1 - eps or e[j] <= eps:
            break
        count = j + 1
    deflated = M
    for j in range(count):
        v = Vh[j : j + 1].T
        lam = reference.rayleigh(deflated, v)
        if lam < 0 or (lam - e[j]).abs() / e[j] > 0.1:
            return j
        deflated = deflated - deflated @ v @ v.T
    return count


def taylor_differences() -> dict[str, float]:
    """Taylor at an exact tie (the reference: +S/λ both ways) and below its 1e-5 floor."""
    tie = torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    ours = se.Taylor().coefficients(tie).flip(0, 1)
    theirs = reference.geometric_approximation(tie.flip(0)).T
    small = torch.tensor([1e-7, 1e-3, 0.5, 1.0], dtype=torch.float64)
    ours_small = se.Taylor().coefficients(small).flip(0, 1)
    theirs_small = reference.geometric_approximation(small.flip(0)).T
    return {
        "exact tie: coefficient matrix": _relative(ours, theirs),
        "eigenvalue 1e-7 (below the floor)": _relative(ours_small, theirs_small),
    }


def pca_variance() -> dict[str, float]:
    """PCA output, biased (stableeig) vs unbiased (reference) standardization, batch 128×28²."""
    x = torch.randn(128, 16, 28, 28, generator=torch.Generator().manual_seed(0)).double()
    outputs = {}
    for convention in ("stableeig", "reference"):
        layer = se.nn.PCADenoising2d(16, n_components=8, convention=convention)
        layer = layer.double()
        with torch.no_grad():
            layer.weight.fill_(1.0)
        outputs[convention] = layer(x)
    return {"training output": _relative(outputs["stableeig"], outputs["reference"])}


def main() -> None:
    torch.set_num_threads(2)
    results = {
        "series_length": series_length(),
        "kept_counts": kept_counts(),
        "taylor": taylor_differences(),
        "pca_variance": pca_variance(),
    }
    out = ROOT / "results"
    (out / "fidelity.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| measurement | value |", "|---|---|"]
    for label, value in results["series_length"].items():
        lines.append(
            f"| power vs reference SVD-PI gradient (float64, n=16), {label} | {value:.2g} |"
        )
    for label, value in results["taylor"].items():
        lines.append(f"| taylor vs `geometric_approximation`, {label} | {value:.2g} |")
    for label, value in results["pca_variance"].items():
        lines.append(f"| PCA biased vs unbiased standardization, {label} | {value:.2g} |")
    lines += [
        "",
        "| stem covariance + 1e-4·I (64 ch) | dtype | kept by the reference code | "
        "`convention='reference'` | `convention='stableeig'` |",
        "|---|---|---|---|---|",
    ]
    for row in results["kept_counts"]:
        lines.append(
            f"| {row['stem']} | {row['dtype']} | {row['reference code']:.1f} | "
            f"{row['reference']:.1f} | {row['stableeig']:.1f} |"
        )
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
