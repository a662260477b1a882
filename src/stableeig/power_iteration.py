"""The paper's "PI" baseline: power iteration with deflation, forward and backward.

This is a baseline and behaves like one: it converges slowly when ``|λ₂/λ₁| -> 1``, its
eigenvectors depend on the random start, and on degenerate or low-rank matrices it can
return inaccurate eigenpairs, negative Rayleigh quotients or huge gradients. Nothing here
stabilizes it; use :func:`stableeig.eigh` for a decomposition you can trust.

Two backwards (``stableeig.rules.PowerIteration(backward=...)``):

* ``"reference"`` (default) — the reference code's ``power_iteration_unstable`` as it
  computes it: per iteration ``mid = (I - v₊v₊ᵀ) g / max(‖M̃ v‖, 1e-5)``,
  ``∂L/∂M̃ += mid vᵀ``, and ``g ← M̃ mid``. On a deflated, non-symmetric ``M̃`` the exact
  recursion needs ``M̃ᵀ``; this is the arithmetic the paper's PI column ran.
* ``"exact"`` — autograd through the same iterations.

The forward is the same for both, including the reference's ``clamp(min=1e-5)`` of the norm
and its starting vectors ``r / (‖r‖ + 1e-12)``.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _validation as checks
from ._autograd import prepare_symmetric
from ._precision import autocast_off
from .rules import REFERENCE_NORM_FLOOR as NORM_FLOOR

__all__ = ["power_iteration_eigh", "power_iteration_unchecked"]


def _iterate(M: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step ``v <- M v / max(‖M v‖, 1e-5)``; also returns the clamped norm (..., 1, 1)."""
    Mv = M @ v
    norm = torch.linalg.vector_norm(Mv, dim=-2, keepdim=True).clamp_min(NORM_FLOOR)
    return Mv / norm, norm


