"""stableeig: stable, differentiable symmetric eigendecomposition for deep networks.

Scope: real symmetric and symmetric positive (semi)definite matrices, batched (..., n, n).
"""

from . import exceptions, nn, rules
from ._precision import default_compute_dtype
from ._validation import host_checks
from .distances import (
    airm_distance,
    bures_wasserstein,
    bures_wasserstein_distance,
    frechet_distance,
    log_euclidean_distance,
    trace_sqrt_product,
)
from .eigenvectors import ExtremeEigenvector, extreme_eigenvector
from .eigh import EighResult, eigh
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
from .features import frechet_distance_from_features, nuclear_norm
from .matrix_functions import clamp_eigenvalues, expm, funm, logm, powm, softplusm
from .means import airm_geodesic, airm_mean, log_euclidean_mean
from .power_iteration import power_iteration_eigh
from .rules import RULES, Analytic, Clip, Loewner, Power, PowerIteration, Taylor
from .spectral import inv_sqrtm, sqrtm, top_k_projector
from .streaming import FeatureStatistics
from .transfer import whiten_colour

__version__ = "0.8.1"

__all__ = [
    "RULES",
    "Analytic",
    "ArgumentError",
    "Clip",
    "DTypeError",
    "EighResult",
    "ExtremeEigenvector",
    "FeatureStatistics",
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
    "airm_distance",
    "airm_geodesic",
    "airm_mean",
    "bures_wasserstein",
    "bures_wasserstein_distance",
    "clamp_eigenvalues",
    "default_compute_dtype",
    "eigh",
    "exceptions",
    "expm",
    "extreme_eigenvector",
    "frechet_distance",
    "frechet_distance_from_features",
    "funm",
    "host_checks",
    "inv_sqrtm",
    "log_euclidean_distance",
    "log_euclidean_mean",
    "logm",
    "nn",
    "nuclear_norm",
    "power_iteration_eigh",
    "powm",
    "rules",
    "softplusm",
    "sqrtm",
    "top_k_projector",
    "trace_sqrt_product",
    "whiten_colour",
]
