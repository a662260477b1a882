"""Smoke tests of the benchmarks at their smallest sizes (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import stableeig as se
from stableeig.bench import gradients, speed, speed_report, timing


def test_gradient_sweep_rows_and_outputs(tmp_path: Path) -> None:
    rows = gradients.gradient_sweep(sizes=(4,), dtypes=(torch.float32,), draws=1)
    assert {r["function"] for r in rows} == {"inv_sqrtm", "top_k_projector"}
    identity = [r for r in rows if r["spectrum"] == "identity" and r["function"] == "inv_sqrtm"]
    by_method = {r["method"]: r for r in identity}
    assert by_method["analytic"]["non_finite_fraction"] == 1.0  # torch's rule fails on ties
    assert by_method["loewner"]["median_relative_error"] < 1e-6  # exact, also on ties
    assert all(r["non_finite_fraction"] == 0 for r in rows if r["method"] != "analytic")
    gradients.write(rows, tmp_path, n=4)
    assert len(json.loads((tmp_path / "bench_gradients.json").read_text())) == len(rows)
    assert "| identity | NaN |" in (tmp_path / "bench_gradients.md").read_text()
    assert (tmp_path / "bench_gradients.png").stat().st_size > 1000


def test_speed_parts_smallest_sizes(tmp_path: Path) -> None:
    result = {
        "environment": timing.environment(),
        "device": "cpu",
        "repeats": 1,
        "quick": True,
        "decomposition": speed.decomposition_speed((4,), elements=64, repeats=1),
        "eigh_backward": speed.eigh_backward_speed(n=4, batch=2, repeats=1),
        "layers": speed.layer_speed((4, 8, 3, 3), (4,), ("loewner",), repeats=1),
        "pi_over_power": speed.pi_over_power((4, 8, 3, 3), repeats=1),
        "placement": speed.placement_speed("cpu"),
        "training": speed.training_speed(
            ("loewner",), group_size=16, batch=4, repeats=1, width=0.0625
        ),
    }
    result["compiled"] = speed.compiled_training_speed(
        group_size=16, batch=4, repeats=1, width=0.0625, backend="eager"
    )
    assert all(row["first_loss_difference"] < 1e-4 for row in result["compiled"])
    rows = result["decomposition"] + result["layers"] + result["training"] + result["compiled"]
    assert all(row["ratio"] > 0 for row in [*rows, result["pi_over_power"]])
    assert result["placement"] == []  # no host round trip to compare on a CPU
    speed_report.write(result, tmp_path, "speed")
    text = (tmp_path / "speed.md").read_text()
    assert "(a) inv_sqrtm" in text and "(b) ZCAWhitening2d" in text and "(c) one SGD step" in text
    assert "PI layer vs the `power` layer" in text
    assert "(d) the same SGD step with the model under `torch.compile`" in text


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("group_size", [8, 80])  # host eigh (<= 64) and device eigh
def test_cuda_layer_equals_cpu(group_size: int) -> None:
    """The GPU path (whole-batch passes, eigh placement) against the CPU's, float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 80, 5, 5, generator=g, dtype=torch.float64)
    upstream = torch.randn(16, 80, 5, 5, generator=g, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        layer = se.nn.ZCAWhitening2d(80, group_size=group_size, method="power")
        layer = layer.double().to(device)
        xi = x.to(device).requires_grad_(True)
        y = layer(xi)
        y.backward(upstream.to(device))
        layer.eval()
        results.append([t.cpu() for t in (y, xi.grad, layer.weight.grad, layer(xi.detach()))])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    A = torch.randn(4, 8, 8, dtype=torch.float64)
    A = A @ A.mT + 0.1 * torch.eye(8, dtype=torch.float64)
    G = torch.randn(4, 8, 8, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        X = A.to(device).float().requires_grad_(True)
        (se.inv_sqrtm(X) * G.to(device).float()).sum().backward()
        grads.append(X.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4)
    layer = se.nn.ZCAWhitening2d(16, group_size=8).cuda()
    x = torch.randn(8, 16, 4, 4, device="cuda", requires_grad=True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_demo_mechanism_shows_analytic_failing_at_a_tie_and_the_others_finite() -> None:
    from stableeig.bench import demo
    from stableeig.bench.data import load_dataset

    lines = demo.mechanism(load_dataset("fashion-mnist-subset"))
    text = "\n".join(lines)
    assert "eigenvalues within 1% of eps" in text
    tail = {line.split()[0]: line.split()[1] for line in lines[-3:]}
    assert tail == {"analytic": "NON-FINITE", "power": "finite", "loewner": "finite"}


def test_bench_svd_quick_shows_ours_exact_where_the_copied_svd_is_nan(tmp_path: Path) -> None:
    pytest.importorskip("mpmath")
    from stableeig import cli

    assert cli.main(["bench", "svd", "--quick", f"--results={tmp_path}", "--quiet"]) == 0
    result = json.loads((tmp_path / "bench_svd_quick.json").read_text())
    ours = [r for r in result["accuracy"] if r["method"] == "stableeig"]
    assert ours and all(r["outcome"] == "finite" and r["error"] < 1e-12 for r in ours)
    copied = {r["point"]: r["outcome"] for r in result["accuracy"]
              if r["method"] == "torch.linalg.svd (copied)"}  # fmt: skip
    assert copied["I₃"] == "NaN/Inf" and copied["exact rotation"] == "NaN/Inf"
    assert {r["case"] for r in result["speed"]} >= {"64 × 3×3 rotation", "64×64 polar"}
    assert "| I₃ |" in (tmp_path / "bench_svd_quick.md").read_text()


def test_bench_eigsh_quick_meets_the_gradient_target_where_lobpcg_refuses(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    from stableeig import cli

    assert cli.main(["bench", "eigsh", "--quick", f"--results={tmp_path}", "--quiet"]) == 0
    result = json.loads((tmp_path / "bench_eigsh_quick.json").read_text())
    ours = [r for r in result["accuracy"] if r["method"].startswith("se.eigsh")]
    assert len(ours) == 2
    for row in ours:  # the targets: 1e-8 eigenvalues, 1e-7 gradients
        assert row["values"] < 1e-8 and row["grad Σλ"] < 1e-7 and row["grad ⟨G, P⟩"] < 1e-7
    lobpcg = next(r for r in result["accuracy"] if r["method"] == "torch.lobpcg")
    assert str(lobpcg["grad Σλ"]).startswith("ValueError")
    assert "| se.eigsh (shift-invert) |" in (tmp_path / "bench_eigsh_quick.md").read_text()
    speed_rows = [r for r in result["speed"] if r["method"].startswith("se.eigsh")]
    assert all(r["values_vs_scipy"] < 1e-8 for r in speed_rows)  # the same start vectors


def test_bench_small_quick_rows_and_crossover() -> None:
    from stableeig.bench import small

    result = small.measure(quick=True, repeats=1)
    stories = {(r["story"], r["n"]) for r in result["rows"]}
    assert {("rotation", 3), ("rotation", 2), ("logm", 4), ("normal", 22)} <= stories
    assert "rotation" not in {r["story"] for r in result["rows"] if r["n"] in (4, 22)}
    assert all(r["median_s"] > 0 for r in result["rows"])
    assert [r["n"] for r in result["crossover"]] == [2, 3, 4, 5, 6, 8]
    text = small.render(result)
    assert "| rotation | 10,000 × 3×3 |" in text and "## Crossover" in text


def test_bench_spectral_quick_meets_the_accuracy_target(tmp_path: Path) -> None:
    pytest.importorskip("mpmath")
    from stableeig.bench import spectral

    data = spectral.run(tmp_path, quick=True)
    for function, methods in data["summary"].items():
        assert methods["stableeig"]["worst"] <= 1e-6, function  # float64 decomposition
        assert methods["stableeig"]["nan_or_refused"] == 0
    eigh = [m["torch.linalg.eigh autograd"] for m in data["summary"].values()]
    assert any(m["nan_or_refused"] > 0 or m["worst"] > 1e-2 for m in eigh)  # the baseline fails
    for function, ratio in data["over_floor"].items():  # compute_dtype=float32: at the floor
        assert ratio <= 2.0, function
    assert {row["function"] for row in data["speed"]} == {"logm", "expm"}
    assert all(row["ratio"] > 0 for row in data["speed"])
    text = (tmp_path / "bench_spectral.md").read_text()
    assert "| log |" in text and (tmp_path / "bench_spectral.png").stat().st_size > 1000
    assert "over the float32 floor" in text and "| logm | 4 × 16×16 |" in text


def test_wide_table_runs_renders_and_measures_gradient_errors(tmp_path: Path) -> None:
    """`reproduce wide` end to end on a tiny data set: rows per cell, the gradient error of
    each rule on the real covariances (exact rule in float64: ~0), table and plot."""
    from test_models_training import tiny_dataset

    from stableeig.bench import reproduce, wide

    results = tmp_path / "wide.jsonl"
    rows = wide.run(
        tiny_dataset(), results, seeds=1, steps=3, widths=(8, 32),
        methods=("batchnorm", "analytic", "loewner"), batch_size=16,
    )  # fmt: skip
    assert len(rows) == 6 and all(reproduce.row_problem(r) is None for r in rows)
    zca = [r for r in rows if r["method"] != "batchnorm" and r["success"]]
    assert zca and all(r["gradient_errors"] for r in zca)
    first = zca[0]["gradient_errors"][0]
    assert set(first) == {"step", *wide.MEASURED_RULES}
    assert first["loewner"] < 0.1  # float32 decomposition against float64: small
    table = wide.render(rows, {"8": 1e-5, "32": 1e-4})
    assert "| 32 | loewner |" in table and "floor" in table
    wide.plot(rows, tmp_path / "wide.png", None)
    assert (tmp_path / "wide.png").stat().st_size > 0
    # d = 32 > 16 samples: a rank-deficient covariance, measured like the real runs
    assert any(r["group_size"] == 32 for r in zca)
