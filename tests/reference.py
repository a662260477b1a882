"""Transcriptions of the authors' reference algorithms, written from their semantics.

Sources (read, not copied): WeiWangTrento/Power-Iteration-SVD ``torch_utils.py``
(``power_iteration_once``, ``power_iteration_unstable``) and ``ZCANorm.py``
(``ZCANormSVDPI``, ``ZCANormPIunstable``), ``PCANorm.py`` (``myPCANormSVDPI``);
WeiWangTrento/Robust-Differentiable-SVD ``torch_utils.py`` (``geometric_approximation``).
Deliberately unbatched and loop-based, one group and one eigenvector at a time, so that they
share no code and no structure with the library they check.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

NORM_FLOOR = 1e-5


class PowerLayer(torch.autograd.Function):
    """SVD-PI: forward returns ``v`` unchanged; backward sums ``K + 1`` series terms."""

    @staticmethod
    def forward(ctx, M, v, K):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(M, v)
        ctx.K = K
        return v.clone()

    @staticmethod
    def backward(ctx, grad_v):  # type: ignore[no-untyped-def, override]
        M, v = ctx.saved_tensors
        n = v.shape[0]
        denominator = torch.linalg.vector_norm(M @ v).clamp(min=NORM_FLOOR)
        term = (torch.eye(n, dtype=M.dtype) - v @ v.T) / denominator
        total = term.clone()
        for _ in range(ctx.K):  # term k = (M / ‖Mv‖)^k (I - vvᵀ) / ‖Mv‖, k = 1..K
            term = (M / denominator) @ term
            total = total + term
        return total @ grad_v @ v.T, None, None


class UnstablePowerIteration(torch.autograd.Function):
    """PI: ``K`` iterations forward; the reference's backward, with ``M`` where ``Mᵀ`` goes."""

    @staticmethod
    def forward(ctx, M, v, K):  # type: ignore[no-untyped-def, override]
        iterates = [v]
        for _ in range(K):
            step = M @ iterates[-1]
            iterates.append(step / torch.linalg.vector_norm(step).clamp(min=NORM_FLOOR))
        ctx.save_for_backward(M, *iterates)
        ctx.K = K
        return iterates[-1].clone()

    @staticmethod
    def backward(ctx, grad_v):  # type: ignore[no-untyped-def, override]
        M, *iterates = ctx.saved_tensors
        n = M.shape[0]
        grad_M = torch.zeros_like(M)
        for i in range(1, ctx.K + 1):
            after, before = iterates[-i], iterates[-i - 1]
            norm = torch.linalg.vector_norm(M @ before).clamp(min=NORM_FLOOR)
            mid = (torch.eye(n, dtype=M.dtype) - after @ after.T) / norm @ grad_v
            grad_M = grad_M + mid @ before.T
            grad_v = M @ mid
        return grad_M, None, None


