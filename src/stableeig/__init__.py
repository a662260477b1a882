"""stableeig: stable, differentiable symmetric eigendecomposition for deep networks.

Scope: real symmetric and symmetric positive (semi)definite matrices, batched (..., n, n).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.11.0"

# Public name -> the module that defines it ("": the name is a subpackage or module). They
# load together on the first access of any of them (PEP 562), so that importing stableeig
# (the command line's parser and help) does not import torch.
_EXPORTS: dict[str, str] = {
    "exceptions": "",
    "nn": "",
    "rules": "",
    "default_compute_dtype": "._precision",
    "host_checks": "._validation",
    "airm_distance": ".distances",
    "bures_wasserstein": ".distances",
    "bures_wasserstein_distance": ".distances",
    "frechet_distance": ".distances",
    "log_euclidean_distance": ".distances",
    "trace_sqrt_product": ".distances",
    "ExtremeEigenvector": ".eigenvectors",
    "extreme_eigenvector": ".eigenvectors",
    "EighResult": ".eigh",
    "eigh": ".eigh",
    "eigsh": ".partial",
    "eigh_driver": ".small",
    "generalized_funm": ".generalized",
    "ArgumentError": ".exceptions",
    "DTypeError": ".exceptions",
    "NonFiniteError": ".exceptions",
    "NotDifferentiableError": ".exceptions",
    "NotPositiveDefiniteError": ".exceptions",
    "NotSymmetricError": ".exceptions",
    "ShapeError": ".exceptions",
    "StableEigError": ".exceptions",
    "frechet_distance_from_features": ".features",
    "clamp_eigenvalues": ".matrix_functions",
    "expm": ".matrix_functions",
    "funm": ".matrix_functions",
    "logm": ".matrix_functions",
    "powm": ".matrix_functions",
    "softplusm": ".matrix_functions",
    "airm_geodesic": ".means",
    "airm_mean": ".means",
    "log_euclidean_mean": ".means",
    "power_iteration_eigh": ".power_iteration",
    "RULES": ".rules",
    "Analytic": ".rules",
    "Clip": ".rules",
    "Loewner": ".rules",
    "Power": ".rules",
    "PowerIteration": ".rules",
    "Taylor": ".rules",
    "inv_sqrtm": ".spectral",
    "sqrtm": ".spectral",
    "top_k_projector": ".spectral",
    "FeatureStatistics": ".streaming",
    "ProcrustesResult": ".alignment",
    "kabsch": ".alignment",
    "kabsch_rmsd": ".alignment",
    "procrustes": ".alignment",
    "grassmann_distance": ".subspaces",
    "principal_angles": ".subspaces",
    "low_rank": ".singular",
    "polar": ".singular",
    "singular_value_threshold": ".singular",
    "spectral_clip": ".singular",
    "special_orthogonalize": ".singular",
    "svd_funm": ".singular",
    "SVDResult": ".svd",
    "nuclear_norm": ".svd",
    "schatten_norm": ".svd",
    "svd": ".svd",
    "svdvals": ".svd",
    "whiten_colour": ".transfer",
}

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from . import exceptions, nn, rules
    from ._precision import default_compute_dtype
    from ._validation import host_checks
    from .alignment import ProcrustesResult, kabsch, kabsch_rmsd, procrustes
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
    from .features import frechet_distance_from_features
    from .generalized import generalized_funm
    from .matrix_functions import clamp_eigenvalues, expm, funm, logm, powm, softplusm
    from .means import airm_geodesic, airm_mean, log_euclidean_mean
    from .partial import eigsh
    from .power_iteration import power_iteration_eigh
    from .rules import RULES, Analytic, Clip, Loewner, Power, PowerIteration, Taylor
    from .singular import (
        low_rank,
        polar,
        singular_value_threshold,
        special_orthogonalize,
        spectral_clip,
        svd_funm,
    )
    from .small import eigh_driver
    from .spectral import inv_sqrtm, sqrtm, top_k_projector
    from .streaming import FeatureStatistics
    from .subspaces import grassmann_distance, principal_angles
    from .svd import SVDResult, nuclear_norm, schatten_norm, svd, svdvals
    from .transfer import whiten_colour


def _load() -> None:
    for name, module in _EXPORTS.items():
        loaded = importlib.import_module(module or f".{name}", __name__)
        globals()[name] = getattr(loaded, name) if module else loaded


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stableeig' has no attribute {name!r}")
    _load()
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module: importing the submodule ``stableeig.eigh`` binds it as an
    attribute of the package, where the public ``eigh`` is the function; that binding is
    dropped, so the name stays the function's (as ``from .eigh import eigh`` made it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
    "ProcrustesResult",
    "SVDResult",
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
    "eigh_driver",
    "eigsh",
    "exceptions",
    "expm",
    "extreme_eigenvector",
    "frechet_distance",
    "frechet_distance_from_features",
    "funm",
    "generalized_funm",
    "grassmann_distance",
    "host_checks",
    "inv_sqrtm",
    "kabsch",
    "kabsch_rmsd",
    "log_euclidean_distance",
    "log_euclidean_mean",
    "logm",
    "low_rank",
    "nn",
    "nuclear_norm",
    "polar",
    "power_iteration_eigh",
    "powm",
    "principal_angles",
    "procrustes",
    "rules",
    "schatten_norm",
    "singular_value_threshold",
    "softplusm",
    "special_orthogonalize",
    "spectral_clip",
    "sqrtm",
    "svd",
    "svd_funm",
    "svdvals",
    "top_k_projector",
    "trace_sqrt_product",
    "whiten_colour",
]
