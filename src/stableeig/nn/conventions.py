"""Where the layers' arithmetic may follow the authors' reference code instead of ours: one
frozen record of named switches per convention, read field by field where each matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .. import _validation as checks

__all__ = ["CONVENTIONS", "Convention", "get_convention"]


@dataclass(frozen=True)
class Convention:
    """The places where ``"reference"`` reproduces the authors' code (the README's fidelity
    table measures each).

    Attributes:
        name: the registry key.
        uniform_weight_init: affine weight starts ``uniform_()`` (the reference's
            ``weight.data.uniform_()``) instead of 1 (BatchNorm's).
        literal_truncation: the SVD-PI truncation tests exactly as the reference writes them
            (``λ <= eps``, energy ``>= 1 - eps``, step-by-step deflation in the working dtype)
            instead of round-off-aware thresholds and closed-form Rayleigh quotients.
        rayleigh_eigenvalues: whiten with the deflated Rayleigh quotients as eigenvalues.
        unbiased_standardization: PCA standardizes by the unbiased batch variance.
        zero_projector_start: PCA's running projector starts at 0 instead of the identity.
    """

    name: str
    uniform_weight_init: bool = False
    literal_truncation: bool = False
    rayleigh_eigenvalues: bool = False
    unbiased_standardization: bool = False
    zero_projector_start: bool = False


_REGISTRY = {
    "stableeig": Convention("stableeig"),
    "reference": Convention("reference", True, True, True, True, True),
}
CONVENTIONS = tuple(_REGISTRY)


def get_convention(value: Union[str, Convention], argument: str = "convention") -> Convention:
    """The :class:`Convention` for a registry name (or the record itself)."""
    if isinstance(value, Convention):
        return value
    return _REGISTRY[checks.check_choice(argument, value, CONVENTIONS)]
