"""Covariance pooling and SPD layers (issue 18): shapes, errors, gradcheck in float64,
train vs eval, state_dict, equality with plain-torch references on well-separated spectra,
finite exact gradients on tied spectra where eigh autograd gives NaN."""

from __future__ import annotations

import io

import pytest
import torch

import stableeig as se
from stableeig.nn.spd import symmetric_to_vector


def _spd(N: int, n: int, seed: int, low: float = 0.5, high: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(N, n, n, generator=g, dtype=torch.float64))[0]
    w = torch.linspace(low, high, n, dtype=torch.float64) * (
        1 + 0.1 * torch.rand(N, 1, generator=g)
    )
    return (Q * w.unsqueeze(-2)) @ Q.mT


def _eigh_function(A: torch.Tensor, f) -> torch.Tensor:  # type: ignore[no-untyped-def]
    w, V = torch.linalg.eigh(A)
    return (V * f(w).unsqueeze(-2)) @ V.mT


def test_symmetric_to_vector_preserves_the_norm() -> None:
    S = _spd(3, 5, 0)
    v = symmetric_to_vector(S)
    assert v.shape == (3, 15)
    torch.testing.assert_close(v.norm(dim=-1), torch.linalg.matrix_norm(S))


@pytest.mark.parametrize("function", ["sqrt", "power", "log"])
def test_covariance_pooling_equals_a_plain_torch_reference(function: str) -> None:
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pool = se.nn.CovariancePooling2d(6, function=function, power=0.3, output="full")
    flat = x.reshape(4, 6, 25)
    centered = flat - flat.mean(-1, keepdim=True)
    covariance = centered @ centered.mT / 25
    ridge = 1e-4 * covariance.diagonal(dim1=-2, dim2=-1).mean(-1).view(4, 1, 1)
    covariance = covariance + ridge * torch.eye(6, dtype=torch.float64)
    covariance = covariance / covariance.diagonal(dim1=-2, dim2=-1).sum(-1).view(4, 1, 1)
    f = {"sqrt": torch.sqrt, "power": lambda w: w.pow(0.3), "log": torch.log}[function]
    torch.testing.assert_close(pool(x), _eigh_function(covariance, f))
    assert se.nn.CovariancePooling2d(6, function=function)(x).shape == (4, 21)


def test_covariance_pooling_of_a_rank_deficient_map_trains_where_eigh_autograd_is_nan() -> None:
    # a 2×2 map with 16 channels, 12 of them dead (zero after a ReLU): the covariance has
    # rank <= 3 and 12 eigenvalues tied exactly at eps
    x = torch.randn(8, 16, 2, 2, generator=torch.Generator().manual_seed(2))
    x[:, 4:] = 0
    x.requires_grad_(True)
    pool = se.nn.CovariancePooling2d(16)
    G = torch.randn(8, 136, generator=torch.Generator().manual_seed(3))
    (pool(x) * G).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    leaf = x.detach().double().requires_grad_(True)  # float64 reference: the same gradient
    ref = se.nn.CovariancePooling2d(16)
    (ref(leaf) * G.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), leaf.grad, rtol=1e-3, atol=1e-4)
    # eigh autograd on a map whose channels are all dead: the covariance is exactly
    # eps·I / trace (diagonal, so every platform's eigh returns the ties bit-equal)
    covariance = pool.covariance(torch.zeros_like(x)).double().requires_grad_(True)
    trace = covariance.diagonal(dim1=-2, dim2=-1).sum(-1).view(-1, 1, 1)
    naive = symmetric_to_vector(_eigh_function(covariance / trace, torch.sqrt))
    (naive * G.double()).sum().backward()
    assert covariance.grad is not None and not bool(torch.isfinite(covariance.grad).all())


def test_covariance_pooling_reduction_repr_and_errors() -> None:
    pool = se.nn.CovariancePooling2d(16, reduced_channels=8, function="log", method="power")
    assert pool(torch.randn(4, 16, 3, 3)).shape == (4, 36) and pool.output_size == 36
    assert "channels=8" in repr(pool) and "Power" in repr(pool)
    with pytest.raises(se.ShapeError, match=r"expected \(N, 16, H, W\) input"):
        pool(torch.randn(4, 8, 3, 3))
    with pytest.raises(se.ArgumentError, match="function: expected one of"):
        se.nn.CovariancePooling2d(4, function="exp")
    with pytest.raises(se.ArgumentError, match="eps"):
        se.nn.CovariancePooling2d(4, eps=0.0)


