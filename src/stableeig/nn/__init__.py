"""Layers built on stable eigendecomposition: ZCA whitening and PCA denoising."""

from . import functional
from ._base import RankDeficientWarning
from .convert import convert_batchnorm
from .fold import fold_eval, fold_eval_model
from .pca import PCADenoising1d, PCADenoising2d
from .zca import ZCAWhitening1d, ZCAWhitening2d

__all__ = [
    "PCADenoising1d",
    "PCADenoising2d",
    "RankDeficientWarning",
    "ZCAWhitening1d",
    "ZCAWhitening2d",
    "convert_batchnorm",
    "fold_eval",
    "fold_eval_model",
    "functional",
]
