"""Rotations from a network and Kabsch-aligned losses, where the SVD's gradient is NaN.

    python examples/rotations.py      # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

1. Rotation regression with the 9-D → SO(3) map (Levinson et al., 2020): an MLP reads a
   point cloud and outputs a 3×3 matrix, mapped to the nearest rotation. A common
   initialisation makes the first output the identity, whose singular values are tied: the
   map people copy (``torch.linalg.svd`` autograd) has a NaN gradient at step 0;
   ``se.special_orthogonalize`` trains.
2. A Kabsch-aligned loss over a batch of predicted structures, one of which is a symmetric
   template already aligned to its target (tied singular values of its cross-covariance):
   the copied Kabsch makes the whole batch's gradient NaN, ``se.procrustes`` trains it.
"""

from __future__ import annotations

import os

import torch

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
STEPS, POINTS, BATCH = (60, 12, 16) if SMALL else (400, 32, 64)


def copied_special_orthogonalize(M: torch.Tensor) -> torch.Tensor:
    """The 9-D map as people write it: SVD, flip the last column for det = +1."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U @ Vh))
    flip = torch.ones_like(U[..., 0, :])
    flip[..., -1] = d
    return (U * flip[..., None, :]) @ Vh


def copied_kabsch(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    x, y = X - X.mean(-2, keepdim=True), Y - Y.mean(-2, keepdim=True)
    return copied_special_orthogonalize(y.mT @ x)


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    return se.special_orthogonalize(torch.randn(n, 3, 3, generator=generator))


def regression(orthogonalize, label: str) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(POINTS, 3, generator=g)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * POINTS, 64), torch.nn.ReLU(), torch.nn.Linear(64, 9)
    )
    with torch.no_grad():  # start at the identity, a common choice
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.eye(3).flatten())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = last = None
    for step in range(STEPS):
        R = random_rotations(BATCH, g)
        inputs = cloud @ R.mT  # the cloud, rotated
        prediction = orthogonalize(model(inputs).view(-1, 3, 3))
        loss = (prediction - R).square().sum((-2, -1)).mean()
        optimizer.zero_grad()
        loss.backward()
        finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        if not finite:
            print(f"  {label:26s} step {step}: non-finite gradient — training stops")
            return
        optimizer.step()
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    print(f"  {label:26s} loss {first:.3f} -> {last:.3f} in {STEPS} steps, every gradient finite")


def kabsch_loss(align, label: str) -> None:  # type: ignore[no-untyped-def]
    """A batch of predicted structures aligned to their targets (mean squared deviation after
    Kabsch); structure 0 starts as a symmetric template already aligned to its target."""
    template = torch.tensor([[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0], [0, 0, 1.5]])
    g = torch.Generator().manual_seed(1)
    rotations = random_rotations(BATCH, g)
    targets = template @ rotations.mT + torch.randn(BATCH, 1, 3, generator=g)
    start = template + 0.3 * torch.randn(BATCH, 5, 3, generator=g)
    start[0] = template  # symmetric, and exactly the target up to a rigid motion
    targets[1:] += 0.2 * torch.randn(BATCH - 1, 5, 3, generator=g)
    predicted = start.clone().requires_grad_()
    optimizer = torch.optim.SGD([predicted], lr=0.2)
    first = msd = None
    for step in range(STEPS):
        R = align(predicted, targets)
        centred = predicted - predicted.mean(-2, keepdim=True)
        moved = centred @ R.mT + targets.mean(-2, keepdim=True)
        msd = (moved - targets).square().sum(-1).mean()
        optimizer.zero_grad()
        msd.backward()
        assert predicted.grad is not None
        if not bool(torch.isfinite(predicted.grad).all()):
            print(f"  {label:26s} step {step}: non-finite gradient for the whole batch "
                  f"(MSD {float(msd.detach()):.3f})")  # fmt: skip
            return
        optimizer.step()
        first = float(msd.detach()) if first is None else first
    print(f"  {label:26s} MSD {first:.3f} -> {float(msd.detach()):.4f}, every gradient finite")


def main() -> None:
    torch.manual_seed(0)
    print(f"1. Rotation regression, 9-D -> SO(3), MLP started at the identity ({STEPS} steps):")
    regression(copied_special_orthogonalize, "torch.linalg.svd (copied)")
    regression(se.special_orthogonalize, "se.special_orthogonalize")
    print(f"2. Kabsch-aligned MSD, a batch of {BATCH} structures, one a symmetric template already")
    print("   aligned (tied singular values of its cross-covariance):")
    kabsch_loss(copied_kabsch, "torch.linalg.svd (copied)")
    kabsch_loss(lambda x, y: se.procrustes(x, y).rotation, "se.procrustes")


if __name__ == "__main__":
    main()
