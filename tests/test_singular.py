"""Functions of singular values (issue 40, first part): ``svd_funm`` and ``polar`` with the
exact generalized Daleckii–Krein gradient, finite at tied singular values (I, exact
rotations, diag(2, 1, 1)) where ``torch.linalg.svd`` autograd is NaN; rectangular, batched,
float32 in float64 compute; a zero singular value raises only where the result is not
unique; the symmetric positive definite case equals ``funm``."""

from __future__ import annotations

import math

import pytest
import torch

import stableeig as se


def _rotation(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    return Q * torch.linalg.det(Q).sign()


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _diagonal(*values: float) -> torch.Tensor:
    return torch.diag(torch.tensor(values, dtype=torch.float64))


POINTS = {
    "I3": lambda: torch.eye(3, dtype=torch.float64),
    "diag(2,1,1)": lambda: _diagonal(2.0, 1.0, 1.0),
    "rotation": lambda: _rotation(3, 0),
    "rotated tie": lambda: _rotation(3, 1) @ _diagonal(3.0, 1.0, 1.0) @ _rotation(3, 2),
    "near tie 1e-9": lambda: _diagonal(1.0, 1.0 + 1e-9, 2.0),
    "tall 5x3": lambda: _randn(3, 5, 3),
    "wide 2x4": lambda: _randn(4, 2, 4),
    "batch": lambda: _randn(5, 2, 3, 4, 3),
}


@pytest.mark.parametrize("point", sorted(POINTS))
@pytest.mark.parametrize("function", ["polar", "tanh", "square"])
def test_gradcheck_at_ties_and_away(point: str, function: str) -> None:
    apply = {
        "polar": se.polar,
        "tanh": lambda X: se.svd_funm(X, torch.tanh),
        "square": lambda X: se.svd_funm(X, torch.square, lambda s: 2 * s),
    }[function]
    A = POINTS[point]().requires_grad_()
    assert torch.autograd.gradcheck(apply, (A,))


@pytest.mark.parametrize("point", ["I3", "diag(2,1,1)"])
def test_torch_svd_autograd_is_nan_where_ours_is_exact(point: str) -> None:
    A = POINTS[point]()
    G = torch.randn(3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    leaf = A.clone().requires_grad_()
    U, _, Vh = torch.linalg.svd(leaf)
    (G * (U @ Vh)).sum().backward()
    assert leaf.grad is not None and not bool(torch.isfinite(leaf.grad).all())
    ours = A.clone().requires_grad_()
    (G * se.polar(ours)).sum().backward()
    assert ours.grad is not None
    # at A with singular values s and U = V = I: ∂/∂A of ⟨G, polar⟩ = D⁺ ∘ skew(G)
    s = torch.linalg.svdvals(A)
    skew = (G - G.T) / 2
    torch.testing.assert_close(ours.grad, 2 / (s[:, None] + s[None, :]) * skew)


def test_values_and_the_symmetric_positive_definite_case() -> None:
    g = torch.Generator().manual_seed(7)
    X = torch.randn(6, 4, generator=g, dtype=torch.float64)
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    torch.testing.assert_close(se.polar(X), U @ Vh)
    torch.testing.assert_close(se.svd_funm(X, torch.tanh), (U * torch.tanh(s)) @ Vh)
    torch.testing.assert_close(se.polar(X.mT), (U @ Vh).mT)
    Q = se.polar(X)
    torch.testing.assert_close(Q.mT @ Q, torch.eye(4, dtype=torch.float64))
    S = X.mT @ X + torch.eye(4, dtype=torch.float64)  # SPD: singular values = eigenvalues
    leaf_a, leaf_b = S.clone().requires_grad_(), S.clone().requires_grad_()
    G = torch.randn(4, 4, generator=g, dtype=torch.float64)
    (G * se.svd_funm(leaf_a, torch.sqrt)).sum().backward()
    (G * se.sqrtm(leaf_b)).sum().backward()
    torch.testing.assert_close(se.svd_funm(S, torch.sqrt), se.sqrtm(S))
    assert leaf_a.grad is not None and leaf_b.grad is not None
    # the same derivative in every symmetric direction (sqrtm's gradient is symmetric)
    torch.testing.assert_close((leaf_a.grad + leaf_a.grad.mT) / 2, leaf_b.grad)


def test_float32_input_is_computed_in_float64_and_returned_in_float32() -> None:
    A = torch.eye(3)
    Q = se.polar(A.requires_grad_())
    assert Q.dtype == torch.float32
    Q.sum().backward()
    assert A.grad is not None and A.grad.dtype == torch.float32
    assert bool(torch.isfinite(A.grad).all())


def test_a_zero_singular_value_raises_only_where_the_result_is_not_unique() -> None:
    A = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)).requires_grad_()
    se.polar(A)  # a value: one of the orthogonal factors
    with pytest.raises(se.NotDifferentiableError, match=r"polar backward: .*σᵢ \+ σⱼ > 0"):
        se.polar(A).sum().backward()
    B = A.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda X: se.svd_funm(X, torch.tanh), (B,))  # f(0) = 0


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (torch.zeros(3), se.ShapeError, r"polar: A: expected \(\.\.\., m, n\)"),
        (torch.zeros(3, 0), se.ShapeError, "m, n >= 1"),
        (torch.zeros(3, 3, dtype=torch.int64), se.DTypeError, "real floating dtype"),
        (torch.full((2, 2), float("nan")), se.NonFiniteError, "polar: A: expected finite"),
        ([[1.0]], se.ShapeError, "got list"),
    ],
)
def test_bad_input_is_refused_by_name(value: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        se.polar(value)  # type: ignore[arg-type]


def test_vmap_and_compile_agree_with_eager() -> None:
    A = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eager = se.polar(A)
    compiled = torch.compile(se.polar, backend="eager")(A)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.func.vmap(se.polar)(A), eager)
    G = _randn(9, 3, 3)
    grads = torch.func.vmap(torch.func.grad(lambda X: (G * se.polar(X)).sum()))(A)
    for index in range(4):
        leaf = A[index].clone().requires_grad_()
        (G * se.polar(leaf)).sum().backward()
        torch.testing.assert_close(grads[index], leaf.grad)