def test_bimap_is_orthonormal_and_checks_its_input() -> None:
    layer = se.nn.BiMap(6, 3, channels=2)
    W = layer.weight
    torch.testing.assert_close(W.mT @ W, torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    X = _spd(4, 6, 4).float().unsqueeze(1).expand(4, 2, 6, 6)
    Y = layer(X)
    torch.testing.assert_close(Y, W.mT @ X @ W)
    assert Y.shape == (4, 2, 3, 3)
    with pytest.raises(se.ShapeError, match="expected 6×6 matrices"):
        layer(torch.eye(5).expand(4, 2, 5, 5))
    with pytest.raises(se.ShapeError, match="expected 2 channels"):
        layer(torch.eye(6).expand(4, 3, 6, 6))
    with pytest.raises(se.ArgumentError, match="out_size <= in_size"):
        se.nn.BiMap(3, 6)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)  # any torch optimizer
    layer(X).sum().backward()
    optimizer.step()
    W = layer.weight
    torch.testing.assert_close(W.mT @ W, torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)


def test_reeig_logeig_expeig_equal_references_and_are_finite_at_ties() -> None:
    X = _spd(3, 4, 5, low=0.01, high=2.0)
    torch.testing.assert_close(se.nn.ReEig(0.5)(X), _eigh_function(X, lambda w: w.clamp_min(0.5)))
    log = se.nn.LogEig(vectorize=False)(X)
    torch.testing.assert_close(log, _eigh_function(X, torch.log))
    torch.testing.assert_close(se.nn.ExpEig()(log), X)
    assert se.nn.LogEig()(X).shape == (3, 10)
    # ReEig makes eigenvalues tie at eps: the gradient equals central differences of the
    # loss (smooth here: no eigenvalue of X at the kink 1.0)
    assert bool(((torch.linalg.eigvalsh(X) - 1.0).abs() > 1e-3).all())
    G = torch.randn(3, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def loss(M: torch.Tensor) -> torch.Tensor:
        return (se.nn.LogEig()(se.nn.ReEig(1.0)(M)) * G).sum()

    A = X.clone().requires_grad_(True)
    loss(A).backward()
    assert A.grad is not None
    E = torch.randn(X.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    E = (E + E.mT) / 2
    h = 1e-6
    numeric = (loss(X + h * E) - loss(X - h * E)) / (2 * h)
    torch.testing.assert_close((A.grad * E).sum(), numeric, rtol=1e-7, atol=1e-9)
    # the baseline's failure, built so that no platform's round-off decides it: a diagonal
    # input whose clamped eigenvalues are bit-equal (eigh of a diagonal matrix is exact)
    B = torch.diag(torch.tensor([0.5, 0.25, 1.5, 2.0], dtype=torch.float64)).requires_grad_()
    naive = symmetric_to_vector(
        _eigh_function(_eigh_function(B, lambda w: w.clamp_min(1.0)), torch.log)
    )
    (naive * G[0]).sum().backward()
    assert B.grad is not None and not bool(torch.isfinite(B.grad).all())


def test_spd_batchnorm_train_eval_state_dict() -> None:
    layer = se.nn.SPDBatchNorm(4, momentum=0.5)
    X = _spd(8, 4, 7)
    Y = layer(X)
    logs = _eigh_function(Y, torch.log)
    torch.testing.assert_close(
        logs.mean(0), torch.zeros(4, 4, dtype=torch.float64), atol=1e-10, rtol=0
    )
    expected_running = 0.5 * _eigh_function(X, torch.log).mean(0)
    torch.testing.assert_close(layer.running_mean.double(), expected_running, atol=1e-6, rtol=0)
    layer.eval()
    one = layer(X[:1])
    torch.testing.assert_close(one, layer(X)[:1])  # eval ignores batch composition
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = se.nn.SPDBatchNorm(4).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fresh(X[:1]), one)
    layer.train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        layer(X[:1])


def _brooks_reference(X: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Brooks et al.'s batch norm by plain eigh: one Karcher step from the arithmetic mean,
    then ``B^{1/2} G^{-1/2} X G^{-1/2} B^{1/2}`` with ``B = exp(S)``."""
    G = X.mean(0)
    inverse = _eigh_function(G, torch.rsqrt)
    tangent = _eigh_function(inverse @ X @ inverse, torch.log).mean(0)
    root = _eigh_function(G, torch.sqrt)
    G = root @ _eigh_function(tangent, torch.exp) @ root
    C = _eigh_function(S / 2, torch.exp) @ _eigh_function(G, torch.rsqrt)
    return C @ X @ C.mT


def test_affine_invariant_batchnorm_equals_the_reference_and_centers_at_the_bias() -> None:
    X = _spd(8, 4, 10)
    layer = se.nn.SPDBatchNorm(4, mean="affine-invariant", momentum=0.5).double()
    S = torch.randn(4, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    with torch.no_grad():
        layer.bias.copy_(0.3 * S)
    S = 0.3 * (S + S.T) / 2
    Y = layer(X)
    torch.testing.assert_close(Y, _brooks_reference(X, S))
    # with the flow converged the batch's Karcher mean lands on B = exp(S)
    converged = se.nn.SPDBatchNorm(4, mean="affine-invariant", karcher_steps=30).double()
    with torch.no_grad():
        converged.bias.copy_(S)
    torch.testing.assert_close(
        se.airm_mean(converged(X), tolerance=1e-12), _eigh_function(S, torch.exp)
    )
    # the running mean walks the geodesic from I towards the batch mean: halfway = G^{1/2}
    G = se.airm_mean(X, steps=1)
    torch.testing.assert_close(layer.running_mean, _eigh_function(G, torch.sqrt))
    assert int(layer.num_batches_tracked) == 1
    assert "mean='affine-invariant', karcher_steps=1" in repr(layer)


def test_affine_invariant_batchnorm_eval_state_dict_and_ties() -> None:
    layer = se.nn.SPDBatchNorm(3, mean="affine-invariant")
    assert torch.equal(layer.running_mean, torch.eye(3))
    X = _spd(6, 3, 12).float()
    for _ in range(3):
        layer(X)
    layer.eval()
    one = layer(X[:1])
    torch.testing.assert_close(one, layer(X)[:1])  # eval ignores batch composition
    R = _eigh_function(layer.running_mean.double(), torch.rsqrt)
    torch.testing.assert_close(one.double(), R @ X[:1].double() @ R, rtol=1e-5, atol=1e-5)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = se.nn.SPDBatchNorm(3, mean="affine-invariant").eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fresh(X[:1]), one)
    # a batch of equal matrices ties every eigenvalue of G^{-1/2} X G^{-1/2} at 1
    tied = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1).requires_grad_(True)
    G = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    train = se.nn.SPDBatchNorm(3, mean="affine-invariant").double()
    (train(tied) * G).sum().backward()
    assert tied.grad is not None and bool(torch.isfinite(tied.grad).all())
    # centered output is I whatever the perturbation's mean: the gradient is G's
    # symmetric part minus its batch mean
    sym = (G + G.mT) / 2
    torch.testing.assert_close(tied.grad, sym - sym.mean(0))
    with pytest.raises(se.ArgumentError, match="mean: expected one of"):
        se.nn.SPDBatchNorm(3, mean="riemann")
    with pytest.raises(se.ArgumentError, match="karcher_steps"):
        se.nn.SPDBatchNorm(3, mean="affine-invariant", karcher_steps=0)


@pytest.mark.parametrize("mean", ["log-euclidean", "affine-invariant"])
def test_spd_batchnorm_buffers_take_the_factory_dtype(mean: str) -> None:
    layer = se.nn.SPDBatchNorm(3, mean=mean, dtype=torch.float64)  # as BatchNorm's buffers
    assert layer.running_mean.dtype == layer.bias.dtype == torch.float64
    layer(_spd(4, 3, 40))
    assert layer.running_mean.dtype == torch.float64


@pytest.mark.parametrize("mean", ["log-euclidean", "affine-invariant"])
def test_spd_batchnorm_cumulative_momentum_and_reset(mean: str) -> None:
    # momentum=None: BatchNorm's cumulative average (factor 1/k at the k-th batch)
    layer = se.nn.SPDBatchNorm(4, momentum=None, mean=mean).double()
    batches = [_spd(6, 4, 20 + k) for k in range(3)]
    for batch in batches:
        layer(batch)
    assert int(layer.num_batches_tracked) == 3
    if mean == "log-euclidean":
        expected = torch.stack([_eigh_function(b, torch.log).mean(0) for b in batches]).mean(0)
    else:  # the inductive mean: G₁, then G₁ #_{1/2} G₂, then that #_{1/3} G₃
        means = [se.airm_mean(b, steps=1) for b in batches]
        expected = se.airm_geodesic(se.airm_geodesic(means[0], means[1], 0.5), means[2], 1 / 3)
    torch.testing.assert_close(layer.running_mean, expected)
    assert "momentum=None" in repr(layer)
    layer.reset_running_stats()
    assert int(layer.num_batches_tracked) == 0
    identity = torch.eye(4, dtype=torch.float64)
    assert torch.equal(layer.running_mean, identity if mean != "log-euclidean" else 0 * identity)


@pytest.mark.parametrize(
    "layer",
    [se.nn.BiMap(4, 3), se.nn.ReEig(0.5), se.nn.LogEig(), se.nn.ExpEig(),
     se.nn.SPDBatchNorm(4), se.nn.SPDBatchNorm(4, mean="affine-invariant", karcher_steps=2)],
)  # fmt: skip
def test_gradcheck_float64(layer: torch.nn.Module) -> None:
    layer = layer.double()
    X = _spd(3, 4, 8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda X: layer((X + X.mT) / 2), (X,))


def test_spd_layers_refuse_bad_input() -> None:
    for layer in (
        se.nn.ReEig(),
        se.nn.LogEig(),
        se.nn.SPDBatchNorm(3),
        se.nn.SPDBatchNorm(3, mean="affine-invariant"),
    ):
        with pytest.raises(se.ShapeError):
            layer(torch.eye(3))  # no batch dimension
        with pytest.raises(se.NotSymmetricError):
            layer(torch.tensor([[[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]] * 2))
    with pytest.raises(se.NotPositiveDefiniteError):
        se.nn.LogEig()(-torch.eye(3).expand(2, 3, 3))
    evaluating = se.nn.SPDBatchNorm(3, mean="affine-invariant").eval()  # no logm of X in eval
    indefinite = torch.eye(3).repeat(2, 1, 1)
    indefinite[1, 2, 2] = -1.0
    with pytest.raises(se.NotPositiveDefiniteError, match="fails for matrix 1 of the 2"):
        evaluating(indefinite)
    with pytest.raises(se.NotSymmetricError):
        evaluating(torch.tensor([[[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]] * 2))
    with pytest.raises(se.NonFiniteError):
        evaluating(torch.full((2, 3, 3), float("nan")))
    X = _spd(4, 6, 9).float()
    net = torch.nn.Sequential(
        se.nn.BiMap(6, 4), se.nn.ReEig(), se.nn.LogEig(), torch.nn.Linear(10, 2)
    )
    assert net(X).dtype == torch.float32 and net(X).shape == (4, 2)


def test_affine_invariant_batchnorm_against_spd_learn_where_it_is_installed() -> None:
    """spd-learn's SPDBatchNormMean computes the same output and running mean; its gradient
    treats the batch mean as a constant (it detaches the batch), ours differentiates it."""
    modules = pytest.importorskip("spd_learn.modules")  # optional peer (pip --no-deps)
    X = _spd(8, 5, 30)
    G = torch.randn(8, 5, 5, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    ours = se.nn.SPDBatchNorm(5, mean="affine-invariant").double()
    peer = modules.SPDBatchNormMean(5, dtype=torch.float64)
    grads = []
    for layer in (ours, lambda x: peer(x.unsqueeze(1)).squeeze(1)):
        x = X.clone().requires_grad_(True)
        y = layer(x)
        (y * G).sum().backward()
        grads.append(x.grad)
        outputs = y.detach()
        torch.testing.assert_close(outputs, _brooks_reference(X, torch.zeros(5, 5).double()))
    torch.testing.assert_close(ours.running_mean, peer.running_mean.reshape(5, 5))
    x = X.clone().requires_grad_(True)  # ours with the mean held constant = spd-learn's
    root = se.inv_sqrtm(se.airm_mean(X, steps=1))
    ((root @ x @ root) * G).sum().backward()
    torch.testing.assert_close(grads[1], x.grad)
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) > 0.1  # the mean's term


@pytest.mark.parametrize("orthogonal_map", ["cayley", "matrix_exp"])
def test_bimap_takes_another_orthogonal_map_and_keeps_w_orthonormal(orthogonal_map: str) -> None:
    torch.manual_seed(0)
    layer = se.nn.BiMap(7, 4, channels=2, orthogonal_map=orthogonal_map)
    W0 = torch.linalg.qr(torch.randn(2, 7, 4))[0]
    layer.weight = W0  # assigning keeps the given W
    assert torch.allclose(layer.weight, W0, atol=1e-6)
    X = torch.randn(3, 2, 7, 20)
    X = X @ X.mT / 20
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(X).square().sum().backward()
    optimizer.step()
    W = layer.weight.detach()
    assert not torch.allclose(W, W0, atol=1e-4)  # it trained
    eye = torch.eye(4).expand(2, 4, 4)
    assert torch.allclose(W.mT @ W, eye, atol=1e-5)  # and stayed orthonormal
    copy = se.nn.BiMap(7, 4, channels=2, orthogonal_map=orthogonal_map)
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy.weight, layer.weight)
    assert f"orthogonal_map={orthogonal_map!r}" in repr(layer)


def test_bimap_refuses_an_unknown_orthogonal_map() -> None:
    with pytest.raises(se.ArgumentError, match=r"orthogonal_map.*householder.*cayley"):
        se.nn.BiMap(4, 2, orthogonal_map="qr")


@pytest.mark.parametrize("shape", [(7, 4), (2, 5, 5), (3, 6, 1), (4, 9)])
def test_householder_columns_equal_torch_s_householder_product(shape: tuple[int, ...]) -> None:
    """The closed-form product (UT transform) against LAPACK's reflector by reflector."""
    from stableeig.nn.orthogonal import householder_columns

    g = torch.Generator().manual_seed(0)
    tall = shape if shape[-2] >= shape[-1] else (*shape[:-2], shape[-1], shape[-2])
    reflectors = torch.randn(tall, generator=g, dtype=torch.float64).requires_grad_()
    A = reflectors.tril(-1)
    tau = 2.0 / (1.0 + (A * A).sum(dim=-2))
    ours, theirs = householder_columns(A, tau), torch.linalg.householder_product(A, tau)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-13)
    G = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad(Q, reflectors, G, retain_graph=True)[0] for Q in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bimap_householder_is_torch_s_parametrization_with_the_same_state(
    dtype: torch.dtype,
) -> None:
    """Default BiMap: torch's orthogonal(householder) to rounding, in values and gradients,
    and state dicts load both ways (checkpoints saved before the closed-form product)."""
    from torch.nn.utils.parametrizations import orthogonal

    torch.manual_seed(0)
    ours = se.nn.BiMap(9, 4, channels=3, dtype=dtype)
    reference = torch.nn.Module()
    reference.weight = torch.nn.Parameter(torch.empty(3, 9, 4, dtype=dtype))
    orthogonal(reference, "weight", orthogonal_map="householder")
    assert set(reference.state_dict()) == set(ours.state_dict())
    reference.load_state_dict(ours.state_dict())
    ours.load_state_dict(reference.state_dict())
    tolerance = {"rtol": 0, "atol": 1e-6 if dtype == torch.float32 else 1e-13}
    torch.testing.assert_close(ours.weight, reference.weight, **tolerance)
    G = torch.randn(3, 9, 4, dtype=dtype)
    (ours.weight * G).sum().backward()
    (reference.weight * G).sum().backward()
    originals = [m.parametrizations.weight.original.grad for m in (ours, reference)]
    torch.testing.assert_close(originals[0], originals[1], **tolerance)
    ours.weight = torch.linalg.qr(torch.randn(3, 9, 4, dtype=dtype))[0]  # assignment: torch's
    assert torch.allclose(ours.weight.mT @ ours.weight, torch.eye(4, dtype=dtype), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 10.0])
def test_householder_columns_stay_orthonormal_to_a_few_ulps(
    dtype: torch.dtype, scale: float
) -> None:
    """256 reflections of any scale: ``QᵀQ = I`` within 16 eps (LAPACK's product: ~4–9)."""
    from stableeig.nn.orthogonal import householder_columns

    X = torch.randn(256, 128, dtype=dtype, generator=torch.Generator().manual_seed(0)) * scale
    A = X.tril(-1)
    Q = householder_columns(A, 2.0 / (1.0 + (A * A).sum(dim=-2)))
    error = (Q.mT @ Q - torch.eye(128, dtype=dtype)).abs().max()
    assert float(error) <= 16 * torch.finfo(dtype).eps
