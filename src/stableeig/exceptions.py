"""The library's exceptions: one root, :class:`StableEigError`.

Every error the library raises on purpose is a :class:`StableEigError`. Each is also the
built-in exception a Python user expects: value problems are ``ValueError``\\ s, dtype
problems ``TypeError``\\ s, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "DTypeError",
    "NonFiniteError",
    "NotDifferentiableError",
    "NotPositiveDefiniteError",
    "NotSymmetricError",
    "ShapeError",
    "StableEigError",
]


class StableEigError(Exception):
    """Root of every exception raised by stableeig."""


class ArgumentError(StableEigError, ValueError):
    """An argument has a value outside what the function accepts."""


class ShapeError(StableEigError, ValueError):
    """A tensor has the wrong number of dimensions or the wrong size."""


class DTypeError(StableEigError, TypeError):
    """A tensor (or argument) has a type or dtype the operation does not support."""


class NonFiniteError(StableEigError, ValueError):
    """A tensor holds NaN or Inf where finite values are required."""


class NotSymmetricError(StableEigError, ValueError):
    """A matrix is not symmetric within the tolerance of its dtype."""


class NotPositiveDefiniteError(StableEigError, ValueError):
    """A matrix has eigenvalues at or below zero where positive ones are required."""


class NotDifferentiableError(StableEigError, ValueError):
    """The requested derivative does not exist (it is infinite) at this input."""