# ---------------------------------------------------------------- rotations and alignment

ROTATION_POINTS = {
    "generic": lambda: _randn(10, 3, 3),
    "I3": lambda: torch.eye(3, dtype=torch.float64),
    "rotation": lambda: _rotation(3, 0),
    "det < 0, distinct": lambda: _diagonal(3.0, 2.0, -1.0),
    "det > 0, two tied": lambda: _rotation(3, 1) @ _diagonal(2.0, 1.0, 1.0),
    "rank n - 1": lambda: _diagonal(2.0, 1.0, 0.0),
    "batch 4x4": lambda: _randn(11, 2, 4, 4),
}


@pytest.mark.parametrize("point", sorted(ROTATION_POINTS))
def test_special_orthogonalize_gradcheck_and_determinant(point: str) -> None:
    A = ROTATION_POINTS[point]().requires_grad_()
    R = se.special_orthogonalize(A)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(A.shape[:-2], dtype=A.dtype))
    torch.testing.assert_close(R @ R.mT, torch.eye(A.shape[-1], dtype=A.dtype).expand_as(R))
    assert torch.autograd.gradcheck(se.special_orthogonalize, (A,))


def test_special_orthogonalize_not_unique_raises_or_zeroes_per_sample() -> None:
    """det < 0 with the two smallest singular values tied: the rotation is not unique."""
    bad = _diagonal(3.0, 1.0, -1.0)
    batch = torch.stack([bad, _randn(12, 3, 3)]).requires_grad_()
    with pytest.raises(se.NotDifferentiableError, match="got 1 of 2 matrices"):
        se.special_orthogonalize(batch).sum().backward()
    se.special_orthogonalize(batch, undefined="zero").sum().backward()
    assert batch.grad is not None
    assert float(batch.grad[0].abs().max()) == 0.0
    alone = batch[1].detach().clone().requires_grad_()
    se.special_orthogonalize(alone).sum().backward()
    torch.testing.assert_close(batch.grad[1], alone.grad)  # the others: their exact gradient
    with pytest.raises(se.ArgumentError, match="undefined"):
        se.special_orthogonalize(bad, undefined="nan")


