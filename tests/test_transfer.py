"""whiten_colour (issue 30): the WCT of style transfer against an eigh reference, exact
gradients in content and style (gradcheck), rank-deficient style statistics truncated."""

from __future__ import annotations

import pytest
import torch

import stableeig as se


def _features(c: int, n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(c, c, generator=g, dtype=torch.float64)
    return scale * mixing @ torch.randn(c, n, generator=g, dtype=torch.float64) + seed


def _reference(content: torch.Tensor, style: torch.Tensor, threshold: float) -> torch.Tensor:
    """PytorchWCT's recipe by eigh, with the threshold relative to the largest eigenvalue."""

    def truncated(cov: torch.Tensor, p: float) -> torch.Tensor:
        w, V = torch.linalg.eigh(cov)
        kept = w > threshold * w.max()
        values = torch.where(kept, torch.where(kept, w, 1.0).pow(p), 0.0)
        return (V * values) @ V.T

    centred = content - content.mean(1, keepdim=True)
    styled = style - style.mean(1, keepdim=True)
    c_cov = centred @ centred.T / (content.shape[1] - 1)
    s_cov = styled @ styled.T / (style.shape[1] - 1)
    return truncated(s_cov, 0.5) @ truncated(c_cov, -0.5) @ centred + style.mean(1, keepdim=True)


@pytest.mark.parametrize(("n_style", "alpha"), [(40, 1.0), (40, 0.6), (3, 1.0)])
def test_values_equal_the_eigh_reference(n_style: int, alpha: float) -> None:
    content, style = _features(6, 50, 0), _features(6, n_style, 1, scale=2.0)
    expected = alpha * _reference(content, style, 1e-5) + (1 - alpha) * content
    torch.testing.assert_close(se.whiten_colour(content, style, alpha=alpha), expected)
    if n_style > 6 and alpha == 1.0:  # full-rank style: the output has its covariance
        out = se.whiten_colour(content, style)
        torch.testing.assert_close(torch.cov(out), torch.cov(style))


def test_gradients_in_content_and_style_are_exact() -> None:
    content = _features(4, 12, 2).requires_grad_()
    style = _features(4, 9, 3, scale=1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, s: se.whiten_colour(c, s), (content, style))


def test_rank_deficient_style_gives_finite_gradients() -> None:
    content = _features(8, 30, 4).requires_grad_()
    style = _features(8, 3, 5).requires_grad_()  # rank 2 style covariance: 6 zero eigenvalues
    out = se.whiten_colour(content, style)
    out.square().sum().backward()
    assert content.grad is not None and style.grad is not None
    assert bool(torch.isfinite(content.grad).all() & torch.isfinite(style.grad).all())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(se.ShapeError, match="style: expected 4 channels"):
        se.whiten_colour(torch.randn(4, 10), torch.randn(5, 10))
    with pytest.raises(se.ArgumentError, match="alpha"):
        se.whiten_colour(torch.randn(4, 10), torch.randn(4, 10), alpha=2.0)


def test_the_threshold_is_relative_to_the_spectrum() -> None:
    """Issue 39.5: an absolute 1e-5 turned content of standard deviation 1e-3 (eigenvalues
    ~1e-6) into the style's mean; whitening is scale-free, and so is the cut now."""
    content, style = _features(6, 50, 0), _features(6, 40, 1, scale=2.0)
    small = se.whiten_colour(1e-3 * content, style)
    torch.testing.assert_close(small, se.whiten_colour(content, style))
    assert float((small - style.mean(1, keepdim=True)).abs().max()) > 0.1
