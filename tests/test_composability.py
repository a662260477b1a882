"""The functions under ``torch.func`` (jvp, jacfwd, hessian, vmap, vmap(grad)), forward-mode
``gradcheck``, and ``torch.compile(fullgraph=True)`` with ``se.host_checks(False)`` (issue 16).

References are ``torch.linalg.eigh``-based float64 functions on well-separated spectra,
where eigh's own derivatives are exact; loops stand in for vmap.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import stableeig as se

Function = Callable[[torch.Tensor], torch.Tensor]


def _spd(n: int = 5, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """Symmetric positive definite, eigenvalues spread over [1, 5] (well separated)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=torch.float64))
    w = torch.linspace(1, 5, n, dtype=torch.float64) + 0.1 * torch.rand(n, generator=g)
    return (Q * w.unsqueeze(-2)) @ Q.mT


def _reference(f: Callable[[torch.Tensor], torch.Tensor]) -> Function:
    def apply(A: torch.Tensor) -> torch.Tensor:
        w, V = torch.linalg.eigh(A)
        return (V * f(w).unsqueeze(-2)) @ V.mT

    return apply


def _top2(w: torch.Tensor) -> torch.Tensor:
    return (torch.arange(w.shape[-1]) >= w.shape[-1] - 2).to(w.dtype).expand_as(w)


PAIRS: dict[str, tuple[Function, Function]] = {
    "inv_sqrtm": (se.inv_sqrtm, _reference(torch.rsqrt)),
    "sqrtm": (se.sqrtm, _reference(torch.sqrt)),
    "top_k_projector": (lambda A: se.top_k_projector(A, 2), _reference(_top2)),
    "eigh/analytic w": (
        lambda A: se.eigh(A, backward="analytic")[0],
        lambda A: torch.linalg.eigvalsh(A),
    ),
    "eigh/analytic V|V|": (  # sign-free function of the eigenvectors
        lambda A: se.eigh(A, backward="analytic")[1].abs(),
        lambda A: torch.linalg.eigh(A)[1].abs(),
    ),
    "inv_sqrtm/analytic": (lambda A: se.inv_sqrtm(A, "analytic"), _reference(torch.rsqrt)),
}


def _symmetric_tangent(n: int, seed: int) -> torch.Tensor:
    d = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d + d.mT


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_jvp_and_jacfwd_equal_eigh_references(name: str) -> None:
    ours, reference = PAIRS[name]
    A, dA = _spd(), _symmetric_tangent(5, 1)
    value, tangent = torch.func.jvp(ours, (A,), (dA,))
    expected_value, expected = torch.func.jvp(reference, (A,), (dA,))
    torch.testing.assert_close(value, expected_value)
    torch.testing.assert_close(tangent, expected)
    torch.testing.assert_close(torch.func.jacfwd(ours)(A), torch.func.jacrev(ours)(A))


@pytest.mark.parametrize("rule", ["power", "taylor", "clip"])
def test_forward_mode_is_the_adjoint_of_every_rules_backward(rule: str) -> None:
    def f(A: torch.Tensor) -> torch.Tensor:
        return se.eigh(A, backward=rule)[1].abs()

    A = _spd(seed=2)
    torch.testing.assert_close(torch.func.jacfwd(f)(A), torch.func.jacrev(f)(A))


def test_hessian_equals_the_eigh_reference() -> None:
    A = _spd(4, seed=3)

    def ours(A: torch.Tensor) -> torch.Tensor:
        return (se.inv_sqrtm(A) ** 2).sum()

    def reference(A: torch.Tensor) -> torch.Tensor:  # ours reads sym(A); eigh the lower half
        return (PAIRS["inv_sqrtm"][1]((A + A.mT) / 2) ** 2).sum()

    torch.testing.assert_close(torch.func.hessian(ours)(A), torch.func.hessian(reference)(A))


def test_forward_ad_gradcheck() -> None:
    A = _spd(4, seed=4).requires_grad_(True)
    for f in (se.inv_sqrtm, se.sqrtm, lambda A: se.top_k_projector(A, 2)):
        assert torch.autograd.gradcheck(
            lambda A, f=f: f((A + A.mT) / 2), (A,), check_forward_ad=True, check_backward_ad=True
        )


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_vmap_and_per_sample_gradients_equal_loops(name: str) -> None:
    ours, _ = PAIRS[name]
    B = _spd(batch=(3,), seed=5)
    torch.testing.assert_close(torch.func.vmap(ours)(B), torch.stack([ours(A) for A in B]))
    G = torch.randn(ours(B[0]).shape, generator=torch.Generator().manual_seed(6), dtype=B.dtype)

    def loss(A: torch.Tensor) -> torch.Tensor:
        return (G * ours(A)).sum()

    looped = torch.stack([torch.func.grad(loss)(A) for A in B])
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(loss))(B), looped)