class _ReferencePowerIteration(torch.autograd.Function):
    """``num_iters`` power iterations of (..., n, 1) ``v`` on (..., n, n) ``M``, with the
    reference code's backward (``M̃`` where ``M̃ᵀ`` belongs; no gradient to the start)."""

    @staticmethod
    def forward(
        M: torch.Tensor, v: torch.Tensor, num_iters: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        iterates, norms = [v], []
        for _ in range(num_iters):
            v, norm = _iterate(M, v)
            iterates.append(v)
            norms.append(norm)
        return v, torch.stack(iterates), torch.stack(norms)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _, iterates, norms = output
        ctx.num_iters = inputs[2]
        ctx.mark_non_differentiable(iterates, norms)
        ctx.save_for_backward(inputs[0], iterates, norms)

    @staticmethod
    def backward(ctx, grad_v, _grad_iterates, _grad_norms):  # type: ignore[no-untyped-def]
        M, iterates, norms = ctx.saved_tensors
        grad_M = torch.zeros_like(M)
        for k in reversed(range(ctx.num_iters)):
            after, before = iterates[k + 1], iterates[k]
            mid = (grad_v - after @ (after.mT @ grad_v)) / norms[k]  # (I - v₊v₊ᵀ) g / ‖M v‖
            grad_M = grad_M + mid @ before.mT
            grad_v = M @ mid  # the reference's arithmetic: M, not Mᵀ
        return grad_M, None, None


def power_iteration_unchecked(
    symmetric: torch.Tensor,
    count: int,
    num_iters: int,
    generator: Optional[torch.Generator] = None,
    backward: str = "reference",
    starts: Optional[torch.Tensor] = None,
    stop_below: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The iterations of :func:`power_iteration_eigh` on a validated symmetric batch.

    Args:
        symmetric: (..., n, n) matrices in working precision.
        count: eigenpairs to extract, ``1 <= count <= n``.
        num_iters: iterations per eigenpair.
        generator: for the random starts. Default: the global generator.
        backward: ``"reference"`` or ``"exact"`` (see the module docstring).
        starts: (..., n, count) starting vectors (normalized here) instead of random ones.
        stop_below: the PI layer's stop rule (``ZCANormPIunstable``) with this ``eps``: once
            every matrix of the batch has met a Rayleigh quotient that rises or falls below
            ``eps`` (so that no later eigenpair is used), stop extracting. One host sync per
            eigenpair; the pairs returned, and their gradients, are those without it.

    Returns:
        ``(w, V)`` (..., k) Rayleigh quotients and (..., n, k) vectors, in reverse order of
        extraction (ascending when power iteration converged); ``k = count`` unless
        ``stop_below`` ended the extraction early.
    """
    deflated = symmetric
    if starts is None:
        draw_device = generator.device if generator is not None else symmetric.device
        starts = torch.randn(
            (*symmetric.shape[:-1], count),
            generator=generator,
            dtype=symmetric.dtype,
            device=draw_device,
        ).to(symmetric.device)
    starts = starts.to(symmetric.dtype)
    starts = starts / (torch.linalg.vector_norm(starts, dim=-2, keepdim=True) + 1e-12)
    values, vectors = [], []
    alive: Optional[torch.Tensor] = None
    with autocast_off(symmetric.device):
        for j in range(count):
            v = starts[..., j : j + 1]
            if backward == "reference":
                v = _ReferencePowerIteration.apply(deflated, v, num_iters)[0]
            else:
                for _ in range(num_iters):
                    v = _iterate(deflated, v)[0]
            # the reference's Rayleigh quotient; 0 (not 0/0) where the iterate vanished
            quotient = (deflated @ v).mT @ v / (v.mT @ v).clamp_min(torch.finfo(v.dtype).tiny)
            values.append(quotient[..., 0, 0])
            vectors.append(v[..., 0])
            if stop_below is not None:
                with torch.no_grad():
                    current = values[-1]
                    if alive is None:
                        alive = torch.ones_like(current, dtype=torch.bool)
                    else:
                        alive = alive & (current <= values[-2]) & (current >= stop_below)
                    if not bool(alive.any()):
                        break
            deflated = deflated - deflated @ v @ v.mT
    return torch.stack(values[::-1], dim=-1), torch.stack(vectors[::-1], dim=-1)


def power_iteration_eigh(
    A: torch.Tensor,
    k: Optional[int] = None,
    num_iters: int = 19,
    generator: Optional[torch.Generator] = None,
    *,
    backward: str = "reference",
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs by power iteration and deflation: the paper's "PI" baseline.

    For each of ``k`` eigenvectors of ``M = A / max|A|`` (per matrix; the eigenvalues are
    scaled back, so the floor below is relative to ``A``'s scale and a zero matrix gives
    eigenvalues 0, not NaN): start from a random unit vector, iterate
    ``v <- M̃ v / max(‖M̃ v‖, 1e-5)`` ``num_iters`` times, take the Rayleigh quotient
    ``λ = vᵀ M̃ v / vᵀ v`` and deflate ``M̃ <- M̃ - M̃ v vᵀ`` (the reference code's steps).
    Batched over the leading dimensions; the loops run over ``k`` and ``num_iters`` only.

    Args:
        A: real symmetric matrices, shape (..., n, n), n >= 1.
        k: number of eigenpairs, ``1 <= k <= n``. Default: ``None`` (all ``n``).
        num_iters: iterations per eigenvector, >= 1. Default: 19.
        generator: random generator for the starting vectors (its device is used to draw
            them). Default: ``None`` (the global generator).
        backward: ``"reference"`` (the reference code's PI backward, as it computes it) or
            ``"exact"`` (autograd through the iterations). Default: ``"reference"``.
        compute_dtype: least working precision. Default: ``None`` (float64).
        check_symmetric: raise if ``A`` is not symmetric within ``sqrt(eps)``. Default: True.

    Returns:
        ``(w, V)``: shapes (..., k) and (..., n, k), in reverse order of extraction
        (ascending, like :func:`stableeig.eigh`, when power iteration converged), in ``A``'s
        dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> g = torch.Generator().manual_seed(0)
        >>> w, V = se.power_iteration_eigh(torch.diag(torch.tensor([1.0, 10.0])), k=1,
        ...                                generator=g)
        >>> round(float(w[0]), 4)
        10.0
    """
    checks.check_square_matrix("A", A)
    n = A.shape[-1]
    if n == 0:
        raise checks.ShapeError(
            f"A: expected matrices with n >= 1 for power iteration (got shape {tuple(A.shape)})"
        )
    count = n if k is None else checks.check_k("k", k, n)
    assert count is not None
    checks.check_int_at_least("num_iters", num_iters, 1)
    checks.check_choice("backward", backward, ("reference", "exact"))
    symmetric = prepare_symmetric("A", A, compute_dtype, check_symmetric)
    # scale-relative: iterate on A / max|A| (the norm floor 1e-5 is then relative, so tiny
    # matrices are not read as zero), eigenvalues scaled back; a zero matrix gives w = 0
    scale = symmetric.detach().abs().amax((-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    w, V = power_iteration_unchecked(symmetric / scale, count, num_iters, generator, backward)
    values = checks.rounded_checked(
        "power_iteration_eigh", "the eigenvalues", w * scale[..., 0], A.dtype
    )
    return values, V.to(A.dtype)
