"""stableeig: stable, differentiable symmetric eigendecomposition for deep networks.

Scope: real symmetric and symmetric positive (semi)definite matrices, batched (..., n, n).
"""

from . import exceptions, nn, rules
from ._validation import host_checks
from .eigh import eigh
from .exceptions import (
    ArgumentError,
    DTypeError,
    NonFiniteError,
    NotDifferentiableError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    ShapeError,
    StableEigError,
)
from .power_iteration import power_iteration_eigh
from .rules import RULES, Analytic, Clip, Loewner, Power, PowerIteration, Taylor
from .spectral import inv_sqrtm, sqrtm, top_k_projector

__version__ = "0.2.0"

__all__ = [
    "RULES",
    "Analytic",
    "ArgumentError",
    "Clip",
    "DTypeError",
    "Loewner",
    "NonFiniteError",
    "NotDifferentiableError",
    "NotPositiveDefiniteError",
    "NotSymmetricError",
    "Power",
    "PowerIteration",
    "ShapeError",
    "StableEigError",
    "Taylor",
    "__version__",
    "eigh",
    "exceptions",
    "host_checks",
    "inv_sqrtm",
    "nn",
    "power_iteration_eigh",
    "rules",
    "sqrtm",
    "top_k_projector",
]