def rayleigh(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((M @ v).T @ v / (v.T @ v))[0, 0]


def svdpi_eigenvectors(A: torch.Tensor, K: int) -> torch.Tensor:
    """Every eigenvector through a power layer, deflating in descending order: (n, n) ascending."""
    with torch.no_grad():
        _, _, Vh = torch.linalg.svd(A)
    deflated, vectors = A, []
    for j in range(A.shape[0]):
        v = PowerLayer.apply(deflated, Vh[j : j + 1].T.clone(), K)
        vectors.append(v)
        deflated = deflated - deflated @ v @ v.T
    return torch.cat(vectors[::-1], dim=1)


def geometric_approximation(s: torch.Tensor, order: int = 9) -> torch.Tensor:
    """The TPAMI coefficients ``a[i, j]`` for descending ``s`` (``K̃ᵀ`` is its transpose)."""
    n = s.shape[0]
    eye = torch.eye(n, dtype=s.dtype)
    p = s.unsqueeze(-1) / s.unsqueeze(-2) - eye
    p = torch.where(p < 1.0, p, 1.0 / p)
    row = s.unsqueeze(-1).expand(n, n)
    a = 1.0 / torch.where(row >= row.T, row, -row.T)
    a = a * (1 - eye)
    series, power = torch.ones_like(p), torch.ones_like(p)
    for _ in range(order):
        power = power * p
        series = series + power
    return a * series


def _covariance_blocks(x: torch.Tensor, groups: int, eps: float) -> tuple:  # type: ignore[type-arg]
    N, C, H, W = x.shape
    flat = x.transpose(0, 1).reshape(C, -1)
    mu = flat.mean(1, keepdim=True)
    centered = flat - mu
    cov = centered @ centered.T / (N * H * W) + torch.eye(C, dtype=x.dtype) * eps
    d = C // groups
    blocks = [cov[i * d : (i + 1) * d, i * d : (i + 1) * d] for i in range(groups)]
    return mu, blocks, list(centered.split(d, dim=0))


def _zca_train(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running: dict,  # type: ignore[type-arg]
    subspace_of: Callable[[int, torch.Tensor], torch.Tensor],
    eps: float,
    momentum: float,
) -> torch.Tensor:
    """The ZCA layers' shared skeleton: per group ``i`` of the ridged covariance ``M``, the
    whitening ``subspace_of(i, M)`` applied to the centered group; running averages; affine."""
    N, C, H, W = x.shape
    mu, blocks, parts = _covariance_blocks(x, groups, eps)
    outputs = []
    for i, M in enumerate(blocks):
        subspace = subspace_of(i, M)
        outputs.append(subspace @ parts[i])
        with torch.no_grad():
            running["subspace"][i] = (1 - momentum) * running["subspace"][i] + momentum * subspace
    with torch.no_grad():
        running["mean"] = (1 - momentum) * running["mean"] + momentum * mu
    y = torch.cat(outputs, 0) * weight.view(C, 1) + bias.view(C, 1)
    return y.view(C, N, H, W).transpose(0, 1)


def zca_svdpi_train(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running: dict,  # type: ignore[type-arg]
    eps: float = 1e-4,
    momentum: float = 0.1,
    K: int = 19,
) -> torch.Tensor:
    """One training forward of ``ZCANormSVDPI``; updates ``running`` (mean, subspaces)."""

    def subspace_of(i: int, M: torch.Tensor) -> torch.Tensor:
        d = M.shape[0]
        with torch.no_grad():
            _, e, Vh = torch.linalg.svd(M)
            ratio = torch.cumsum(e, 0) / e.sum()
            count = 0
            for j in range(d):
                if ratio[j] >= 1 - eps or e[j] <= eps:
                    break
                count = j + 1
        subspace = torch.zeros_like(M)
        deflated = M
        for j in range(count):
            v = PowerLayer.apply(deflated, Vh[j : j + 1].T.clone(), K)
            lam = rayleigh(deflated, v)
            if lam < 0 or (lam - e[j]).abs() / e[j] > 0.1:
                break
            subspace = subspace + v @ (lam.rsqrt() * v.T)
            deflated = deflated - deflated @ v @ v.T
        return subspace

    return _zca_train(x, groups, weight, bias, running, subspace_of, eps, momentum)


def zca_pi_train(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running: dict,  # type: ignore[type-arg]
    starts: torch.Tensor,
    eps: float = 1e-4,
    momentum: float = 0.1,
    K: int = 19,
) -> torch.Tensor:
    """One training forward of ``ZCANormPIunstable`` with starting vectors ``starts[i, :, j]``."""

    def subspace_of(i: int, M: torch.Tensor) -> torch.Tensor:
        subspace, deflated = torch.zeros_like(M), M
        previous: Optional[torch.Tensor] = None
        for j in range(M.shape[0]):
            start = starts[i, :, j : j + 1]
            start = start / (torch.linalg.vector_norm(start) + 1e-12)
            v = UnstablePowerIteration.apply(deflated, start, K)
            current = rayleigh(deflated, v)
            if previous is not None and (previous < current or current < eps):
                break
            previous = current
            subspace = subspace + v @ (current.rsqrt() * v.T)
            deflated = deflated - deflated @ v @ v.T
        return subspace

    return _zca_train(x, groups, weight, bias, running, subspace_of, eps, momentum)


def zca_eval(x: torch.Tensor, groups: int, weight, bias, running: dict) -> torch.Tensor:  # type: ignore[no-untyped-def, type-arg]
    N, C, H, W = x.shape
    flat = x.transpose(0, 1).reshape(C, -1) - running["mean"]
    parts = flat.split(C // groups, dim=0)
    y = torch.cat([S @ part for S, part in zip(running["subspace"], parts)], 0)
    y = y * weight.view(C, 1) + bias.view(C, 1)
    return y.view(C, N, H, W).transpose(0, 1)


def pca_svdpi_train(
    x: torch.Tensor,
    n_eigens: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running: dict,  # type: ignore[type-arg]
    eps: float = 1e-4,
    momentum: float = 0.1,
    K: int = 19,
) -> torch.Tensor:
    """One training forward of ``myPCANormSVDPI`` (one group, ``n_eigens`` eigenvectors)."""
    N, C, H, W = x.shape
    flat = x.transpose(0, 1).reshape(C, -1)
    mu, sigma = flat.mean(1, keepdim=True), flat.var(1, keepdim=True)  # unbiased
    standardized = (flat - mu) / (sigma + eps).sqrt()
    M = standardized @ standardized.T / (N * H * W) + torch.eye(C, dtype=x.dtype) * eps
    with torch.no_grad():
        _, _, Vh = torch.linalg.svd(M)
    vectors = []
    for i in range(n_eigens):
        v = PowerLayer.apply(M, Vh[i : i + 1].T.clone(), K)
        vectors.append(v)
        M = M - M @ v @ v.T
    y = sum(v @ (v.T @ standardized) for v in vectors)
    with torch.no_grad():
        running["mean"] = (1 - momentum) * running["mean"] + momentum * mu
        running["var"] = (1 - momentum) * running["var"] + momentum * sigma
        subspace = sum(v @ v.T for v in vectors)
        running["subspace"] = (1 - momentum) * running["subspace"] + momentum * subspace
    y = y * weight.view(C, 1) + bias.view(C, 1)  # type: ignore[operator]
    return y.view(C, N, H, W).transpose(0, 1)


def pca_eval(x: torch.Tensor, weight, bias, running: dict, eps: float = 1e-4) -> torch.Tensor:  # type: ignore[no-untyped-def, type-arg]
    N, C, H, W = x.shape
    flat = x.transpose(0, 1).reshape(C, -1)
    flat = (flat - running["mean"]) / (running["var"] + eps).sqrt()
    y = (flat.T @ running["subspace"]).T * weight.view(C, 1) + bias.view(C, 1)
    return y.view(C, N, H, W).transpose(0, 1)