def _points(shape: str) -> torch.Tensor:
    if shape == "square (tied singular values)":
        return torch.tensor([[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], dtype=torch.float64)
    if shape == "regular tetrahedron (all tied)":
        return torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
                            dtype=torch.float64)  # fmt: skip
    return _randn(13, 8, 3)


@pytest.mark.parametrize("shape", ["generic", "square (tied singular values)",
                                   "regular tetrahedron (all tied)"])  # fmt: skip
@pytest.mark.parametrize("options", [{}, {"scale": True}, {"reflection": True}])
def test_procrustes_recovers_the_transform_with_exact_gradients(
    shape: str, options: dict[str, bool]
) -> None:
    X = _points(shape)
    R = _rotation(3, 5)
    Y = 1.5 * X @ R.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    fit = se.procrustes(X, Y, scale=True)
    torch.testing.assert_close(fit.rotation, R)
    torch.testing.assert_close(fit.scale, torch.tensor(1.5, dtype=torch.float64))
    torch.testing.assert_close(fit.translation, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    noisy = Y + 0.01 * _randn(14, *Y.shape)

    def rotation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return se.procrustes(x, y, **options).rotation

    if options.get("reflection") and shape.startswith("square"):
        # planar points with reflections allowed: the mirror image fits as well (not unique)
        with pytest.raises(se.NotDifferentiableError, match="not unique"):
            rotation(X.clone().requires_grad_(), noisy).sum().backward()
        return
    assert torch.autograd.gradcheck(rotation, (X.clone().requires_grad_(),
                                               noisy.clone().requires_grad_()))  # fmt: skip


def test_the_kabsch_people_copy_is_nan_at_a_symmetric_frame_where_ours_is_exact() -> None:
    """The square's cross-covariance has tied singular values: differentiating U and V one by
    one (the SVD-based Kabsch people copy) is NaN; ours matches finite differences."""
    X = _points("square (tied singular values)")
    Y = X.clone()

    def copied(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x - x.mean(0), y - y.mean(0)
        U, _, Vh = torch.linalg.svd(y.T @ x)
        d = torch.sign(torch.linalg.det(U @ Vh))
        return U @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ Vh

    leaf = X.clone().requires_grad_()
    (copied(leaf, Y) * _randn(15, 3, 3)).sum().backward()
    assert leaf.grad is not None and not bool(torch.isfinite(leaf.grad).all())
    assert torch.autograd.gradcheck(
        lambda x: se.procrustes(x, Y).rotation, (X.clone().requires_grad_(),)
    )


def test_collinear_points_and_padding() -> None:
    line = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=torch.float64)
    fine = _randn(16, 3, 3)
    X = torch.stack([line, fine]).requires_grad_()
    Y = torch.stack([line + 1, fine @ _rotation(3, 6).T])
    with pytest.raises(se.NotDifferentiableError, match="got 1 of 2"):
        se.procrustes(X, Y).rotation.sum().backward()
    se.procrustes(X, Y, undefined="zero").rotation.sum().backward()
    assert X.grad is not None and float(X.grad[0].abs().max()) == 0.0
    # padded points (weight 0) change nothing
    padded_x = torch.cat([fine, 100 * torch.ones(2, 3, dtype=torch.float64)])
    padded_y = torch.cat([fine @ _rotation(3, 6).T, -7 * torch.ones(2, 3, dtype=torch.float64)])
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        se.procrustes(padded_x, padded_y, weights=weights).rotation, _rotation(3, 6)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"Y": torch.zeros(4, 3)}, se.ShapeError, r"Y: expected the shape of X"),
        ({"weights": torch.zeros(5)}, se.ArgumentError, "not all 0"),
        ({"weights": -torch.ones(5)}, se.ArgumentError, "values >= 0"),
        ({"weights": torch.ones(4)}, se.ShapeError, r"weights: expected shape \(5,\)"),
        ({"Y": torch.full((5, 3), float("inf"))}, se.NonFiniteError, "procrustes: Y"),
    ],
)
def test_procrustes_refuses_bad_input_by_name(
    kwargs: dict[str, torch.Tensor], error: type, match: str
) -> None:
    arguments = {"X": torch.randn(5, 3), "Y": torch.randn(5, 3), **kwargs}
    with pytest.raises(error, match=match):
        se.procrustes(arguments.pop("X"), arguments.pop("Y"), **arguments)