def test_vmap_skips_only_the_host_checks() -> None:
    B = torch.stack([_spd(), -torch.eye(5, dtype=torch.float64)])  # the second is not SPD
    with pytest.raises(se.NotPositiveDefiniteError):
        se.inv_sqrtm(B)  # eager: checked
    out = torch.func.vmap(se.inv_sqrtm)(B)  # vmap: no truth value, no check: NaN stays visible
    assert bool(torch.isnan(out[1]).all()) and bool(torch.isfinite(out[0]).all())
    with pytest.raises(se.ShapeError):  # shape checks still run
        torch.func.vmap(se.inv_sqrtm)(torch.ones(2, 3, 4))


def test_host_checks_switch_restores_and_documents_what_is_lost() -> None:
    with se.host_checks(False):
        assert bool(torch.isnan(se.inv_sqrtm(torch.tensor([[float("nan")]]))).all())
        with se.host_checks(True), pytest.raises(se.NonFiniteError):
            se.inv_sqrtm(torch.tensor([[float("nan")]]))
    with pytest.raises(se.NonFiniteError):
        se.inv_sqrtm(torch.tensor([[float("nan")]]))


@pytest.mark.slow
def test_fullgraph_compiles_functions_and_a_training_step_without_graph_breaks() -> None:
    torch._dynamo.reset()
    A = _spd(batch=(4,), seed=7).float()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), se.nn.ZCAWhitening2d(16, group_size=8), torch.nn.ReLU()
    )
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    with se.host_checks(False):
        for f in (se.inv_sqrtm, lambda A: se.eigh(A)[1].abs(), lambda A: se.sqrtm(A)):
            assert torch._dynamo.explain(f)(A).graph_break_count == 0
            torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="eager")(A), f(A))
        assert torch._dynamo.explain(lambda x: model(x))(x).graph_break_count == 0
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        results = []
        for net in (model, compiled):
            leaf = x.clone().requires_grad_(True)
            y = net(leaf)
            grads = torch.autograd.grad(y.pow(3).sum(), [leaf, model[0].weight])
            results.append([y, *grads])
    for a, b in zip(*results):  # float32 round-off, relative to the largest entry
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    # checks on: still one graph (the checks are assertions in it), and they still fire
    torch._dynamo.reset()
    checked = torch.compile(se.inv_sqrtm, fullgraph=True, backend="eager")
    torch.testing.assert_close(checked(A), se.inv_sqrtm(A))
    with pytest.raises(RuntimeError, match="expected a positive definite"):
        checked(-A)


TIED: dict[str, Function] = {  # every eigenvalue of the identity is tied
    "expm": se.expm,
    "logm": se.logm,
    "sqrtm": se.sqrtm,
    "inv_sqrtm": se.inv_sqrtm,
    "powm": lambda A: se.powm(A, 0.3),
    "funm": lambda A: se.funm(A, torch.tanh),
    "eigh/analytic w": lambda A: se.eigh(A, backward="analytic")[0],
    "eigh/power V|V|": lambda A: se.eigh(A)[1].abs(),
}


@pytest.mark.slow
@pytest.mark.parametrize("checks", [True, False])
@pytest.mark.parametrize("name", sorted(TIED))
def test_compiled_gradients_at_exactly_tied_eigenvalues_equal_eager(
    name: str, checks: bool
) -> None:
    """AOTAutograd passes zeros, not None, for an output's unused gradient: with an infinite
    eigenvector coefficient at a tie that was Inf · 0 = NaN in every compiled gradient at
    the identity with host checks off (0.4.0), while eager was exact."""
    f = TIED[name]
    torch._dynamo.reset()
    G = torch.randn(5, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    results = []
    with se.host_checks(checks):
        for g in (f, torch.compile(f, backend="aot_eager")):
            A = torch.eye(5, dtype=torch.float64).requires_grad_(True)
            y = g(A)
            y.backward(G[0] if y.dim() == 1 else G)
            results.append(A.grad)
    assert results[0] is not None and bool(torch.isfinite(results[0]).all())
    torch.testing.assert_close(results[1], results[0])


def _eval_layers() -> list[torch.nn.Module]:
    layers: list[torch.nn.Module] = []
    for track in (True, False):  # eval with running statistics, and batch statistics
        for layer in (
            se.nn.ZCAWhitening1d(4, group_size=2, dtype=torch.float64, track_running_stats=track),
            se.nn.PCADenoising1d(4, n_components=2, dtype=torch.float64, track_running_stats=track),
        ):
            for seed in range(3):
                g = torch.Generator().manual_seed(seed)
                layer(torch.randn(32, 4, generator=g, dtype=torch.float64))
            layers.append(layer.eval())
    return layers


@pytest.mark.parametrize("index", range(4))
def test_layers_under_jvp_jacfwd_vmap_and_vmap_grad(index: int) -> None:
    layer = _eval_layers()[index]
    g = torch.Generator().manual_seed(10)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    dx = torch.randn(16, 4, generator=g, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(layer, x)  # eager reverse mode: the anchor
    _, tangent = torch.func.jvp(layer, (x,), (dx,))
    torch.testing.assert_close(tangent, torch.einsum("ijkl,kl->ij", jacobian, dx))
    torch.testing.assert_close(torch.func.jacfwd(layer)(x), jacobian)
    batches = torch.randn(3, 16, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        torch.func.vmap(layer)(batches), torch.stack([layer(b) for b in batches])
    )

    def loss(b: torch.Tensor) -> torch.Tensor:
        return layer(b).pow(3).sum()

    looped = []
    for b in batches:
        leaf = b.clone().requires_grad_(True)
        looped.append(torch.autograd.grad(loss(leaf), leaf)[0])
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(loss))(batches), torch.stack(looped))


