"""The paper's "PI" baseline: power iteration with deflation, differentiated by autograd.

This is a baseline and behaves like one: it converges slowly when ``|λ₂/λ₁| -> 1``, its
eigenvectors depend on the random start, and on degenerate or low-rank matrices it can
return inaccurate eigenpairs, negative Rayleigh quotients or NaN. Nothing here stabilizes
it; use :func:`stableeig.eigh` for a decomposition you can trust.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _validation as checks
from .eigh import prepare_symmetric

__all__ = ["power_iteration_eigh", "power_iteration_unchecked"]


def power_iteration_eigh(
    A: torch.Tensor,
    k: Optional[int] = None,
    num_iters: int = 19,
    generator: Optional[torch.Generator] = None,
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs by power iteration and deflation, differentiable throughout.

    For each of ``k`` eigenvectors: start from a random unit vector, iterate
    ``v <- M̃ v / ‖M̃ v‖`` ``num_iters`` times, take the Rayleigh quotient ``λ = vᵀ M̃ v``
    and deflate ``M̃ <- M̃ - M̃ v vᵀ`` (the reference code's deflation). Batched over the
    leading dimensions; the loops run over ``k`` and ``num_iters`` only.

    Args:
        A: real symmetric matrices, shape (..., n, n).
        k: number of eigenpairs, ``1 <= k <= n``. Default: ``None`` (all ``n``).
        num_iters: iterations per eigenvector, >= 1. Default: 19.
        generator: random generator for the starting vectors (its device is used to draw
            them). Default: ``None`` (the global generator).
        compute_dtype: least working precision. Default: ``None`` (float64).
        check_symmetric: raise if ``A`` is not symmetric within ``sqrt(eps)``. Default: True.

    Returns:
        ``(w, V)``: shapes (..., k) and (..., n, k), in reverse order of extraction
        (ascending, like :func:`stableeig.eigh`, when power iteration converged), in ``A``'s
        dtype.

    Example:
        >>> import torch, stableeig as se
        >>> g = torch.Generator().manual_seed(0)
        >>> w, V = se.power_iteration_eigh(torch.diag(torch.tensor([1.0, 10.0])), k=1,
        ...                                generator=g)
        >>> round(float(w[0]), 4)
        10.0
    """
    checks.check_square_matrix("A", A)
    n = A.shape[-1]
    count = n if k is None else checks.check_k("k", k, n)
    assert count is not None
    checks.check_int_at_least("num_iters", num_iters, 1)
    symmetric = prepare_symmetric("A", A, compute_dtype, check_symmetric)
    w, V = power_iteration_unchecked(symmetric, count, num_iters, generator)
    return w.to(A.dtype), V.to(A.dtype)


def power_iteration_unchecked(
    symmetric: torch.Tensor,
    count: int,
    num_iters: int,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The iterations of :func:`power_iteration_eigh` on a validated symmetric batch."""
    deflated = symmetric
    draw_device = generator.device if generator is not None else deflated.device
    values, vectors = [], []
    with torch.autocast(deflated.device.type, enabled=False):
        for _ in range(count):
            v = torch.randn(
                (*deflated.shape[:-1], 1),
                generator=generator,
                dtype=deflated.dtype,
                device=draw_device,
            ).to(deflated.device)
            v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True)
            for _ in range(num_iters):
                v = deflated @ v
                v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True)
            values.append((v.mT @ deflated @ v)[..., 0, 0])
            vectors.append(v[..., 0])
            deflated = deflated - deflated @ v @ v.mT
    return torch.stack(values[::-1], dim=-1), torch.stack(vectors[::-1], dim=-1)
