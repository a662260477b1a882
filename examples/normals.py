"""Point-cloud normals: the eigenvector of the smallest eigenvalue of 3×3 covariances.

    python examples/normals.py       # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

Planar patches (a clear smallest eigenvalue) and isotropic ones (all three tied). The code
people copy, ``torch.linalg.eigh(C)[1][..., 0]``, back-propagates NaN through the whole
batch as soon as one patch is isotropic; ``se.eigh`` with a bounded rule stays finite, and
``se.extreme_eigenvector(C, undefined="zero")`` is exact on every planar patch and gives the
isotropic ones (where no gradient exists) a zero gradient; compared with float64 ``eigh``
autograd on the planar patches alone.
"""

from __future__ import annotations

import os
import time

import torch

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
PATCHES, POINTS = (200, 16) if SMALL else (20000, 32)


def patches(isotropic: int) -> torch.Tensor:
    """(PATCHES, POINTS, 3) points: noisy planes, the first ``isotropic`` exactly isotropic
    (the 8 corners of a cube: covariance c·I, the tie bit for bit)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.randn(PATCHES, POINTS, 2, generator=g)
    z = 0.05 * torch.randn(PATCHES, POINTS, 1, generator=g)
    points = torch.cat([xy, z], -1)
    corners = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
    points[:isotropic] = corners.float().repeat(POINTS // 8, 1)
    return points


def covariances(points: torch.Tensor) -> torch.Tensor:
    centred = points - points.mean(1, keepdim=True)
    return centred.mT @ centred / points.shape[1]


def normal_loss(normals: torch.Tensor) -> torch.Tensor:
    return normals[..., 2].square().sum()  # sign-invariant: align normals with z


def main() -> None:
    points = patches(isotropic=10)
    for name, normals_of in (
        ("torch.linalg.eigh", lambda C: torch.linalg.eigh(C)[1][..., 0]),
        ("se.eigh (power)", lambda C: se.eigh(C, backward="power").eigenvectors[..., 0]),
        ("se.eigh (clip)", lambda C: se.eigh(C, backward="clip").eigenvectors[..., 0]),
        ("extreme_eigenvector", lambda C: se.extreme_eigenvector(C, undefined="zero").vector),
    ):
        leaf = points.clone().requires_grad_()
        start = time.perf_counter()
        normal_loss(normals_of(covariances(leaf))).backward()
        seconds = time.perf_counter() - start
        assert leaf.grad is not None
        bad = int((~torch.isfinite(leaf.grad)).any(-1).any(-1).sum())
        planar = points[10:].double().requires_grad_()
        normal_loss(torch.linalg.eigh(covariances(planar))[1][..., 0]).backward()
        assert planar.grad is not None
        error = float((leaf.grad[10:].double() - planar.grad).norm() / planar.grad.norm())
        print(f"{name:20s} patches with non-finite gradient: {bad:5d} of {PATCHES}; "
              f"planar patches vs exact: {error:.1e}; {seconds:.3f} s")  # fmt: skip
        if name != "torch.linalg.eigh":
            assert bad == 0


if __name__ == "__main__":
    main()