@pytest.mark.parametrize(
    "name", ["polar", "svd_funm", "special_orthogonalize", "procrustes", "low_rank"]
)
def test_compiled_whole_with_the_checks_on_equals_eager(name: str) -> None:
    """fullgraph=True (0 graph breaks): the backward's checks become in-graph assertions."""
    apply = {
        "low_rank": lambda X: se.low_rank(X, 2),
        "polar": se.polar,
        "svd_funm": lambda X: se.svd_funm(X, torch.tanh),
        "special_orthogonalize": se.special_orthogonalize,
        "procrustes": lambda X: se.procrustes(X, X.detach() + 0.1).rotation,
    }[name]
    A = _randn(19, 4, 3, 3)
    G = _randn(20, 4, 3, 3)
    torch._dynamo.reset()
    compiled = torch.compile(apply, fullgraph=True, backend="aot_eager")
    leaf_c, leaf_e = A.clone().requires_grad_(), A.clone().requires_grad_()
    out_c, out_e = compiled(leaf_c), apply(leaf_e)
    (G * out_c).sum().backward()
    (G * out_e).sum().backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(leaf_c.grad, leaf_e.grad)


# ---------------------------------------------------------------- subspaces


def _subspaces(a: float, b: float, seed: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    """Bases of two planes in R⁵ at principal angles a and b, rotated at random, with
    non-orthonormal bases (mixed columns)."""
    e = torch.eye(5, dtype=torch.float64)
    X = e[:, :2]
    Y = torch.stack([math.cos(a) * e[0] + math.sin(a) * e[2],
                     math.cos(b) * e[1] + math.sin(b) * e[3]], dim=1)  # fmt: skip
    Q = torch.linalg.qr(_randn(seed, 5, 5))[0]
    mix = torch.tensor([[2.0, 1.0], [0.5, 1.0]], dtype=torch.float64)
    return Q @ X @ mix, Q @ Y @ mix.T


@pytest.mark.parametrize(("a", "b"), [(0.3, 1.2), (1e-10, 0.5), (1e-12, 1e-12), (0.7, 0.7),
                                      (0.0, 1.5707963267948966)])  # fmt: skip
def test_principal_angles_are_accurate_at_both_ends(a: float, b: float) -> None:
    X, Y = _subspaces(a, b)
    angles = se.principal_angles(X, Y)
    expected = torch.tensor(sorted([a, b]), dtype=torch.float64)
    torch.testing.assert_close(angles, expected, rtol=1e-9, atol=1e-15)
    arccos_only = torch.acos(torch.linalg.svdvals(
        torch.linalg.qr(X).Q.mT @ torch.linalg.qr(Y).Q).clamp(max=1)).flip(-1)  # fmt: skip
    if min(a, b) == 1e-10:  # what arccos alone gives a small angle
        assert float((arccos_only[0] - 1e-10).abs()) > 1e-9


@pytest.mark.parametrize(("a", "b"), [(0.3, 1.2), (0.7, 0.7), (0.4, 0.4)])
def test_grassmann_distance_gradcheck_also_where_angles_coincide(a: float, b: float) -> None:
    X, Y = _subspaces(a, b)
    torch.testing.assert_close(se.grassmann_distance(X, Y),
                               torch.tensor(math.hypot(a, b), dtype=torch.float64))  # fmt: skip
    assert torch.autograd.gradcheck(se.grassmann_distance, (X.requires_grad_(), Y.requires_grad_()))


def test_identical_subspaces_are_at_distance_0_with_a_zero_gradient() -> None:
    X, _ = _subspaces(0.3, 0.5)
    Y = (X @ torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)).requires_grad_()
    distance = se.grassmann_distance(X, Y)
    distance.backward()
    assert float(distance) < 1e-7 and Y.grad is not None
    assert bool(torch.isfinite(Y.grad).all())
    with pytest.raises(se.ShapeError, match=r"Y: expected 5 rows"):
        se.principal_angles(X, torch.zeros(4, 2, dtype=torch.float64))


