"""Input checks and error messages, in one place.

Every public entry point validates its arguments here, once, before any work is done.
Messages follow the form ``"<name>: expected <what> (got <what was received>)"``.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import torch
from torch._subclasses.fake_tensor import FakeTensor  # loaded by `import torch` already

from .exceptions import (
    ArgumentError,
    DTypeError,
    NonFiniteError,
    NotSymmetricError,
    ShapeError,
)

__all__ = [
    "assert_in_graph",
    "check_choice",
    "check_eigenvalues_finite",
    "check_finite",
    "check_in_range",
    "check_int_at_least",
    "check_k",
    "check_positive",
    "check_square_matrix",
    "check_symmetric",
    "host_checks",
    "host_checks_enabled",
    "in_graph",
    "readable",
]

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_HOST_CHECKS = [True]


def host_checks_enabled(*tensors: torch.Tensor) -> bool:
    """Whether the data-dependent checks run (each is one host synchronization): on unless
    turned off with :func:`host_checks`, off under ``torch.func.vmap`` (a batched tensor
    has no single truth value), and off when one of ``tensors`` has no values to read (the
    meta device, shape inference: :func:`readable`)."""
    if not all(map(readable, tensors)):
        return False
    if torch.compiler.is_compiling():
        return _HOST_CHECKS[0]
    return _HOST_CHECKS[0] and not _under_vmap()


def in_graph() -> bool:
    """Whether a value check must become an operation of the graph being compiled
    (:func:`assert_in_graph`) rather than a host synchronization: under ``torch.compile``
    with the host checks on (a ``bool()`` there would break the graph)."""
    return torch.compiler.is_compiling() and _HOST_CHECKS[0]


def assert_in_graph(condition: torch.Tensor, message: str) -> None:
    """The check as an asynchronous assertion inside the compiled graph: when the compiled
    code runs, a false ``condition`` raises ``RuntimeError(message)`` (no graph break, no
    host sync; on a GPU the error surfaces at the next synchronization)."""
    torch._assert_async(condition, message)


def readable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` has values to read: not on the meta device, not a FakeTensor
    (shape inference), so that a value check can run."""
    return tensor.device.type != "meta" and not isinstance(tensor, FakeTensor)


def _under_vmap() -> bool:
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    vmap = torch._C._functorch.TransformType.Vmap
    return any(i.key() == vmap for i in retrieve_all_functorch_interpreters())


@contextlib.contextmanager
def host_checks(enabled: bool) -> Iterator[None]:
    """Turn the checks that read tensor values on the host on or off inside a ``with`` block.

    Under ``torch.compile`` the checks stay on without a graph break: each becomes an
    asynchronous assertion in the graph (``torch._assert_async``), which raises
    ``RuntimeError`` with the same "expected ..." message (our typed errors are raised in
    eager mode only). Off, nothing is checked and nothing synchronizes; what is lost:
    non-finite input, asymmetry and positivity are not checked (the result is NaN instead
    of an error), a Loewner gradient at a non-differentiable point is Inf/NaN instead of
    :class:`NotDifferentiableError`, and a layer's non-finite batch covariance is neither
    refused nor recomputed in float64 (the running statistics can then become NaN).
    Shapes, dtypes and arguments are still checked.

    Examples:
        >>> import torch, stableeig as se
        >>> with se.host_checks(False):
        ...     W = se.inv_sqrtm(torch.eye(3))
        >>> W.diagonal().tolist()
        [1.0, 1.0, 1.0]
    """
    previous = _HOST_CHECKS[0]
    _HOST_CHECKS[0] = bool(enabled)
    try:
        yield
    finally:
        _HOST_CHECKS[0] = previous


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in tensor.shape) + ")"


