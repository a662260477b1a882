"""Issue 40, second part: second derivatives through the SVD functions (the Jordan–Wielandt
route to the symmetric second-order backward), checked against 40-digit mpmath second
differences at ties, near ties and a reflection; ``svd`` with a gradient rule (torch's
values away from ties, no ``σⱼ² - σᵢ²`` overflow, gauge-invariant losses at ties);
``svdvals`` and the Schatten norms with minimum-norm subgradients."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import stableeig as se

F64 = torch.float64


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rotation(n: int, seed: int) -> torch.Tensor:
    Q = torch.linalg.qr(_randn(seed, n, n))[0]
    return Q * torch.linalg.det(Q).sign()


def _diagonal(*values: float) -> torch.Tensor:
    return torch.diag(torch.tensor(values, dtype=F64))


POINTS = {
    "I3": lambda: torch.eye(3, dtype=F64),
    "diag(2,1,1)": lambda: _diagonal(2.0, 1.0, 1.0),
    "rotation": lambda: _rotation(3, 0),
    "rotated tie": lambda: _rotation(3, 1) @ _diagonal(3.0, 1.0, 1.0) @ _rotation(3, 2),
    "gap 1e-3": lambda: _rotation(3, 3) @ _diagonal(2.0, 1.001, 1.0) @ _rotation(3, 4),
    "gap 1e-12": lambda: _rotation(3, 5) @ _diagonal(2.0, 1.0 + 1e-12, 1.0) @ _rotation(3, 6),
    "det < 0": lambda: _rotation(3, 7) @ _diagonal(3.0, 2.0, -1.0) @ _rotation(3, 8),
}

# the map in torch and in mpmath (a 3x3 mpmath matrix in, one out)
FUNCTIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[Any], Any]]] = {}


def _mp_functions() -> None:
    import mpmath

    def svd_map(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def apply(M: Any) -> Any:
            U, s, V = mpmath.svd_r(M)
            return U * mpmath.diag([f(x) for x in s]) * V

        return apply

    def rotation(M: Any) -> Any:
        U, _, V = mpmath.svd_r(M)
        return U * mpmath.diag([1, 1, mpmath.sign(mpmath.det(U * V))]) * V

    FUNCTIONS.update(
        {
            "polar": (se.polar, svd_map(lambda x: 1)),
            "tanh": (lambda X: se.svd_funm(X, torch.tanh), svd_map(mpmath.tanh)),
            "special": (se.special_orthogonalize, rotation),
        }
    )


def _mp_second_derivative(mp_map: Callable[[Any], Any], A: torch.Tensor, E: torch.Tensor,
                          G: torch.Tensor) -> float:  # fmt: skip
    """d²/dt² ⟨G, F(A + t E)⟩ at t = 0: central second differences at 40 digits, t = 1e-12."""
    import mpmath

    mpmath.mp.dps = 40
    base, direction = mpmath.matrix(A.tolist()), mpmath.matrix(E.tolist())
    weights = mpmath.matrix(G.tolist())
    h = mpmath.mpf("1e-12")

    def value(t: Any) -> Any:
        F = mp_map(base + t * direction)
        return sum(weights[a, b] * F[a, b] for a in range(3) for b in range(3))

    return float((value(h) - 2 * value(0) + value(-h)) / h**2)


def _second_derivative(apply: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor,
                       E: torch.Tensor, G: torch.Tensor) -> float:  # fmt: skip
    """⟨E, ∂/∂A ⟨E, ∇⟨G, F(A)⟩⟩⟩ by double backward."""
    leaf = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad((G * apply(leaf)).sum(), leaf, create_graph=True)
    (second,) = torch.autograd.grad((grad * E).sum(), leaf)
    return float((second * E).sum())


@pytest.mark.parametrize("point", sorted(POINTS))
@pytest.mark.parametrize("name", ["polar", "tanh", "special"])
def test_second_derivatives_equal_40_digit_differences(point: str, name: str) -> None:
    pytest.importorskip("mpmath")
    if not FUNCTIONS:
        _mp_functions()
    if name == "polar" and point == "det < 0":
        pass  # the polar factor is smooth there too
    apply, mp_map = FUNCTIONS[name]
    A, E, G = POINTS[point](), _randn(11, 3, 3), _randn(12, 3, 3)
    ours = _second_derivative(apply, A, E, G)
    reference = _mp_second_derivative(mp_map, A, E, G)
    assert abs(ours - reference) <= 1e-10 * max(1.0, abs(reference)), (ours, reference)


SECOND_ORDER = {
    "polar": se.polar,
    "tanh": lambda X: se.svd_funm(X, torch.tanh),
    "special": se.special_orthogonalize,
    "low_rank": lambda X: se.low_rank(X, 1),
    "procrustes": lambda X: se.procrustes(torch.cat([X, 2 * X.flip(0)]), _randn(17, 6, 3)).rotation,
    "svt": lambda X: se.singular_value_threshold(X, 0.5),
}
SHAPES = {
    "I3": lambda: torch.eye(3, dtype=F64),
    "diag(2,1,1)": lambda: _diagonal(2.0, 1.0, 1.0),
    "tall 5x3": lambda: _randn(3, 5, 3),
    "wide 2x4": lambda: _randn(4, 2, 4),
    "batch": lambda: _randn(5, 2, 3, 3),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_gradgradcheck_at_ties_rectangles_and_batches(shape: str, name: str) -> None:
    A = SHAPES[shape]()
    if name in ("special", "procrustes") and A.shape[-1] != A.shape[-2]:
        pytest.skip("square only")
    if name == "procrustes" and A.ndim > 2:
        pytest.skip("one set of points")
    if name == "low_rank" and shape == "I3":
        pytest.skip("the cut inside a tie: not unique")
    assert torch.autograd.gradgradcheck(SECOND_ORDER[name], (A.requires_grad_(),))


def test_hessian_by_forward_over_reverse_equals_double_backward() -> None:
    """torch.func.hessian (jacfwd of jacrev): forward mode through the second-order node."""
    A, G = _rotation(3, 9) @ _diagonal(2.0, 1.0, 1.0), _randn(10, 3, 3)

    def loss(X: torch.Tensor) -> torch.Tensor:
        return (G * se.polar(X)).sum()

    hessian = torch.func.hessian(loss)(A).reshape(9, 9)
    leaf = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
    rows = [torch.autograd.grad(grad.flatten()[i], leaf, retain_graph=True)[0].flatten()
            for i in range(9)]  # fmt: skip
    torch.testing.assert_close(hessian, torch.stack(rows))
    torch.testing.assert_close(hessian, hessian.T)  # a Hessian is symmetric


def test_a_second_derivative_where_it_does_not_exist_raises() -> None:
    """f(σ) = σ² at a zero singular value: U Σ² Vᵀ is C¹ but not C² there (1×1: a|a|)."""
    A = _diagonal(2.0, 1.0, 0.0).requires_grad_()
    (grad,) = torch.autograd.grad(se.svd_funm(A, torch.square).sum(), A, create_graph=True)
    with pytest.raises(se.NotDifferentiableError, match="double backward"):
        torch.autograd.grad(grad.sum(), A)


# ---------------------------------------------------------------- svd with a rule


def _vector_loss(U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    weights = torch.arange(Vh.shape[-1], dtype=Vh.dtype)
    return (U[..., 0, :] ** 3).sum() + (Vh**2 * weights).sum() + (s**3).sum()


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (2, 3, 4)])
def test_svd_equals_torch_away_from_ties(shape: tuple[int, ...]) -> None:
    A = _randn(20, *shape)
    ours, theirs = A.clone().requires_grad_(), A.clone().requires_grad_()
    result = se.svd(ours)
    reference = torch.linalg.svd(theirs, full_matrices=False)
    for a, b in zip(result, reference):
        torch.testing.assert_close(a, b)  # the same vectors, signs included
    _vector_loss(*result).backward()
    _vector_loss(*reference).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)
    assert torch.autograd.gradcheck(lambda X: _vector_loss(*se.svd(X)), (A.requires_grad_(),))


def test_svd_has_no_squared_difference_to_overflow() -> None:
    """torch divides by σⱼ² - σᵢ²: Inf beyond 1e154. The loss of U is scale-invariant, so
    its gradient at c·A is the gradient at A over c."""
    A, G = _randn(21, 4, 3), _randn(22, 4, 3)
    big = 1e200

    def gradient(svd: Callable[..., Any], X: torch.Tensor) -> torch.Tensor:
        leaf = X.clone().requires_grad_()
        U = svd(leaf, full_matrices=False)[0] if svd is torch.linalg.svd else svd(leaf)[0]
        (G * U).sum().backward()
        assert leaf.grad is not None
        return leaf.grad

    torch.testing.assert_close(gradient(se.svd, big * A) * big, gradient(se.svd, A))
    assert not torch.allclose(gradient(torch.linalg.svd, big * A) * big, gradient(se.svd, A))


def test_svd_at_a_tie_a_gauge_invariant_loss_is_exact_in_every_direction_keeping_the_tie() -> None:
    A = _rotation(3, 23) @ _diagonal(3.0, 1.0, 1.0) @ _rotation(3, 24)
    G = _randn(25, 3, 3)
    leaf = A.clone().requires_grad_()
    U, s, Vh = se.svd(leaf)
    (G * ((U * s.square()) @ Vh)).sum().backward()  # ℓ(U Σ² Vᵀ): the basis does not matter
    exact = A.clone().requires_grad_()
    (G * se.svd_funm(exact, torch.square)).sum().backward()
    assert leaf.grad is not None and exact.grad is not None
    U, Vh = U.detach(), Vh.detach()
    difference = U.mT @ (leaf.grad - exact.grad) @ Vh.mT  # in the singular bases
    # directions keeping σ₂ = σ₃: no symmetric off-diagonal part inside the tied block
    torch.testing.assert_close(difference - difference.mT, torch.zeros(3, 3, dtype=F64))
    off_tie = difference.clone()
    off_tie[1, 2] = off_tie[2, 1] = 0
    torch.testing.assert_close(off_tie, torch.zeros(3, 3, dtype=F64))


@pytest.mark.parametrize("rule", ["clip", "power", "taylor"])
def test_svd_bounded_rules_are_finite_at_ties_and_analytic_raises(rule: str) -> None:
    leaf = torch.eye(3, dtype=F64, requires_grad=True)
    U, _, _ = se.svd(leaf, rule)
    U[:, 0].sum().backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    strict = torch.eye(3, dtype=F64, requires_grad=True)
    with pytest.raises(se.NotDifferentiableError, match="expected distinct singular values"):
        se.svd(strict)[0][:, 0].sum().backward()


def test_svd_rules_approach_the_exact_gradient_with_the_gap() -> None:
    A, G = _rotation(3, 26) @ _diagonal(3.0, 2.0, 1.0) @ _rotation(3, 27), _randn(28, 3, 3)

    def gradient(rule: object) -> torch.Tensor:
        leaf = A.clone().requires_grad_()
        (G * se.svd(leaf, rule)[0]).sum().backward()  # type: ignore[arg-type]
        assert leaf.grad is not None
        return leaf.grad

    exact = gradient("analytic")
    torch.testing.assert_close(gradient(se.rules.Clip(min_gap=1e-3)), exact)
    assert (gradient(se.rules.Power(num_iters=60)) - exact).abs().max() < 1e-8


# ---------------------------------------------------------------- values and norms


def test_svdvals_values_and_the_exact_gradient_of_symmetric_functions_at_ties() -> None:
    A = torch.eye(3, dtype=F64)
    torch.testing.assert_close(se.svdvals(_randn(29, 4, 3)), torch.linalg.svdvals(_randn(29, 4, 3)))
    leaf = A.clone().requires_grad_()
    se.svdvals(leaf).square().sum().backward()  # ‖A‖_F²: gradient 2A
    torch.testing.assert_close(leaf.grad, 2 * A)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3, float("inf")])
def test_schatten_norms_equal_the_vector_norm_of_the_singular_values(p: float) -> None:
    A = _randn(30, 2, 5, 3)
    torch.testing.assert_close(
        se.schatten_norm(A, p), torch.linalg.vector_norm(torch.linalg.svdvals(A), p, -1)
    )
    torch.testing.assert_close(se.schatten_norm(A.mT, p), se.schatten_norm(A, p))
    leaf = A.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda X: se.schatten_norm(X, p), (leaf,))
    assert torch.autograd.gradgradcheck(lambda X: se.schatten_norm(X, p), (leaf,))


def test_norm_subgradients_are_the_minimum_norm_ones_and_independent_of_the_basis() -> None:
    cases = [  # (A, p, expected gradient)
        (_diagonal(2.0, 1.0, 0.0), 1, _diagonal(1.0, 1.0, 0.0)),
        (_diagonal(2.0, 2.0, 1.0), float("inf"), _diagonal(0.5, 0.5, 0.0)),
        (torch.zeros(3, 2, dtype=F64), 1, torch.zeros(3, 2, dtype=F64)),
        (torch.zeros(3, 2, dtype=F64), 2, torch.zeros(3, 2, dtype=F64)),
    ]
    for A, p, expected in cases:
        leaf = A.clone().requires_grad_()
        se.schatten_norm(leaf, p).backward()
        torch.testing.assert_close(leaf.grad, expected)
    leaf = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    torch.linalg.matrix_norm(leaf, "nuc").backward()  # torch: U Vᵀ of whatever basis
    assert leaf.grad is not None and float(leaf.grad.abs().sum()) > 0
    torch.testing.assert_close(se.nuclear_norm(_diagonal(3.0, -4.0)), torch.tensor(7.0, dtype=F64))


@pytest.mark.parametrize("p", [0.5, -1, float("nan"), "1", True])
def test_schatten_norm_refuses_p_below_1(p: object) -> None:
    with pytest.raises(
        se.ArgumentError, match=r"schatten_norm: p: expected a number in \[1, inf\]"
    ):
        se.schatten_norm(torch.eye(2), p)  # type: ignore[arg-type]


@pytest.mark.parametrize("function", ["svd", "svdvals", "schatten_norm", "nuclear_norm"])
def test_bad_input_is_refused_by_name(function: str) -> None:
    apply = getattr(se, function)
    with pytest.raises(se.NonFiniteError, match=f"{function.split('_')[0]}"):
        apply(torch.full((2, 2), float("nan")))
    with pytest.raises(se.ShapeError, match=r"expected \(\.\.\., m, n\)"):
        apply(torch.zeros(3))
    with pytest.raises(se.DTypeError, match="real floating dtype"):
        apply(torch.zeros(2, 2, dtype=torch.int64))


# ---------------------------------------------------------------- Kabsch with padding


def test_kabsch_masks_padding_and_equals_procrustes_on_the_kept_points() -> None:
    X = _randn(31, 2, 7, 3)
    R = se.special_orthogonalize(_randn(32, 2, 3, 3))
    Y = X @ R.mT + 0.01 * _randn(33, 2, 7, 3)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    Y[1, 5:] = 1e3  # padding: huge values that must not matter
    fit = se.kabsch(X, Y, mask=mask)
    alone = se.procrustes(X[1, :5], Y[1, :5])
    torch.testing.assert_close(fit.rotation[1], alone.rotation)
    torch.testing.assert_close(fit.translation[1], alone.translation)
    torch.testing.assert_close(fit.rotation[0], se.procrustes(X[0], Y[0]).rotation)
    weights = mask.to(F64)
    torch.testing.assert_close(se.kabsch(X, Y, weights=weights).rotation, fit.rotation)


def test_kabsch_rmsd_is_the_aligned_deviation_with_a_zero_gradient_at_coincidence() -> None:
    X = _randn(34, 6, 3)
    R = se.special_orthogonalize(_randn(35, 3, 3))
    Y = X @ R.mT + 1.0 + 0.1 * _randn(36, 6, 3)
    fit = se.kabsch(X, Y)
    moved = X @ fit.rotation.mT + fit.translation
    expected = (moved - Y).square().sum(-1).mean().sqrt()
    torch.testing.assert_close(se.kabsch_rmsd(X, Y), expected)
    leaf = X.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda Z: se.kabsch_rmsd(Z, Y), (leaf,))
    square = torch.tensor([[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], dtype=F64)
    same = square.clone().requires_grad_()  # symmetric, coplanar, already aligned
    rmsd = se.kabsch_rmsd(same, square @ R.mT)
    rmsd.backward()
    assert float(rmsd) < 1e-12 and same.grad is not None
    # a kink like |x|: finite, a bounded subgradient (of the round-off's direction), not NaN
    assert bool(torch.isfinite(same.grad).all()) and float(same.grad.norm()) <= 1.0 + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mask": torch.ones(5)}, se.DTypeError, "kabsch: mask: expected a bool tensor"),
        (
            {"mask": torch.ones(4, dtype=torch.bool)},
            se.ShapeError,
            r"kabsch: mask: expected shape \(5,\)",
        ),
        ({"mask": torch.zeros(5, dtype=torch.bool)}, se.ArgumentError, "not all 0 .or masked."),
        ({"weights": torch.zeros(5)}, se.ArgumentError, "kabsch: weights: expected values >= 0"),
    ],
)
def test_kabsch_refuses_bad_masks_and_weights_by_name(
    kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        se.kabsch(torch.randn(5, 3), torch.randn(5, 3), **kwargs)


# ---------------------------------------------------------------- torch.func and compile

TARGETS = _randn(40, 3, 3)
FORWARD = {
    "polar": se.polar,
    "svd_funm": lambda X: se.svd_funm(X, torch.tanh),
    "special_orthogonalize": se.special_orthogonalize,
    "low_rank": lambda X: se.low_rank(X, 1),
    "procrustes": lambda X: se.procrustes(X, TARGETS).rotation,
}


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_jvp_jacfwd_and_vmap_equal_reverse_mode(name: str) -> None:
    apply = FORWARD[name]
    A, E = _rotation(3, 41) @ _diagonal(3.0, 1.0, 1.0), _randn(42, 3, 3)  # a tie
    _, tangent = torch.func.jvp(apply, (A,), (E,))
    jacobian = torch.func.jacrev(apply)(A)  # (3, 3, 3, 3)
    torch.testing.assert_close(tangent, (jacobian * E).sum((-2, -1)))
    torch.testing.assert_close(torch.func.jacfwd(apply)(A), jacobian)
    batch = torch.stack([A, _randn(43, 3, 3)])
    torch.testing.assert_close(torch.func.vmap(apply)(batch)[1], apply(batch[1]))


@pytest.mark.parametrize("name", ["svd", "schatten_norm", "kabsch_rmsd"])
def test_compiled_whole_equals_eager(name: str) -> None:
    apply = {
        "svd": lambda X: (se.svd(X).U ** 3).sum() + se.svd(X).S.sum(),
        "schatten_norm": lambda X: se.schatten_norm(X, 3.0).sum(),
        "kabsch_rmsd": lambda X: se.kabsch_rmsd(X, X.detach().flip(-2) + 0.1).sum(),
    }[name]
    A = _randn(44, 4, 5, 3)
    torch._dynamo.reset()
    compiled = torch.compile(apply, fullgraph=True, backend="aot_eager")
    leaf_c, leaf_e = A.clone().requires_grad_(), A.clone().requires_grad_()
    compiled(leaf_c).backward()
    apply(leaf_e).backward()
    torch.testing.assert_close(leaf_c.grad, leaf_e.grad)


def test_schatten_norm_second_order_does_not_overflow_at_large_singular_values() -> None:
    """At σ ~ 1e30, p = 12, σᵖ overflowed: the norm was Inf and its gradient 0 (with
    create_graph NaN). The norm is taken of σ / σ₁ and its gradient formed at A / ‖A‖."""
    A = _diagonal(1e30, 2e30, 3e30)
    expected = 3e30 * torch.linalg.vector_norm(torch.tensor([1 / 3, 2 / 3, 1.0], dtype=F64), 12)
    torch.testing.assert_close(se.schatten_norm(A, 12.0), expected)
    leaf = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad(se.schatten_norm(leaf, 12.0), leaf, create_graph=True)
    plain = A.clone().requires_grad_()
    se.schatten_norm(plain, 12.0).backward()
    torch.testing.assert_close(grad.detach(), plain.grad)
    (second,) = torch.autograd.grad((grad * _randn(45, 3, 3)).sum(), leaf)
    scaled = (A / 1e30).requires_grad_()  # the Hessian is homogeneous of degree -1
    (grad_1,) = torch.autograd.grad(se.schatten_norm(scaled, 12.0), scaled, create_graph=True)
    (second_1,) = torch.autograd.grad((grad_1 * _randn(45, 3, 3)).sum(), scaled)
    torch.testing.assert_close(second * 1e30, second_1)
