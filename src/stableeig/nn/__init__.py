"""Layers built on stable eigendecomposition: ZCA whitening, PCA denoising, covariance
pooling and SPD-manifold layers."""

from . import functional, transforms
from ._base import GroupLayer
from ._checks import RankDeficientWarning
from .conventions import CONVENTIONS, Convention, get_convention
from .convert import convert_batchnorm
from .denoising import PCATransform
from .fold import LeafTracer, fold_eval, fold_eval_model
from .pca import PCADenoising1d, PCADenoising2d
from .spd import BiMap, CovariancePooling2d, ExpEig, LogEig, ReEig, SPDBatchNorm
from .transforms import GroupTransform, RunningValues
from .whitening import ZCATransform
from .zca import ZCAWhitening1d, ZCAWhitening2d

__all__ = [
    "CONVENTIONS",
    "BiMap",
    "Convention",
    "CovariancePooling2d",
    "ExpEig",
    "GroupLayer",
    "GroupTransform",
    "LeafTracer",
    "LogEig",
    "PCADenoising1d",
    "PCADenoising2d",
    "PCATransform",
    "RankDeficientWarning",
    "ReEig",
    "RunningValues",
    "SPDBatchNorm",
    "ZCATransform",
    "ZCAWhitening1d",
    "ZCAWhitening2d",
    "convert_batchnorm",
    "fold_eval",
    "fold_eval_model",
    "functional",
    "get_convention",
    "transforms",
]