def check_square_matrix(name: str, tensor: object) -> torch.Tensor:
    """Check that ``tensor`` is a floating (..., n, n) tensor and return it."""
    if not isinstance(tensor, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor (got {type(tensor).__name__})")
    if tensor.dtype not in FLOATING_DTYPES:
        raise DTypeError(
            f"{name}: expected a real floating dtype (float16, bfloat16, float32, float64) "
            f"(got {tensor.dtype})"
        )
    if tensor.ndim < 2:
        raise ShapeError(
            f"{name}: expected a (..., n, n) batch of square matrices with at least 2 "
            f"dimensions (got shape {_shape(tensor)})"
        )
    if tensor.shape[-1] != tensor.shape[-2]:
        raise ShapeError(
            f"{name}: expected square matrices in the last two dimensions (..., n, n) "
            f"(got shape {_shape(tensor)})"
        )
    return tensor


def max_abs(tensor: torch.Tensor) -> torch.Tensor:
    """``max |entry|`` as a 0-dim tensor (NaN if any entry is NaN), in one pass without a
    temporary: ``aminmax`` measured 8× faster than ``vector_norm(ord=inf)`` and 6× faster
    than ``abs().amax()`` on a CPU (128 × 256×256 float32)."""
    low, high = torch.aminmax(tensor)
    return torch.maximum(-low, high)


HOST_READ_MAX_ENTRIES = 64
"""A CPU tensor with at most this many entries is checked by reading its values once
(``tolist``) and testing them in Python, where the kernels of a check (about ten for the
finite-and-symmetric test) cost more than the arithmetic: a 3×3 ``logm`` fwd+bwd went
from 2.40× to 2.16–2.19× ``torch.linalg.eigh`` autograd (``benchmarks/call_overhead.py``)."""


def _small_values(tensor: torch.Tensor) -> Optional[list[float]]:
    """The entries of a small CPU tensor as Python floats (exact), else None."""
    if tensor.device.type != "cpu" or tensor.numel() > HOST_READ_MAX_ENTRIES:
        return None
    return tensor.detach().reshape(-1).tolist()


def finite_flag(tensor: torch.Tensor) -> Union[bool, torch.Tensor]:
    """Whether every entry of ``tensor`` is finite: for a small CPU tensor a ``bool`` read on
    the host; else a 0-dim bool tensor, no host sync, that a sum is finite (``|s| <= dtype
    max``, two kernels where ``torch.isfinite`` runs four; a sum is finite only if every
    term is, and a sum that overflowed from finite terms reads as not finite)."""
    values = _small_values(tensor)
    if values is not None:
        return all(map(math.isfinite, values))
    total = tensor.detach().sum()
    return total.abs() <= torch.finfo(total.dtype).max


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite (one host sync), in one pass where it is: a sum is
    finite only if every term is (NaN propagates, Inf stays or becomes NaN); a sum that
    overflowed from finite terms falls back to the entrywise test."""
    return bool(finite_flag(tensor)) or bool(torch.isfinite(tensor).all())


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` if ``tensor`` holds NaN or Inf (before LAPACK sees it)."""
    if in_graph():
        assert_in_graph(torch.isfinite(tensor).all(), f"{name}: expected finite entries")
        return
    if not host_checks_enabled(tensor):
        return
    tensor = tensor.detach()
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(
            f"{name}: expected finite entries (got {bad} NaN/Inf of {tensor.numel()} "
            f"in a tensor of shape {_shape(tensor)})"
        )


def check_eigenvalues_finite(name: str, w: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` if a decomposition of finite input overflowed (entries
    near the dtype's maximum): the eigenvalues ``w`` hold Inf/NaN."""
    if in_graph():
        message = f"{name}: expected eigenvalues within the range of {w.dtype}"
        assert_in_graph(torch.isfinite(w).all(), message)
        return
    if w.numel() and host_checks_enabled(w) and not all_finite(w):
        raise NonFiniteError(
            f"{name}: expected eigenvalues within the range of {w.dtype} (got Inf/NaN: the "
            "decomposition of finite entries this large overflowed); rescale A"
        )


def rounded_checked(name: str, what: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` rounded to the caller's ``dtype``; :class:`NonFiniteError` where a finite
    result of the working precision overflows it (float16 eigenvalues beyond 65504, a
    float32 singular value beyond 3.4e38), instead of returning Inf."""
    rounded = tensor.to(dtype)
    if dtype == tensor.dtype or tensor.numel() == 0:
        return rounded
    if in_graph():
        assert_in_graph(torch.isfinite(rounded).all(), f"{name}: expected {what} within {dtype}")
        return rounded
    if host_checks_enabled(rounded) and not all_finite(rounded.detach()):
        largest = float(tensor.detach().abs().amax())
        raise NonFiniteError(
            f"{name}: expected {what} within the range of {dtype} (got magnitudes up to "
            f"{largest:.4g}, Inf once rounded); rescale the input or pass a wider dtype"
        )
    return rounded


def symmetry_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for ``max|A - Aᵀ| <= tol * max|A|``: sqrt of the dtype's epsilon."""
    return float(torch.finfo(dtype).eps) ** 0.5


def check_symmetric(name: str, matrix: torch.Tensor) -> None:
    """Raise :class:`NotSymmetricError` if ``matrix`` is not symmetric within tolerance.

    The tolerance is ``sqrt(eps)`` of the dtype relative to the largest entry (about
    3.5e-4 for float32, 1.5e-8 for float64): round-off from building a covariance passes,
    a matrix that is not symmetric at all does not.
    """
    if in_graph():
        check_finite_symmetric(name, matrix, finite=False)
        return
    if matrix.numel() == 0 or not host_checks_enabled(matrix):
        return
    matrix = matrix.detach()  # reading values for a message touches no graph
    asym = max_abs(matrix - matrix.mT)
    scale = max_abs(matrix)
    tol = symmetry_tolerance(matrix.dtype)
    if bool(asym > tol * scale):
        hint = ""
        if matrix.dtype == torch.float64 and bool(
            asym <= symmetry_tolerance(torch.float32) * scale
        ):
            hint = (
                "; that is float32 round-off: for a float32 matrix cast to float64, symmetrize "
                "it ((A + A.mT) / 2), pass check_symmetric=False, or keep it float32"
            )
        raise NotSymmetricError(
            f"{name}: expected a symmetric matrix, max|A - Aᵀ| <= {tol:.2g} * max|A| "
            f"(got max|A - Aᵀ| = {float(asym):.3g} with max|A| = {float(scale):.3g}){hint}"
        )


def check_finite_symmetric(
    name: str, matrix: torch.Tensor, symmetric: bool = True, finite: bool = True
) -> None:
    """:func:`check_finite` and (when ``symmetric``) :func:`check_symmetric` with one host
    sync and three passes: the largest magnitude is finite only if every entry is, and it
    is also the symmetry test's scale. The errors are theirs."""
    if in_graph():
        if matrix.numel() == 0:
            return
        largest = max_abs(matrix.detach())
        if finite:
            assert_in_graph(torch.isfinite(largest), f"{name}: expected finite entries")
        if symmetric:
            asym = max_abs(matrix.detach() - matrix.detach().mT)
            tol = symmetry_tolerance(matrix.dtype)
            message = f"{name}: expected a symmetric matrix, max|A - Aᵀ| <= {tol:.2g} * max|A|"
            assert_in_graph(asym <= tol * largest, message)
        return
    if matrix.numel() == 0 or not host_checks_enabled(matrix):
        return
    matrix = matrix.detach()
    values = _small_values(matrix)
    if values is not None:
        fine = _finite_symmetric_on_host(values, matrix.shape[-1], symmetric, matrix.dtype)
    else:
        fine = bool(_finite_symmetric(matrix, symmetric))
    if not fine:
        check_finite(name, matrix)
        if symmetric:
            check_symmetric(name, matrix)


def _finite_symmetric(matrix: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """:func:`check_finite_symmetric`'s test as a 0-dim bool: three passes, no host sync."""
    largest = max_abs(matrix)
    fine = largest <= torch.finfo(matrix.dtype).max  # False for NaN and Inf
    if symmetric:
        asym = max_abs(matrix - matrix.mT)
        fine = fine & (asym <= symmetry_tolerance(matrix.dtype) * largest)
    return fine


def _finite_symmetric_on_host(
    values: list[float], n: int, symmetric: bool, dtype: torch.dtype
) -> bool:
    """:func:`check_finite_symmetric`'s test on the row-major entries of (..., n, n)."""
    if not all(map(math.isfinite, values)):
        return False
    if not symmetric:
        return True
    largest = max(map(abs, values))
    asymmetry = max(
        (
            abs(values[start + i * n + j] - values[start + j * n + i])
            for start in range(0, len(values), n * n)
            for i in range(n)
            for j in range(i)
        ),
        default=0.0,  # n = 1
    )
    return asymmetry <= symmetry_tolerance(dtype) * largest


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices`` and return it."""
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(
            f"{name}: expected one of {', '.join(map(repr, choices))} (got {value!r})"
        )
    return value


def as_integer(value: object) -> Optional[int]:
    """``value`` as a Python int where it is one (numpy and 0-d integer tensors included,
    through ``__index__``); None for bools and everything else."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_int_at_least(name: str, value: object, minimum: int) -> int:
    """Check that ``value`` is an integer ``>= minimum`` (bools are rejected; numpy integers
    are taken) and return it as an int."""
    integer = as_integer(value)
    if integer is None:
        raise ArgumentError(f"{name}: expected an integer >= {minimum} (got {value!r})")
    if integer < minimum:
        raise ArgumentError(f"{name}: expected an integer >= {minimum} (got {value})")
    return integer


def check_positive(name: str, value: object) -> float:
    """Check that ``value`` is a finite real number > 0 and return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"{name}: expected a positive number (got {value!r})")
    if not (value > 0 and value != float("inf")):
        raise ArgumentError(f"{name}: expected a finite number > 0 (got {value})")
    return float(value)


def check_in_range(
    name: str,
    value: object,
    low: float,
    high: float,
    open_low: bool = False,
    open_high: bool = False,
    integer: bool = False,
) -> float:
    """Check that ``value`` is a real number (an integer if ``integer``) in the interval
    from ``low`` to ``high`` (ends excluded where ``open_*``); NaN is never in it."""
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    kind = "an integer" if integer else "a number"
    number = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, number):
        raise ArgumentError(f"{name}: expected {kind} in {interval} (got {value!r})")
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):  # False for NaN
        raise ArgumentError(f"{name}: expected {kind} in {interval} (got {value!r})")
    return value


def check_k(name: str, k: object, n: int, allow_none: bool = False) -> Optional[int]:
    """Check ``1 <= k <= n`` (``None`` allowed when ``allow_none``)."""
    if k is None and allow_none:
        return None
    integer = as_integer(k)
    if integer is None or not 1 <= integer <= n:
        raise ArgumentError(f"{name}: expected an integer in [1, {n}] for n = {n} (got {k!r})")
    return integer
