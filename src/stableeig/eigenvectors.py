"""The eigenvector of the smallest or largest eigenvalue of batched symmetric matrices
(surface normals, principal axes), with an exact gradient per matrix where it is defined.

The eigenvector of ``λ₀`` is differentiable exactly where ``λ₀`` is simple; its gradient
involves only the gaps ``λⱼ - λ₀``, so ties among the other eigenvalues do not matter (the
unused coefficients contribute exactly 0). Where ``λ₀`` is tied (an isotropic patch), no
gradient exists: ``undefined="raise"`` says which matrices, ``undefined="zero"`` gives those
matrices a zero gradient and leaves every other matrix of the batch exact.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _validation as checks
from ._autograd import eigh_function, prepare_symmetric
from ._precision import autocast_off, working_dtype
from .exceptions import NotDifferentiableError
from .rules import Analytic

__all__ = ["ExtremeEigenvector", "extreme_eigenvector"]


class ExtremeEigenvector(NamedTuple):
    """``(vector (..., n), defined (...))``: ``defined`` is False where the eigenvalue is
    tied within round-off (the vector is then one unit vector of its eigenspace)."""

    vector: torch.Tensor
    defined: torch.Tensor


def extreme_eigenvector(
    A: torch.Tensor,
    which: str = "smallest",
    *,
    undefined: str = "raise",
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> ExtremeEigenvector:
    """The unit eigenvector of the smallest (or largest) eigenvalue of each matrix.

    Args:
        A: real symmetric matrices, (..., n, n), n >= 2.
        which: ``"smallest"`` (normals) or ``"largest"`` (principal axes). Default: smallest.
        undefined: where that eigenvalue is tied within round-off (gap at most
            ``n · eps · max|λ|``, ``eps`` of ``A``'s dtype): ``"raise"`` a
            :class:`~stableeig.NotDifferentiableError` naming how many matrices, when ``A``
            requires grad; ``"zero"``: a zero gradient for those matrices only. Default:
            ``"raise"``.
        compute_dtype, check_symmetric: as :func:`stableeig.eigh`.

    Returns:
        :class:`ExtremeEigenvector` ``(vector, defined)``. The sign is the eigensolver's:
        use sign-invariant losses (``(v·n)²``, ``|v·n|``).

    Examples:
        >>> import torch, stableeig as se
        >>> C = torch.stack([torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.eye(3)])
        >>> v, defined = se.extreme_eigenvector(C, undefined="zero")
        >>> defined.tolist(), v[0].abs().tolist()
        ([True, False], [1.0, 0.0, 0.0])
    """
    checks.check_square_matrix("A", A)
    checks.check_choice("which", which, ("smallest", "largest"))
    checks.check_choice("undefined", undefined, ("raise", "zero"))
    n = A.shape[-1]
    if n < 2:
        raise checks.ShapeError(f"A: expected matrices with n >= 2 (got shape {tuple(A.shape)})")
    # decomposed and judged in the working precision: only the vector comes back in A's
    # dtype (a float16 matrix's eigenvalues may not fit float16; its unit vector does)
    work = prepare_symmetric("A", A, compute_dtype, check_symmetric, symmetrize=False)
    with autocast_off(work.device):
        w, V = eigh_function(work, Analytic())  # decomposes (A + Aᵀ) / 2; checked once above
    checks.check_eigenvalues_finite("A", w)
    first, second = (0, 1) if which == "smallest" else (n - 1, n - 2)
    with torch.no_grad():
        w = w.detach()
        gap = (w[..., second] - w[..., first]).abs()
        judged = A.dtype if A.dtype != torch.float64 else working_dtype(A.dtype, compute_dtype)
        defined = gap > n * torch.finfo(judged).eps * w.abs().amax(-1)
    vector = V[..., first].to(A.dtype)
    if A.requires_grad and torch.is_grad_enabled():
        if undefined == "raise" and checks.host_checks_enabled(defined) and not bool(defined.all()):
            count = int((~defined).sum())
            raise NotDifferentiableError(
                f"extreme_eigenvector: expected a simple {which} eigenvalue in every matrix "
                f"(got {count} of {defined.numel()} tied within round-off: no gradient exists "
                "there); pass undefined='zero' for a zero gradient on those matrices only"
            )
        # no gradient where undefined: the eigenvector's incoming gradient is exactly 0
        # there, and the rule's unused (infinite) coefficients contribute 0
        vector = torch.where(defined[..., None], vector, vector.detach())
    return ExtremeEigenvector(vector, defined)
