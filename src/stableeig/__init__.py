"""stableeig: stable, differentiable symmetric eigendecomposition for deep networks.

Scope: real symmetric and symmetric positive (semi)definite matrices, batched (..., n, n).
"""

from . import nn
from ._validation import (
    DTypeError,
    NonFiniteError,
    NotDifferentiableError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    ShapeError,
    StableEigError,
)
from .eigh import BACKWARD_RULES, eigh
from .power_iteration import power_iteration_eigh
from .spectral import SPECTRAL_BACKWARDS, inv_sqrtm, sqrtm, top_k_projector

__version__ = "0.1.0"

__all__ = [
    "BACKWARD_RULES",
    "SPECTRAL_BACKWARDS",
    "DTypeError",
    "NonFiniteError",
    "NotDifferentiableError",
    "NotPositiveDefiniteError",
    "NotSymmetricError",
    "ShapeError",
    "StableEigError",
    "__version__",
    "eigh",
    "inv_sqrtm",
    "nn",
    "power_iteration_eigh",
    "sqrtm",
    "top_k_projector",
]
