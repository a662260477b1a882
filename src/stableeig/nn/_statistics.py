"""Per-group batch moments and the per-group affine map, with hand-written backwards.

Activations are viewed as ``(N, C, L)``; channels form ``G = C / d`` consecutive groups of
``d``. Both operations stream over the activations with batched matrix products and write
at most one activation-sized tensor per pass, forward or backward: at these sizes the cost
is memory traffic, not arithmetic (``stableeig bench speed``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = ["group_affine", "group_moments", "sync_enabled"]

CHUNK_ELEMENTS = 1 << 18  # centered chunks of ~1 MiB (float32) stay in cache


def sync_enabled(sync: bool, process_group: Optional[Any], training: bool) -> bool:
    """Synchronize only in training, with torch.distributed initialized and world size > 1."""
    if not (sync and training and dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def _per_group(x3: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, C, L) -> (N·G, d, L), a view of contiguous activations."""
    N, C, L = x3.shape
    return x3.view(N * (C // group_size), group_size, L)


def _repeat(per_group: torch.Tensor, batch: int) -> torch.Tensor:
    """(G, a, b) -> (batch·G, a, b), the layout of :func:`_per_group`."""
    return per_group.repeat(batch, 1, 1)


def _centered_outer_sum(x3: torch.Tensor, mean: torch.Tensor, group_size: int) -> torch.Tensor:
    """``Σ (x - μ)(x - μ)ᵀ`` per group: (G, d, d).

    Centered (exact also when the mean is large next to the spread), a few samples at a
    time, so that the centered copy never exists at full size.
    """
    N, C, L = x3.shape
    G = C // group_size
    chunk = max(1, CHUNK_ELEMENTS // max(C * L, 1))
    outer = x3.new_zeros(G, group_size, group_size)
    buffer = x3.new_empty(min(chunk, N), C, L)  # reused: no allocation per chunk
    for part in x3.split(chunk, dim=0):
        centered = torch.sub(part, mean.unsqueeze(-1), out=buffer[: part.shape[0]])
        grouped = centered.view(-1, group_size, L)
        outer += torch.bmm(grouped, grouped.mT).view(-1, G, group_size, group_size).sum(dim=0)
    return outer


class _GroupMoments(torch.autograd.Function):
    """``(mean (C,), covariance (G, d, d), count)`` of (N, C, L) activations."""

    @staticmethod
    def forward(
        x3: torch.Tensor, group_size: int, sync: bool, process_group: Optional[Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, _, L = x3.shape
        count = torch.tensor(float(N * L), dtype=x3.dtype, device=x3.device)
        total = x3.sum(dim=(0, 2))
        if sync:
            dist.all_reduce(count, group=process_group)
            dist.all_reduce(total, group=process_group)
        mean = total / count
        outer = _centered_outer_sum(x3, mean, group_size)
        if sync:
            dist.all_reduce(outer, group=process_group)
        return mean, outer / count, count

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        x3, ctx.group_size, ctx.sync, ctx.process_group = inputs
        mean, _, count = output
        ctx.mark_non_differentiable(count)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x3, mean, count)

    @staticmethod
    def backward(ctx, grad_mean, grad_covariance, _grad_count):  # type: ignore[no-untyped-def]
        # d cov = (δ x̃ᵀ + x̃ δᵀ) / M (the mean's own variation cancels), d mean = Σ δ / M:
        # ∂L/∂x = A (x - μ) + ∂L/∂μ / M with A = (G + Gᵀ) / M, written as one A x + c.
        x3, mean, count = ctx.saved_tensors
        if grad_mean is None and grad_covariance is None:
            return None, None, None, None
        G, d = x3.shape[1] // ctx.group_size, ctx.group_size
        if grad_mean is None:
            grad_mean = torch.zeros_like(mean)
        if grad_covariance is None:
            grad_covariance = mean.new_zeros(G, d, d)
        if ctx.sync:  # every process's loss depends on the shared statistics
            grad_mean, grad_covariance = grad_mean.clone(), grad_covariance.clone()
            dist.all_reduce(grad_mean, group=ctx.process_group)
            dist.all_reduce(grad_covariance, group=ctx.process_group)
        A = (grad_covariance + grad_covariance.mT) / count
        c = (grad_mean / count).view(G, d, 1) - A @ mean.view(G, d, 1)
        N = x3.shape[0]
        if torch.is_grad_enabled():  # double backward: differentiable ops, no out=
            grad_x = torch.baddbmm(_repeat(c, N), _repeat(A, N), _per_group(x3, d))
            return grad_x.view(x3.shape), None, None, None
        grad_x = torch.empty_like(x3)  # not a view, so autograd can accumulate into it
        torch.baddbmm(_repeat(c, N), _repeat(A, N), _per_group(x3, d), out=_per_group(grad_x, d))
        return grad_x, None, None, None


class _GroupAffine(torch.autograd.Function):
    """``y = T x + shift`` per group: x (N, C, L), T (G, d, d), shift (G, d, 1)."""

    @staticmethod
    def forward(x3: torch.Tensor, transform: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        N = x3.shape[0]
        d = transform.shape[-1]
        y = torch.baddbmm(_repeat(shift, N), _repeat(transform, N), _per_group(x3, d))
        return y.view(x3.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[no-untyped-def]
        x3, transform = ctx.saved_tensors
        N = x3.shape[0]
        G, d, _ = transform.shape
        grad_groups = _per_group(grad_y.contiguous(), d)
        grad_x = grad_transform = grad_shift = None
        if ctx.needs_input_grad[0] and torch.is_grad_enabled():  # double backward: no out=
            grad_x = torch.bmm(_repeat(transform.mT, N), grad_groups).view(x3.shape)
        elif ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x3)  # not a view, so autograd can accumulate into it
            torch.bmm(_repeat(transform.mT, N), grad_groups, out=_per_group(grad_x, d))
        if ctx.needs_input_grad[1]:
            products = grad_groups @ _per_group(x3, d).mT  # (N·G, d, d)
            grad_transform = products.view(N, G, d, d).sum(dim=0)
        if ctx.needs_input_grad[2]:
            grad_shift = grad_groups.sum(dim=-1).view(N, G, d).sum(dim=0).unsqueeze(-1)
        return grad_x, grad_transform, grad_shift


def group_moments(
    x3: torch.Tensor, group_size: int, sync: bool = False, process_group: Optional[Any] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (C,), biased per-group covariance (G, d, d) and sample count of ``x3``.

    Args:
        x3: contiguous activations, shape (N, C, L), float32 or float64.
        group_size: channels per group ``d``; must divide C.
        sync: all-reduce the sum, the count and the centered sum of outer products over
            ``process_group``; the backward all-reduces the incoming gradients. Default: False.
        process_group: the group to reduce over. Default: None (the world).
    """
    return _GroupMoments.apply(x3, group_size, sync, process_group)


def group_affine(x3: torch.Tensor, transform: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``T x + shift`` per group of contiguous (N, C, L) activations: (N, C, L)."""
    return _GroupAffine.apply(x3, transform, shift)