def test_parameters_held_by_f_receive_their_gradient() -> None:
    """A learned singular-value threshold: ∂/∂τ of ⟨G, U relu(Σ - τ) Vᵀ⟩ = -Σ over the kept
    σ of uᵢᵀ G vᵢ (a parameter inside f was silently detached before)."""
    A = _randn(22, 5, 4)
    G = _randn(23, 5, 4)
    tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    leaf = A.clone().requires_grad_()
    (G * se.svd_funm(leaf, lambda s: torch.relu(s - tau))).sum().backward()
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    kept = s > 0.8
    expected = -((U.mT @ G @ Vh.mT).diagonal() * kept).sum()
    assert tau.grad is not None
    torch.testing.assert_close(tau.grad, expected)
    assert torch.autograd.gradcheck(
        lambda t: se.svd_funm(A, lambda s: torch.relu(s - t)),
        (tau.detach().clone().requires_grad_(),),
    )


def test_an_infinite_derivative_of_f_raises_never_nan() -> None:
    """f = √|σ - 1| has an infinite derivative at σ = 1: an error, not a NaN gradient."""
    A = _diagonal(1.0, 2.0, 3.0).requires_grad_()
    F = se.svd_funm(A, lambda s: (s - 1).abs().sqrt())
    with pytest.raises(se.NotDifferentiableError, match="infinite derivative of f"):
        F.sum().backward()


def test_thresholding_and_clipping_values_gradients_and_learned_parameters() -> None:
    A = _randn(24, 6, 4)
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    torch.testing.assert_close(se.singular_value_threshold(A, 0.9), (U * (s - 0.9).relu()) @ Vh)
    torch.testing.assert_close(se.spectral_clip(A, 1.2), (U * s.clamp(max=1.2)) @ Vh)
    start = A.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda X: se.singular_value_threshold(X, 0.9), (start,))
    assert torch.autograd.gradcheck(lambda X: se.spectral_clip(X, 1.2), (start,))
    # the identity: every singular value tied, thresholded or clipped together
    eye = torch.eye(3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda X: se.singular_value_threshold(X, 0.5), (eye,))
    tau = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    se.singular_value_threshold(A, tau).sum().backward()
    kept = s > 0.9
    expected = -((U.mT @ torch.ones_like(A) @ Vh.mT).diagonal() * kept).sum()
    assert tau.grad is not None
    torch.testing.assert_close(tau.grad, expected)
    with pytest.raises(se.ArgumentError, match="tau"):
        se.singular_value_threshold(A, -1.0)
    with pytest.raises(se.ShapeError, match="0-dim"):
        se.spectral_clip(A, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("point", ["tall 5x3", "wide 2x4", "batch", "diag(3,2,2,1)"])
@pytest.mark.parametrize("k", [1, 2])
def test_low_rank_values_and_exact_gradients(point: str, k: int) -> None:
    A = _diagonal(3.0, 2.0, 2.0, 1.0) if point == "diag(3,2,2,1)" else POINTS[point]()
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    expected = (U[..., :, :k] * s[..., None, :k]) @ Vh[..., :k, :]
    torch.testing.assert_close(se.low_rank(A, k), expected)
    if point == "diag(3,2,2,1)" and k == 2:  # the cut inside the tie 2 = 2: not unique
        leaf = A.clone().requires_grad_()
        with pytest.raises(se.NotDifferentiableError, match="cut inside tied"):
            se.low_rank(leaf, k).sum().backward()
        return
    assert torch.autograd.gradcheck(lambda X: se.low_rank(X, k), (A.clone().requires_grad_(),))


def test_low_rank_zero_policy_and_errors() -> None:
    tied = _diagonal(3.0, 2.0, 2.0)
    batch = torch.stack([tied, _randn(25, 3, 3)]).requires_grad_()
    se.low_rank(batch, 2, undefined="zero").sum().backward()
    assert batch.grad is not None and float(batch.grad[0].abs().max()) == 0.0
    alone = batch[1].detach().clone().requires_grad_()
    se.low_rank(alone, 2).sum().backward()
    torch.testing.assert_close(batch.grad[1], alone.grad)
    with pytest.raises(se.ArgumentError, match="k"):
        se.low_rank(tied, 4)
