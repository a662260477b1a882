"""Second-order layers: covariance pooling (MPN-COV / iSQRT-COV heads) and SPD-manifold
layers (SPDNet's BiMap, ReEig, LogEig; ExpEig; a log-Euclidean or affine-invariant batch
normalization).

Every layer is batched (one decomposition call per batch, through the spectral functions
of :mod:`stableeig`, so gradients are exact and finite at tied eigenvalues), takes
``method=`` (a gradient rule: ``loewner`` by default) and ``compute_dtype``, and returns
its input's dtype. SPD inputs are ``(N, n, n)`` or ``(N, C, n, n)``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from .. import _validation as checks
from .._precision import working_dtype
from ..exceptions import ArgumentError, DTypeError, NotPositiveDefiniteError, ShapeError
from ..matrix_functions import clamp_eigenvalues, expm, logm, powm
from ..means import airm_geodesic, airm_mean
from ..rules import Rule, resolve
from ..spectral import inv_sqrtm
from .orthogonal import orthogonal_weight

__all__ = [
    "BiMap",
    "CovariancePooling2d",
    "ExpEig",
    "LogEig",
    "ReEig",
    "SPDBatchNorm",
    "symmetric_to_vector",
]

Method = Union[str, Rule]
FUNCTIONS = ("sqrt", "power", "log")
MEANS = ("log-euclidean", "affine-invariant")


def symmetric_to_vector(S: torch.Tensor) -> torch.Tensor:
    """The upper triangle of symmetric (..., n, n), off-diagonal entries × √2 so that the
    Euclidean norm equals the Frobenius norm: (..., n (n + 1) / 2)."""
    n = S.shape[-1]
    rows, cols = torch.triu_indices(n, n, device=S.device)
    scale = torch.where(rows == cols, 1.0, math.sqrt(2)).to(S.dtype)
    return S[..., rows, cols] * scale


def _check_spd_input(name: str, X: object, size: Optional[int] = None) -> torch.Tensor:
    X = checks.check_square_matrix(f"{name}: input", X)
    if X.dim() not in (3, 4):
        raise ShapeError(
            f"{name}: expected (N, n, n) or (N, C, n, n) input (got shape {tuple(X.shape)})"
        )
    if size is not None and X.shape[-1] != size:
        raise ShapeError(f"{name}: expected {size}×{size} matrices (got shape {tuple(X.shape)})")
    return X


def _check_positive_definite(name: str, X: torch.Tensor) -> None:
    """Finite, symmetric (the library's tolerance) and positive definite (by Cholesky)."""
    checks.check_finite_symmetric(name, X)
    if checks.in_graph():
        info = torch.linalg.cholesky_ex((X + X.mT) / 2).info
        checks.assert_in_graph((info == 0).all(), f"{name}: expected positive definite matrices")
    elif checks.host_checks_enabled(X):
        info = torch.linalg.cholesky_ex((X + X.mT) / 2).info
        if bool((info != 0).any()):
            first = int(torch.nonzero(info.flatten())[0])
            raise NotPositiveDefiniteError(
                f"{name}: expected positive definite matrices (the Cholesky factorization "
                f"fails for matrix {first} of the {info.numel()} in shape {tuple(X.shape)})"
            )


class CovariancePooling2d(nn.Module):
    """Second-order pooling: the channel covariance of each sample's feature map, a matrix
    function of it, flattened — the MPN-COV / iSQRT-COV head.

    ``(N, C, H, W)`` → optional 1×1 reduction to ``reduced_channels`` (+ BatchNorm + ReLU, as
    MPN-COV) → per-sample covariance ``Σ = X̄ X̄ᵀ / (H W)`` plus the relative ridge
    ``eps · (tr Σ / d) · I`` (any activation scale, float32 included) → optional trace
    normalization ``Σ / tr Σ`` → ``Σ^{1/2}`` (``"sqrt"``), ``Σ^p`` (``"power"``) or
    ``log Σ`` (``"log"``) → ``"triu"`` (norm-preserving upper triangle) or ``"full"``.

    Args:
        in_channels: ``C``.
        reduced_channels: channels after the 1×1 reduction. Default: None (no reduction).
        function: ``"sqrt"``, ``"power"`` or ``"log"``. Default: ``"sqrt"``.
        power: the exponent for ``"power"``. Default: 0.5.
        method: gradient rule. Default: ``"loewner"``.
        eps: ridge relative to each covariance's mean eigenvalue, > 0. Default: 1e-4.
        trace_norm: divide each covariance by its trace first. Default: True.
        output: ``"triu"`` or ``"full"``. Default: ``"triu"``.
        compute_dtype: least working precision of the decomposition. Default: None (float64).

    Shape:
        Input (N, C, H, W); output (N, d (d + 1) / 2) or (N, d, d), ``d`` the channels.

    Examples:
        >>> import torch, stableeig as se
        >>> pool = se.nn.CovariancePooling2d(16, reduced_channels=8)
        >>> pool(torch.randn(4, 16, 7, 7)).shape
        torch.Size([4, 36])
    """

    def __init__(
        self,
        in_channels: int,
        reduced_channels: Optional[int] = None,
        function: str = "sqrt",
        power: float = 0.5,
        method: Method = "loewner",
        eps: float = 1e-4,
        trace_norm: bool = True,
        output: str = "triu",
        compute_dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = checks.check_int_at_least(f"{name}: in_channels", in_channels, 1)
        self.function = checks.check_choice(f"{name}: function", function, FUNCTIONS)
        self.power = float(checks.check_in_range(f"{name}: power", power, -1e3, 1e3))
        self.rule = resolve(method, argument=f"{name}: method")
        self.eps = checks.check_positive(f"{name}: eps", eps)
        self.trace_norm = bool(trace_norm)
        self.output = checks.check_choice(f"{name}: output", output, ("triu", "full"))
        self.compute_dtype = compute_dtype
        self.reduction: Optional[nn.Module] = None
        self.channels = in_channels
        if reduced_channels is not None:
            checks.check_int_at_least(f"{name}: reduced_channels", reduced_channels, 1)
            factory = {"device": device, "dtype": dtype}
            self.reduction = nn.Sequential(
                nn.Conv2d(in_channels, reduced_channels, 1, bias=False, **factory),  # type: ignore[arg-type]
                nn.BatchNorm2d(reduced_channels, **factory),  # type: ignore[arg-type]
                nn.ReLU(inplace=True),
            )
            self.channels = reduced_channels

    @property
    def output_size(self) -> int:
        d = self.channels
        return d * (d + 1) // 2 if self.output == "triu" else d * d

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample channel covariance ``Σ + eps · (tr Σ / d) · I`` of (N, d, H, W) in the
        working precision (float64 by default): the ridge is relative to the mean eigenvalue,
        so the head behaves the same at every activation scale (``eps`` absolute for an all-zero
        map)."""
        N, d = x.shape[:2]
        work = x.reshape(N, d, -1).to(working_dtype(x.dtype, self.compute_dtype))
        centered = work - work.mean(-1, keepdim=True)
        covariance = centered @ centered.mT / max(work.shape[-1], 1)
        covariance = (covariance + covariance.mT) / 2
        mean_eigenvalue = covariance.diagonal(dim1=-2, dim2=-1).mean(-1).detach()
        ridge = self.eps * torch.where(mean_eigenvalue > 0, mean_eigenvalue, 1.0)
        eye = torch.eye(d, dtype=work.dtype, device=work.device)
        return covariance + ridge.view(-1, 1, 1) * eye

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"{name}: expected (N, {self.in_channels}, H, W) input (got {shape})")
        if x.shape[0] == 0:
            raise ShapeError(
                f"{name}: expected at least one sample (got an empty batch, shape {tuple(x.shape)})"
            )
        if self.reduction is not None:
            x = self.reduction(x)
        covariance = self.covariance(x)
        if self.trace_norm:
            trace = covariance.diagonal(dim1=-2, dim2=-1).sum(-1)
            covariance = covariance / trace.view(-1, 1, 1)
        dtype = self.compute_dtype  # the covariance is symmetric by construction
        if self.function == "log":
            pooled = logm(covariance, self.rule, compute_dtype=dtype, check_symmetric=False)
        else:
            p = 0.5 if self.function == "sqrt" else self.power
            pooled = powm(covariance, p, self.rule, compute_dtype=dtype, check_symmetric=False)
        pooled = pooled.to(x.dtype)
        return symmetric_to_vector(pooled) if self.output == "triu" else pooled

    def extra_repr(self) -> str:
        function = f"power={self.power:g}" if self.function == "power" else self.function
        return (
            f"{self.in_channels}, channels={self.channels}, function={function}, "
            f"method={self.rule.describe()}, eps={self.eps}, trace_norm={self.trace_norm}, "
            f"output={self.output!r}"
        )


class BiMap(nn.Module):
    """SPDNet's bilinear map ``Y = Wᵀ X W`` with ``W`` (in, out) orthonormal columns
    (``out <= in``), one ``W`` per channel, kept orthonormal by
    ``torch.nn.utils.parametrizations.orthogonal`` (any torch optimizer works).

    ``orthogonal_map``: that parametrization's map. ``"householder"`` (default) is torch's
    Householder map with the reflections' product formed in closed form
    (:mod:`stableeig.nn.orthogonal`: same parameters, state dict and ``W`` to rounding,
    without ``householder_product``'s per-reflector backward loop); ``"cayley"`` and
    ``"matrix_exp"`` are torch's. The maps parametrize the same set of ``W`` differently:
    a state dict loads only into a layer with the same map (``stableeig bench users
    --only spdnet`` times a 22 → 16 SPDNet step with each).

    Shape:
        (N, in, in) or (N, channels, in, in) → (N, out, out) or (N, channels, out, out).

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.eye(6).expand(2, 6, 6)
        >>> se.nn.BiMap(6, 3)(X).shape
        torch.Size([2, 3, 3])
    """

    def __init__(
        self,
        in_size: int,
        out_size: int,
        channels: int = 1,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        orthogonal_map: str = "householder",
    ) -> None:
        super().__init__()
        self.orthogonal_map = checks.check_choice(
            "BiMap: orthogonal_map", orthogonal_map, ("householder", "cayley", "matrix_exp")
        )
        self.in_size = checks.check_int_at_least("BiMap: in_size", in_size, 1)
        self.out_size = checks.check_int_at_least("BiMap: out_size", out_size, 1)
        self.channels = checks.check_int_at_least("BiMap: channels", channels, 1)
        if out_size > in_size:
            raise ArgumentError(
                f"BiMap: expected out_size <= in_size = {in_size} (got out_size = {out_size})"
            )
        self.weight = nn.Parameter(
            torch.empty(channels, in_size, out_size, device=device, dtype=dtype)
        )
        nn.init.orthogonal_(self.weight)
        orthogonal_weight(self, "weight", orthogonal_map)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = _check_spd_input("BiMap", X, self.in_size)
        if X.dim() == 3 and self.channels != 1:
            raise ShapeError(
                f"BiMap: expected (N, {self.channels}, n, n) input for {self.channels} "
                f"channels (got shape {tuple(X.shape)})"
            )
        if X.dim() == 4 and X.shape[1] != self.channels:
            raise ShapeError(
                f"BiMap: expected {self.channels} channels in dimension 1 (got shape "
                f"{tuple(X.shape)})"
            )
        original = self.parametrizations.weight.original  # type: ignore[union-attr]
        if original.dtype in (torch.float16, torch.bfloat16) and original.device.type == "cpu":
            raise DTypeError(
                f"BiMap: expected float32 or float64 weights on the CPU (got {original.dtype}: "
                "the orthogonal parametrization's QR has no half-precision CPU kernel); keep "
                "the layer in float32 and pass half-precision input, which it accepts"
            )
        W = self.weight.to(X.dtype)
        Y = W.mT @ (X if X.dim() == 4 else X.unsqueeze(1)) @ W
        Y = (Y + Y.mT) / 2
        return Y if X.dim() == 4 else Y.squeeze(1)

    def extra_repr(self) -> str:
        text = f"{self.in_size}, {self.out_size}, channels={self.channels}"
        if self.orthogonal_map != "householder":
            text += f", orthogonal_map={self.orthogonal_map!r}"
        return text


class ReEig(nn.Module):
    """SPDNet's rectified eigenvalues ``V max(Λ, eps) Vᵀ`` (subgradient 1 above ``eps``, 0 at
    or below, as SPDNet); exact and finite where ReEig makes eigenvalues tie at ``eps``.

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.diag(torch.tensor([0.1, 2.0])).unsqueeze(0)
        >>> se.nn.ReEig(0.5)(X).diagonal(dim1=1, dim2=2)
        tensor([[0.5000, 2.0000]])
    """

    def __init__(
        self,
        eps: float = 1e-4,
        method: Method = "loewner",
        compute_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.eps = checks.check_positive("ReEig: eps", eps)
        self.rule = resolve(method, argument="ReEig: method")
        self.compute_dtype = compute_dtype

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = _check_spd_input("ReEig", X)
        return clamp_eigenvalues(
            X, min=self.eps, backward=self.rule, compute_dtype=self.compute_dtype
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps}, method={self.rule.describe()}"


class LogEig(nn.Module):
    """``log X`` of SPD matrices (SPDNet's LogEig), flattened to the norm-preserving upper
    triangle when ``vectorize`` (default): (N, [C,] n, n) → (N, [C ·] n (n + 1) / 2)."""

    def __init__(
        self,
        vectorize: bool = True,
        method: Method = "loewner",
        compute_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.vectorize = bool(vectorize)
        self.rule = resolve(method, argument="LogEig: method")
        self.compute_dtype = compute_dtype

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = _check_spd_input("LogEig", X)
        L = logm(X, self.rule, compute_dtype=self.compute_dtype)
        return symmetric_to_vector(L).flatten(1) if self.vectorize else L

    def extra_repr(self) -> str:
        return f"vectorize={self.vectorize}, method={self.rule.describe()}"


class ExpEig(nn.Module):
    """``exp S`` of symmetric matrices (the inverse of LogEig before vectorization)."""

    def __init__(
        self, method: Method = "loewner", compute_dtype: Optional[torch.dtype] = None
    ) -> None:
        super().__init__()
        self.rule = resolve(method, argument="ExpEig: method")
        self.compute_dtype = compute_dtype

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        S = _check_spd_input("ExpEig", S)
        return expm(S, self.rule, compute_dtype=self.compute_dtype)

    def extra_repr(self) -> str:
        return f"method={self.rule.describe()}"


class SPDBatchNorm(nn.Module):
    """Riemannian batch normalization of SPD matrices: center at the batch mean, then move
    to a learnable SPD bias ``B = exp(S)`` (``S`` symmetric, the parameter ``bias``; starts
    at 0, i.e. the identity). Two geometries:

    - ``mean="log-euclidean"``: ``exp(log X - M + S)`` with ``M`` the batch mean of
      ``log X``; ``running_mean`` averages ``M`` (a symmetric matrix) for eval.
    - ``mean="affine-invariant"`` (Brooks et al., NeurIPS 2019): ``B^{1/2} G^{-1/2} X
      G^{-1/2} B^{1/2}`` with ``G`` the Karcher mean of the batch after ``karcher_steps``
      steps from the arithmetic mean (:func:`stableeig.airm_mean`; gradients flow through
      it); ``running_mean`` (an SPD matrix, starts at the identity) moves along the
      geodesic towards ``G`` by ``momentum`` (:func:`stableeig.airm_geodesic`).

    ``momentum=None`` averages cumulatively as BatchNorm does (factor ``1/k`` at the ``k``-th
    batch: the arithmetic mean of the batch means of the logs, or the inductive geodesic mean);
    with :meth:`reset_running_stats` this recalibrates the running mean on frozen weights.

    Args:
        n: matrix size. momentum: of the running mean, in [0, 1], or None. Default: 0.1.
        mean: ``"log-euclidean"`` or ``"affine-invariant"``. Default: ``"log-euclidean"``.
        karcher_steps: Karcher-flow steps per batch (affine-invariant), >= 1. Default: 1.
        method, compute_dtype: as the other layers.

    Shape:
        (N, n, n) or (N, C, n, n) → the same; one mean over ``N`` (and ``C``).
    """

    def __init__(
        self,
        n: int,
        momentum: Optional[float] = 0.1,
        method: Method = "loewner",
        compute_dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        mean: str = "log-euclidean",
        karcher_steps: int = 1,
    ) -> None:
        super().__init__()
        self.n = checks.check_int_at_least("SPDBatchNorm: n", n, 1)
        self.momentum = (
            None
            if momentum is None
            else float(checks.check_in_range("SPDBatchNorm: momentum", momentum, 0, 1))
        )
        self.mean = checks.check_choice("SPDBatchNorm: mean", mean, MEANS)
        self.karcher_steps = checks.check_int_at_least(
            "SPDBatchNorm: karcher_steps", karcher_steps, 1
        )
        self.rule = resolve(method, argument="SPDBatchNorm: method")
        self.compute_dtype = compute_dtype
        self.bias = nn.Parameter(torch.zeros(n, n, device=device, dtype=dtype))
        self.register_buffer("running_mean", torch.empty(n, n, device=device, dtype=dtype))
        self.register_buffer("num_batches_tracked", torch.tensor(0, device=device))
        self.reset_running_stats()

    def reset_running_stats(self) -> None:
        """The running mean back to the identity (0 in the log domain), no batches tracked."""
        running = self.get_buffer("running_mean")
        with torch.no_grad():
            running.copy_(torch.eye(self.n) if self.mean != "log-euclidean" else torch.zeros(1))
            self.get_buffer("num_batches_tracked").zero_()

    def _factor(self) -> float:
        """The running mean's update factor for this batch (BatchNorm's rule)."""
        if self.momentum is not None:
            return self.momentum
        return 1.0 / (float(self.get_buffer("num_batches_tracked")) + 1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = _check_spd_input("SPDBatchNorm", X, self.n)
        if self.training and X.shape[0] < 2:
            raise ValueError(  # BatchNorm's words
                f"Expected more than 1 value per channel when training, got input size {X.size()}"
            )
        symmetric_bias = (self.bias + self.bias.mT) / 2
        if self.mean == "log-euclidean":
            return self._log_euclidean(X, symmetric_bias)
        return self._affine_invariant(X, symmetric_bias)

    def _track(self, update: torch.Tensor) -> None:
        with torch.no_grad():
            self.get_buffer("running_mean").copy_(update)
            self.get_buffer("num_batches_tracked").add_(1)

    def _log_euclidean(self, X: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        L = logm(X, self.rule, compute_dtype=self.compute_dtype)
        running = self.get_buffer("running_mean")
        if self.training:
            mean = L.flatten(0, -3).mean(0)
            self._track(running.lerp(mean.detach().to(running.dtype), self._factor()))
        else:
            mean = running.to(L.dtype)
        return expm(L - mean + bias.to(L.dtype), self.rule, compute_dtype=self.compute_dtype)

    def _affine_invariant(self, X: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        running = self.get_buffer("running_mean")
        if self.training:
            G = airm_mean(
                X.flatten(0, -3),
                backward=self.rule,
                steps=self.karcher_steps,
                compute_dtype=self.compute_dtype,
            )
            with torch.no_grad():
                moved = airm_geodesic(
                    running, G.detach(), self._factor(), compute_dtype=self.compute_dtype
                )
            self._track(moved.to(running.dtype))
        else:  # no decomposition of X below: check what logm would have checked
            _check_positive_definite("SPDBatchNorm: input", X)
            G = running.to(X.dtype)
        work = self.compute_dtype  # bias and G are symmetric by construction
        half_bias = expm(bias.to(X.dtype) / 2, self.rule, compute_dtype=work, check_symmetric=False)
        C = half_bias @ inv_sqrtm(G, self.rule, compute_dtype=work, check_symmetric=False)
        Y = C @ X @ C.mT
        return (Y + Y.mT) / 2

    def extra_repr(self) -> str:
        return (
            f"{self.n}, momentum={self.momentum}, mean={self.mean!r}"
            + (f", karcher_steps={self.karcher_steps}" if self.mean != "log-euclidean" else "")
            + f", method={self.rule.describe()}"
        )
