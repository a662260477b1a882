"""float32 (and half precision) as users pass it (issue 28): rank-deficient statistics,
symmetry to the input dtype's round-off, distances exact at equal inputs, covariance pooling
at any activation scale, the Karcher mean on dispersed data, no silent NaN, errors that name
the user's argument."""

from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch

import stableeig as se

LOW_PRECISION = [torch.float16, torch.bfloat16, torch.float32]


def _features(samples: int, n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(n, n, generator=g) / n**0.5
    return (torch.randn(samples, n, generator=g) @ mixing + torch.randn(n, generator=g)).to(dtype)


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance in x's dtype, as a user computes them."""
    mean = x.mean(0)
    centered = x - mean
    return mean, centered.T @ centered / (len(x) - 1)


def _eigh_function(A: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    w, V = torch.linalg.eigh((A + A.mT) / 2)
    return (V * f(w).unsqueeze(-2)) @ V.mT


def _reference_frechet(
    mu1: torch.Tensor, S1: torch.Tensor, mu2: torch.Tensor, S2: torch.Tensor
) -> float:
    """The FID formula in float64 on the same (float32-rounded) statistics, by eigh,
    round-off negative eigenvalues read as 0 (what pytorch-fid's scipy sqrtm returns)."""
    S1, S2 = S1.double(), S2.double()
    root = _eigh_function(S1, lambda w: w.clamp_min(0).sqrt())
    inner = root @ S2 @ root
    fidelity = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    means = (mu1.double() - mu2.double()).square().sum()
    return float(means + S1.trace() + S2.trace() - 2 * fidelity)


def test_rank_deficient_float32_fid_statistics_are_accepted_and_exact() -> None:
    """Fewer samples than dimensions: pytorch-fid and torchmetrics return a value; so do we,
    equal to the float64 formula on the same float32 statistics (the issue's 32-dim
    covariance of 8 samples had its smallest eigenvalue at -1.9e-7, refused before)."""
    for samples, n in ((8, 32), (100, 256)):
        mu1, S1 = _statistics(_features(samples, n, 0))
        mu2, S2 = _statistics(_features(samples, n, 1))
        assert float(torch.linalg.eigvalsh(S1.double()).amin()) < 0  # round-off below 0
        value = se.frechet_distance(mu1, S1, mu2, S2)
        assert value.dtype == torch.float32
        expected = _reference_frechet(mu1, S1, mu2, S2)
        assert float(value) == pytest.approx(expected, rel=1e-6)
        root = se.sqrtm(S1)  # and the square root itself
        torch.testing.assert_close(root.double() @ root.double(), S1.double(), atol=1e-5, rtol=0)
        se.powm(S1, 0.7)
        se.trace_sqrt_product(S1, S2)


def test_semidefinite_tolerance_comes_from_the_dtype_given() -> None:
    """The same clearly indefinite matrix is refused in every dtype; round-off is not."""
    A = torch.diag(torch.tensor([1.0, 0.5, -1e-2]))
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(se.NotPositiveDefiniteError, match=r"sqrtm: A: .*semidefinite"):
            se.sqrtm(A.to(dtype))
    float32_roundoff = torch.diag(torch.tensor([1.0, 0.5, -1e-6]))
    se.sqrtm(float32_roundoff)  # within sqrt(eps32) · max|λ|
    with pytest.raises(se.NotPositiveDefiniteError):
        se.sqrtm(float32_roundoff.double())  # not within sqrt(eps64) · max|λ|


def _rotated(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """``Wᵀ S W`` computed in ``dtype``: symmetric only to ``dtype``'s round-off."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0].to(dtype)
    S = torch.diag(torch.linspace(0.5, 3.0, n, dtype=torch.float64)).to(dtype)
    return W.T @ S @ W


DISTANCES = {
    "bures_wasserstein": se.bures_wasserstein,
    "bures_wasserstein²": lambda A, B: se.bures_wasserstein(A, B, squared=True),
    "trace_sqrt_product": lambda A, B: se.trace_sqrt_product(A, B) - A.trace(),
    "frechet": lambda A, B: se.frechet_distance(A[..., 0], A, A[..., 0], B),
    "log_euclidean": se.log_euclidean_distance,
    "airm": se.airm_distance,
}


@pytest.mark.parametrize("name", sorted(DISTANCES))
@pytest.mark.parametrize("dtype", [*LOW_PRECISION, torch.float64])
def test_distances_accept_their_dtype_and_are_exactly_zero_at_equal_inputs(
    name: str, dtype: torch.dtype
) -> None:
    A = _rotated(8, dtype)
    asymmetry = float((A - A.T).abs().max() / A.abs().max())
    assert dtype == torch.float64 or asymmetry > 1.5e-8  # refused before (float64's tolerance)
    value = DISTANCES[name](A, A.clone())
    assert value.dtype == dtype
    if name == "trace_sqrt_product":  # tr √(A² ) = tr A, to the dtype's precision
        assert abs(float(value)) <= 20 * torch.finfo(dtype).eps * float(A.trace())
    else:
        assert float(value) == 0.0


def test_distances_keep_the_working_precision_to_the_end() -> None:
    """float32 inputs: the value equals the float64 computation on the same matrices, rounded
    once; B = A + 1e-6·E is not read as 0 (it was: the old floor was 100·n·eps·tr)."""
    A = _rotated(10, torch.float32)
    A = (A + A.T) / 2  # exactly symmetric, so that its float64 copy is too
    E = _rotated(10, torch.float32, seed=1)
    B = A + 1e-6 * (E + E.T) / 2
    for squared in (True, False):
        got = se.bures_wasserstein(A, B, squared=squared)
        expected = se.bures_wasserstein(A.double(), B.double(), squared=squared)
        assert float(got) > 0
        assert float(got) == pytest.approx(float(expected), rel=1e-6)
    mu = torch.zeros(10)
    assert float(se.frechet_distance(mu, A, mu, A)) == 0.0
    C = _rotated(10, torch.float32, seed=2)
    assert float(se.frechet_distance(mu, A, mu, C)) >= 0
    # the means' dtype counts: float64 means give a float64 result
    assert se.frechet_distance(mu.double(), A, mu.double(), C).dtype == torch.float64


@pytest.mark.parametrize(
    "call",
    [
        lambda A, B: se.bures_wasserstein(A, B),
        lambda A, B: se.trace_sqrt_product(A, B),
        lambda A, B: se.frechet_distance(A[0], A, A[0], B),
        lambda A, B: se.airm_distance(A, B),
        lambda A, B: se.log_euclidean_distance(A, B),
    ],
)
def test_a_non_symmetric_second_argument_is_refused_by_name(call: Callable) -> None:
    A = torch.eye(3, dtype=torch.float64) * 2
    B = A.clone()
    B[0, 1] = 0.5
    with pytest.raises(se.NotSymmetricError, match=r": (B|sigma2): expected a symmetric"):
        call(A, B)


def test_an_indefinite_second_argument_is_named() -> None:
    A = torch.eye(3, dtype=torch.float64)
    B = torch.diag(torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64))
    with pytest.raises(se.NotPositiveDefiniteError, match="airm_distance: B: expected"):
        se.airm_distance(A, B)
    with pytest.raises(se.NotPositiveDefiniteError, match="bures_wasserstein: B: expected"):
        se.bures_wasserstein(A, B)
    with pytest.raises(se.NotPositiveDefiniteError, match="frechet_distance: sigma2: expected"):
        se.frechet_distance(A[0], A, A[0], B)


def test_batch_shapes_that_do_not_broadcast_get_a_shape_error() -> None:
    A = torch.eye(3).expand(2, 3, 3)
    B = torch.eye(3).expand(5, 3, 3)
    for call in (se.bures_wasserstein, se.airm_distance, se.log_euclidean_distance):
        with pytest.raises(se.ShapeError, match="broadcast"):
            call(A, B)
    assert se.bures_wasserstein(A, torch.eye(3)).shape == (2,)  # broadcasting works


def test_errors_for_inputs_that_require_grad_do_not_warn() -> None:
    A = torch.eye(3, requires_grad=True)
    B = torch.eye(3).clone()
    B[0, 1] = 1.0
    B.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(se.NotSymmetricError):
            se.bures_wasserstein(A, B)
        with pytest.raises(se.NotSymmetricError):
            se.logm(B)


def test_overflowing_function_values_raise_instead_of_nan() -> None:
    A = torch.diag(torch.tensor([800.0, 1.0], dtype=torch.float64))
    with pytest.raises(se.NonFiniteError, match="expm: expected f"):
        se.expm(A)
    with pytest.raises(se.NonFiniteError, match="powm"):
        se.powm(torch.diag(torch.tensor([1e200, 1.0], dtype=torch.float64)), 2.0)
    with pytest.raises(se.NonFiniteError, match="funm"):
        se.funm(A, torch.exp)
    assert bool(torch.isfinite(se.expm(A / 800 * 700)).all())  # e^700 fits float64
    with pytest.raises(se.NonFiniteError, match=r"within the range of torch\.float32"):
        se.expm(torch.diag(torch.tensor([700.0, 1.0])))  # not float32


@pytest.mark.parametrize("scale", [1e-13, 1e-6, 1.0, 1e13])
def test_power_iteration_is_scale_relative_and_zero_gives_zero(scale: float) -> None:
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    unit, _ = se.power_iteration_eigh(A, generator=torch.Generator().manual_seed(0))
    w, _ = se.power_iteration_eigh(A * scale, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w / scale, unit, rtol=1e-12, atol=0)  # scale-invariant
    torch.testing.assert_close(unit, A.diagonal(), rtol=1e-5, atol=0)  # 19 iterations
    w, _ = se.power_iteration_eigh(torch.zeros(3, 3))
    assert w.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("function", ["sqrt", "log"])
def test_covariance_pooling_trains_at_every_activation_scale(scale: float, function: str) -> None:
    """float32 maps with 64 channels on 4×4 (rank <= 15): the relative ridge makes the head
    scale-invariant (trace-normalized) — the same output and the scaled gradient at every
    scale; the absolute 1e-4 ridge raised from activations ~100 up."""
    g = torch.Generator().manual_seed(0)
    base = torch.relu(torch.randn(4, 64, 4, 4, generator=g))
    pool = se.nn.CovariancePooling2d(64, function=function)
    G = torch.randn(4, pool.output_size, generator=g)
    x = (base * scale).requires_grad_()
    (pool(x) * G).sum().backward()
    reference = base.double().requires_grad_()
    out = pool(reference)
    (out * G.double()).sum().backward()
    torch.testing.assert_close(pool(x.detach()).double(), out.detach(), rtol=1e-5, atol=1e-6)
    assert x.grad is not None and reference.grad is not None
    torch.testing.assert_close(
        x.grad.double() * scale,
        reference.grad,
        rtol=1e-4,
        atol=1e-6 * float(reference.grad.abs().max()),
    )


def test_covariance_pooling_refuses_an_empty_batch_clearly() -> None:
    with pytest.raises(se.ShapeError, match="at least one sample"):
        se.nn.CovariancePooling2d(8)(torch.zeros(0, 8, 3, 3))


def _dispersed(count: int, n: int, condition: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(count, n, n, generator=g, dtype=torch.float64))[0]
    w = torch.logspace(0, float(torch.tensor(condition).log10()), n, dtype=torch.float64)
    return (Q * w) @ Q.mT


@pytest.mark.parametrize("condition", [1e3, 1e5, 1e8])
@pytest.mark.parametrize(("count", "n"), [(8, 10), (64, 10)])
def test_karcher_mean_converges_on_dispersed_data(condition: float, count: int, n: int) -> None:
    """The unit-step flow diverged here (residual 5.3 → 8.7 for 8 matrices at 1e3)."""
    X = _dispersed(count, n, condition, 0)
    G = se.airm_mean(X, tolerance=1e-8)
    root = _eigh_function(G, torch.rsqrt)
    residual = _eigh_function(root @ X @ root, torch.log).mean(0).norm()
    assert float(residual) <= 1e-8
    # the mean is affine-equivariant: mean(M X Mᵀ) = M mean(X) Mᵀ
    M = torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    M = M + n * torch.eye(n, dtype=torch.float64)
    moved = se.airm_mean(M @ X @ M.T, tolerance=1e-8)
    torch.testing.assert_close(moved, M @ G @ M.T, rtol=1e-6, atol=1e-6 * float(moved.abs().max()))


def test_karcher_mean_matches_pyriemann_where_installed() -> None:
    pyriemann = pytest.importorskip("pyriemann.utils.mean")
    X = _dispersed(8, 10, 1e3, 2)
    expected = torch.from_numpy(pyriemann.mean_riemann(X.numpy(), tol=1e-12, maxiter=500))
    torch.testing.assert_close(se.airm_mean(X, tolerance=1e-10), expected, rtol=1e-7, atol=1e-9)


def test_default_compute_dtype_is_a_visible_scoped_policy() -> None:
    """Issue 29: ``compute_dtype=None`` follows ``se.default_compute_dtype`` inside its block
    (bit-identical to passing it), an explicit argument wins, float64 input is never lowered,
    and the default comes back after the block."""
    A = _rotated(16, torch.float32)
    A = (A + A.T) / 2
    explicit32 = se.inv_sqrtm(A, compute_dtype=torch.float32)
    explicit64 = se.inv_sqrtm(A, compute_dtype=torch.float64)
    assert not torch.equal(explicit32, explicit64)  # the two precisions differ in the bits
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    layer = se.nn.ZCAWhitening1d(8, track_running_stats=False)
    with se.default_compute_dtype(torch.float32):
        assert torch.equal(se.inv_sqrtm(A), explicit32)
        assert torch.equal(se.inv_sqrtm(A, compute_dtype=torch.float64), explicit64)
        assert se.inv_sqrtm(A.double()).dtype == torch.float64
        inside = layer(x)
    assert torch.equal(se.inv_sqrtm(A), explicit64)
    assert torch.equal(inside, se.nn.ZCAWhitening1d(8, track_running_stats=False,
                                                    compute_dtype=torch.float32)(x))  # fmt: skip
    with pytest.raises(se.DTypeError, match=r"float32 or torch\.float64"):
        se.default_compute_dtype(torch.float16).__enter__()


def test_the_forward_only_fidelity_equals_the_differentiable_one() -> None:
    """Issue 29: without a gradient the fidelity takes eigenvalues of the inner matrix only
    (an FID metric); same value as the differentiable path, same checks."""
    mu1, S1 = _statistics(_features(40, 24, 0, torch.float64))
    mu2, S2 = _statistics(_features(40, 24, 1, torch.float64))
    with torch.no_grad():
        fast = se.frechet_distance(mu1, S1, mu2, S2)
    slow = se.frechet_distance(mu1, S1.clone().requires_grad_(), mu2, S2)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-12, atol=0)
    with torch.no_grad(), pytest.raises(se.NotPositiveDefiniteError, match="sigma2"):
        se.frechet_distance(mu1, S1, mu2, -S2)


def test_bimap_in_half_precision_on_the_cpu_says_why_and_half_input_works() -> None:
    X = (torch.eye(6) + 0.1).expand(2, 6, 6).half()
    with pytest.raises(se.DTypeError, match="no half-precision CPU kernel"):
        se.nn.BiMap(6, 3).half()(X)
    out = se.nn.BiMap(6, 3)(X)  # float32 layer, half input
    assert out.dtype == torch.float16 and out.shape == (2, 3, 3)


def test_zca_whitening_shrinkage_whitens_the_shrunk_covariance() -> None:
    """W-MSE's shrinkage: the output's covariance is (1-α)Σ + αI whitened, i.e. the output
    equals ((1-α)Σ + αI + εI)^{-1/2} (x - μ); α = 0 is the plain layer."""
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x @ torch.randn(16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    centred = x - x.mean(0)
    covariance = centred.T @ centred / len(x)
    for alpha in (0.0, 0.3):
        shrunk = (1 - alpha) * covariance + alpha * torch.eye(16, dtype=torch.float64)
        expected = centred @ se.inv_sqrtm(shrunk + 1e-4 * torch.eye(16, dtype=torch.float64))
        got = se.nn.functional.zca_whitening(x, shrinkage=alpha)
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    with pytest.raises(se.ArgumentError, match="shrinkage"):
        se.nn.functional.zca_whitening(x, shrinkage=1.5)


def test_default_compute_dtype_is_per_thread_and_nests() -> None:
    """Issue 39.3: another thread saw one thread's float32 scope, and two overlapping scopes
    in two threads left float32 as the default for the rest of the process."""
    import threading

    from stableeig._precision import working_dtype

    def default() -> torch.dtype:
        return working_dtype(torch.float32, None)

    entered, release = threading.Barrier(2), threading.Barrier(2)
    seen: dict[str, list[torch.dtype]] = {"a": [], "b": []}

    def scoped(name: str, dtype: torch.dtype) -> None:
        seen[name].append(default())
        with se.default_compute_dtype(dtype):
            entered.wait()
            seen[name].append(default())
            release.wait()
        seen[name].append(default())

    threads = [threading.Thread(target=scoped, args=("a", torch.float32)),
               threading.Thread(target=scoped, args=("b", torch.float64))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["a"] == [torch.float64, torch.float32, torch.float64]
    assert seen["b"] == [torch.float64, torch.float64, torch.float64]
    assert default() == torch.float64  # the rest of the process: the default
    with se.default_compute_dtype(torch.float32):  # nesting, inner wins, outer restored
        with se.default_compute_dtype(torch.float64):
            assert default() == torch.float64
        assert default() == torch.float32
        other: list[torch.dtype] = []
        watcher = threading.Thread(target=lambda: other.append(default()))
        watcher.start()
        watcher.join()
        assert other == [torch.float64]  # not this thread's scope
    assert default() == torch.float64


def test_compiled_code_follows_each_thread_s_scope() -> None:
    import threading

    A = _rotated(8, torch.float32)
    A = (A + A.T) / 2
    compiled = torch.compile(se.inv_sqrtm, fullgraph=True, backend="eager")
    explicit32 = se.inv_sqrtm(A, compute_dtype=torch.float32)
    explicit64 = se.inv_sqrtm(A, compute_dtype=torch.float64)
    assert torch.equal(compiled(A), explicit64)
    with se.default_compute_dtype(torch.float32):
        assert torch.equal(compiled(A), explicit32)
        other: list[torch.Tensor] = []
        worker = threading.Thread(target=lambda: other.append(compiled(A)))
        worker.start()
        worker.join()
        assert torch.equal(other[0], explicit64)
    assert torch.equal(compiled(A), explicit64)
