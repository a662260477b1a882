"""Whitening–colouring (WCT) of 512-channel features, with the gradient to the style.

    python examples/style_transfer.py     # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

Ours (one call) beside PytorchWCT's ``whiten_and_color`` recipe as people copy it (two SVDs,
eigenvalues above 1e-5 kept), against a float64 reference; then the gradient of a loss on
the output with respect to the style features (learned styles, style losses), where the
copied code's SVD backward meets tied singular values of a rank-deficient style covariance.
"""

from __future__ import annotations

import os
import time

import torch

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
C, CONTENT, STYLE = (64, 400, 40) if SMALL else (512, 4096, 256)


def copied_wct(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """PytorchWCT's whiten_and_color as people copy it: an SVD of each covariance, the
    eigenvalues above 1e-5 kept (its ``+ I`` on the content covariance left out, so that
    both sides compute the same transform)."""
    c_mean = content.mean(1, keepdim=True)
    cc = content - c_mean
    _, c_e, c_v = torch.svd(cc @ cc.T / (content.shape[1] - 1), some=False)
    k_c = int((c_e > 1e-5).sum())
    s_mean = style.mean(1, keepdim=True)
    sc = style - s_mean
    _, s_e, s_v = torch.svd(sc @ sc.T / (style.shape[1] - 1), some=False)
    k_s = int((s_e > 1e-5).sum())
    whiten = c_v[:, :k_c] @ torch.diag(c_e[:k_c].pow(-0.5)) @ c_v[:, :k_c].T @ cc
    return s_v[:, :k_s] @ torch.diag(s_e[:k_s].pow(0.5)) @ s_v[:, :k_s].T @ whiten + s_mean


def main() -> None:
    g = torch.Generator().manual_seed(0)
    content = torch.relu(torch.randn(C, CONTENT, generator=g))
    style = torch.relu(torch.randn(C, STYLE, generator=g) * 2)  # STYLE < C: rank-deficient
    reference = se.whiten_colour(content.double(), style.double())
    for name, wct in (("stableeig", se.whiten_colour), ("copied (two SVDs)", copied_wct)):
        leaf = style.clone().requires_grad_()
        start = time.perf_counter()
        out = wct(content, leaf)
        out.square().mean().backward()
        seconds = time.perf_counter() - start
        error = float((out.detach().double() - reference).norm() / reference.norm())
        finite = leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
        print(f"{name:18s} value error vs float64 {error:.1e}; style gradient "
              f"{'finite' if finite else 'NaN/Inf'}; {seconds:.2f} s")  # fmt: skip
        if name == "stableeig":
            assert finite


if __name__ == "__main__":
    main()
