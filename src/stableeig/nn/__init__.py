"""Layers built on stable eigendecomposition: ZCA whitening and PCA denoising."""

__all__: list[str] = []