@pytest.mark.parametrize(
    "make",
    [
        lambda: se.nn.ZCAWhitening2d(8, group_size=4),
        lambda: se.nn.ZCAWhitening2d(8, group_size=4, method="power"),
        lambda: se.nn.PCADenoising2d(8, group_size=4, n_components=2),
    ],
    ids=["zca-loewner", "zca-power", "pca"],
)
def test_layers_train_under_torch_func_with_their_buffers_as_inputs(make: object) -> None:
    """``torch.func.grad`` over ``functional_call`` in training, the recipe BatchNorm needs
    too (buffers passed in, so the running update mutates an input): parameter gradients
    and running buffers equal eager; captured buffers fail as BatchNorm's do."""
    import copy

    from torch.func import functional_call, grad

    torch.manual_seed(0)
    layer = make()  # type: ignore[operator]
    eager = copy.deepcopy(layer)
    x = torch.randn(6, 8, 3, 3, dtype=torch.float32)
    params = {k: v.detach().clone() for k, v in layer.named_parameters()}
    buffers = {k: v.clone() for k, v in layer.named_buffers()}

    def loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(layer, {**p, **b}, (x,)).pow(3).sum()

    grads = grad(loss)(params, buffers)
    expected = torch.autograd.grad(eager(x).pow(3).sum(), list(eager.parameters()))
    for (key, _), reference in zip(eager.named_parameters(), expected):
        scale = float(reference.abs().max())
        torch.testing.assert_close(grads[key], reference, rtol=1e-5, atol=1e-5 * scale)
    for key, reference in eager.named_buffers():
        torch.testing.assert_close(buffers[key], reference)
    assert int(buffers["num_batches_tracked"]) == 1
    with pytest.raises(RuntimeError, match="mutate a captured Tensor"):
        grad(lambda p: functional_call(layer, p, (x,)).sum())(params)


@pytest.mark.parametrize("method", ["loewner", "analytic"])  # the exact rules
@pytest.mark.parametrize("kind", ["zca", "pca"])
def test_layers_forward_ad_gradcheck_and_hessian(kind: str, method: str) -> None:
    """Batch-statistics layers (``track_running_stats=False``) and eval layers under
    ``gradcheck(check_forward_ad=True)``, and ``torch.func.hessian`` of a cubic loss
    against central differences of the reverse-mode gradient (float64). (``power`` and
    ``taylor`` are approximate gradients by design: their forward mode is the adjoint of
    their backward, tested below.)"""
    from torch.func import hessian

    torch.manual_seed(0)
    options = {"n_components": 2} if kind == "pca" else {}
    layer_type = se.nn.PCADenoising1d if kind == "pca" else se.nn.ZCAWhitening1d
    layer = layer_type(3, method=method, track_running_stats=False, dtype=torch.float64, **options)
    x = (torch.randn(6, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 4.0])).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,), check_forward_ad=True)
    tracked = layer_type(3, method=method, dtype=torch.float64, **options)
    tracked(x.detach())
    assert torch.autograd.gradcheck(tracked.eval(), (x,), check_forward_ad=True)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return layer(z).pow(3).sum()

    def gradient(z: torch.Tensor) -> torch.Tensor:
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(loss(z), z)[0]

    H = hessian(loss)(x.detach())
    step, columns = 1e-6, []
    for index in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=torch.float64)
        e[index] = step
        e = e.view_as(x)
        columns.append((gradient(x + e) - gradient(x - e)) / (2 * step))
    reference = torch.stack(columns, dim=-1).view_as(H)
    torch.testing.assert_close(H, reference, rtol=1e-5, atol=1e-6 * float(H.abs().max()))
    assert H.abs().max() > 1.0


@pytest.mark.parametrize("method", ["power", "taylor"])
@pytest.mark.parametrize("kind", ["zca", "pca"])
def test_layers_forward_mode_is_the_adjoint_of_the_backward(kind: str, method: str) -> None:
    """``<J v, u> = <v, Jᵀ u>`` for the approximate rules' layers (jvp against vjp)."""
    from torch.func import jvp, vjp

    torch.manual_seed(1)
    options = {"n_components": 2} if kind == "pca" else {}
    layer_type = se.nn.PCADenoising1d if kind == "pca" else se.nn.ZCAWhitening1d
    layer = layer_type(4, method=method, track_running_stats=False, dtype=torch.float64, **options)
    x = torch.randn(8, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 5.0])
    v, u = torch.randn_like(x), torch.randn_like(x)
    _, forward = jvp(layer, (x,), (v,))
    _, pullback = vjp(layer, x)
    (backward,) = pullback(u)
    left, right = float((forward * u).sum()), float((v * backward).sum())
    assert abs(left - right) <= 1e-10 * max(1.0, abs(left))
    assert abs(left) > 1e-3
