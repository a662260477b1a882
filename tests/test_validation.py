"""Every error path of the public functions: type, message, and that nothing ran."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import stableeig as se

ENTRY_POINTS: dict[str, Callable[[torch.Tensor], object]] = {
    "eigh": lambda A: se.eigh(A),
    "inv_sqrtm": lambda A: se.inv_sqrtm(A),
    "sqrtm": lambda A: se.sqrtm(A),
    "top_k_projector": lambda A: se.top_k_projector(A, 1),
    "power_iteration_eigh": lambda A: se.power_iteration_eigh(A),
}


@pytest.fixture(params=sorted(ENTRY_POINTS))
def entry(request: pytest.FixtureRequest) -> Callable[[torch.Tensor], object]:
    return ENTRY_POINTS[request.param]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (torch.ones(3), se.ShapeError, r"at least 2 dimensions \(got shape \(3\)\)"),
        (torch.ones(2, 3), se.ShapeError, r"square matrices .* \(got shape \(2, 3\)\)"),
        (
            torch.eye(3, dtype=torch.int64),
            se.DTypeError,
            r"real floating dtype .* \(got torch.int64\)",
        ),
        (torch.eye(3, dtype=torch.complex64), se.DTypeError, r"\(got torch.complex64\)"),
        (
            torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]),
            se.NonFiniteError,
            r"got 2 NaN/Inf of 4",
        ),
        (
            torch.tensor([[1.0, float("inf")], [float("inf"), 1.0]]),
            se.NonFiniteError,
            "finite entries",
        ),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), se.NotSymmetricError, r"max\|A - Aᵀ\| = 2"),
    ],
)
def test_bad_matrices(
    entry: Callable[[torch.Tensor], object], bad: torch.Tensor, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        entry(bad)


def test_not_a_tensor() -> None:
    with pytest.raises(se.DTypeError, match=r"expected a torch.Tensor \(got list\)"):
        se.eigh([[1.0, 0.0], [0.0, 1.0]])  # type: ignore[arg-type]


def test_round_off_asymmetry_is_accepted_and_check_can_be_disabled() -> None:
    A = torch.eye(3) + torch.tensor([[0, 1e-6, 0], [0, 0, 0], [0, 0, 0]])
    se.eigh(A)  # within sqrt(eps) of float32
    skew = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    w, _ = se.eigh(skew, check_symmetric=False)  # reads (A + Aᵀ)/2
    torch.testing.assert_close(w, torch.tensor([0.0, 2.0]))


def _outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except se.StableEigError as error:
        return f"{type(error).__name__}: {error}"
    return "passed"


def _checked_calls(A: torch.Tensor) -> dict[str, Callable[[], object]]:
    return {
        "check": lambda: se._validation.check_finite_symmetric("A", A),
        "unchecked symmetry": lambda: se._validation.check_finite_symmetric(
            "A", A, symmetric=False
        ),
        "eigvalsh": lambda: se.eigh(A)[0],
        "sqrtm fwd+bwd": lambda: se.sqrtm(A.double().requires_grad_()).sum().backward(),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_small_matrices_checked_on_the_host_get_the_kernel_path_s_verdicts(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU tensors of at most 64 entries are checked in Python (one ``tolist``); the verdict
    and the error, for NaN, ±Inf, the largest finite entry, asymmetry at and beyond the
    tolerance and batches, are those of the kernels."""
    top, tol = torch.finfo(dtype).max, float(torch.finfo(dtype).eps) ** 0.5
    nan, inf = float("nan"), float("inf")
    cases = [
        [[1.0, 0.0], [0.0, 1.0]],
        [[1.0, nan], [nan, 1.0]],
        [[inf, 0.0], [0.0, 1.0]],
        [[1.0, -inf], [1.0, 1.0]],
        [[top, 0.0], [0.0, top]],
        [[1.0, 2.0], [0.0, 1.0]],
        [[1.0, tol / 4], [0.0, 1.0]],
        [[1.0, 1.5 * tol], [0.0, 1.0]],
        [[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.5], [0.25, 1.0]]],
        [[4.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 4.0]],
    ]
    for entries in cases:
        calls = _checked_calls(torch.tensor(entries, dtype=dtype))
        on_host = {name: _outcome(call) for name, call in calls.items()}
        monkeypatch.setattr(se._validation, "HOST_READ_MAX_ENTRIES", 0)
        by_kernels = {name: _outcome(call) for name, call in calls.items()}
        monkeypatch.undo()
        assert on_host == by_kernels, entries
    assert _outcome(lambda: se.eigh(torch.tensor(cases[1], dtype=dtype))).startswith(
        "NonFiniteError"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: se.eigh(torch.eye(2), "loewner"),
            r"expected one of 'power', 'taylor', 'clip', 'analytic' \(got 'loewner'\)",
        ),
        (lambda: se.eigh(torch.eye(2), "svd"), r"\(got 'svd'\)"),
        (lambda: se.Power(num_iters=-1), r"num_iters: expected an integer >= 0 \(got -1\)"),
        (lambda: se.Power(floor=0.0), r"floor: expected a finite number > 0 \(got 0.0\)"),
        (lambda: se.Taylor(order=-1), r"order: expected an integer >= 0 \(got -1\)"),
        (lambda: se.Clip(min_gap=0.0), r"min_gap: expected a finite number > 0 \(got 0.0\)"),
        (lambda: se.Clip(min_gap=-1), r"min_gap: expected a finite number > 0 \(got -1\)"),
        (lambda: se.PowerIteration(backward="x"), r"backward: expected one of 'reference'"),
        (lambda: se.eigh(torch.eye(2), 3), r"backward: expected a rule name .* \(got int\)"),
        (lambda: se.eigh(torch.eye(2), se.PowerIteration()), r"got PowerIteration of kind"),
    ],
)
def test_bad_rule_arguments(make: Callable[[], object], message: str) -> None:
    with pytest.raises(se.StableEigError, match=message):
        make()


def test_exception_hierarchy() -> None:
    assert issubclass(se.DTypeError, se.StableEigError) and issubclass(se.DTypeError, TypeError)
    for error in (se.ShapeError, se.NonFiniteError, se.NotSymmetricError, se.ArgumentError):
        assert issubclass(error, se.StableEigError) and issubclass(error, ValueError)
    assert set(se.exceptions.__all__) <= set(se.__all__)


def test_spectral_rule_names_and_k() -> None:
    with pytest.raises(se.StableEigError, match=r"expected one of 'loewner'.* \(got 'exact'\)"):
        se.inv_sqrtm(torch.eye(3), "exact")
    for k in (0, 4, None):
        with pytest.raises(
            se.StableEigError, match=rf"k: expected an integer in \[1, 3\] .*got {k}"
        ):
            se.top_k_projector(torch.eye(3), k)  # type: ignore[arg-type]


def test_compute_dtype_must_be_float32_or_float64() -> None:
    with pytest.raises(
        se.DTypeError,
        match=r"compute_dtype: expected torch.float32 or torch.float64 \(got torch.float16\)",
    ):
        se.eigh(torch.eye(3), compute_dtype=torch.float16)


def test_errors_are_value_or_type_errors() -> None:
    assert issubclass(se.ShapeError, ValueError) and issubclass(se.DTypeError, TypeError)
    assert issubclass(se.NotDifferentiableError, ValueError)


def _pages() -> str:
    """README.md and every docs/*.md page, concatenated (markers appear once across them)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    paths = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return "\n".join(path.read_text() for path in paths)


def _section(marker: str) -> str:
    text = _pages()
    assert text.count(f"<!-- {marker} -->\n") == 1, f"marker {marker!r} not exactly once"
    return text.split(f"<!-- {marker} -->\n")[1].split(f"\n<!-- end {marker} -->")[0]


def test_readme_rule_table_is_the_registry() -> None:
    assert _section("rule table") == se.rules.rule_table()


def _readme_sections() -> list[tuple[str, str]]:
    """benchmarks/sync_readme.py's marker -> results file pairs (the one list of them)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "sync_readme.py"
    return sorted(runpy.run_path(str(script))["SECTIONS"].items())


@pytest.mark.parametrize(("marker", "path"), _readme_sections())
def test_readme_result_tables_are_the_committed_outputs(marker: str, path: str) -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert _section(marker) == (root / path).read_text().strip()


def test_every_test_the_readme_compatibility_matrix_names_exists() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    matrix = _section("compatibility")
    named = set(re.findall(r"`(test_\w+)`", matrix))
    defined = set()
    for path in root.joinpath("tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    assert len(named) >= 8 and named <= defined, named - defined


def test_a_user_defined_rule_works_in_eigh_and_the_layers() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class HalfAnalytic(se.rules.EigenvectorRule):  # a user's rule: half the exact coefficients
        name: ClassVar[str] = "half"

        def coefficients(self, w: torch.Tensor) -> torch.Tensor:
            return se.Analytic().coefficients(w) / 2

    A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    A = A + 0.1 * torch.ones(3, 3, dtype=torch.float64)
    grads = []
    for rule in (HalfAnalytic(), "analytic"):
        leaf = A.clone().requires_grad_(True)
        se.eigh(leaf, backward=rule)[1].abs().sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1] / 2)  # eigenvector part only: all of it here
    layer = se.nn.ZCAWhitening1d(4, method=HalfAnalytic())
    assert layer(torch.randn(16, 4)).shape == (16, 4) and "HalfAnalytic" in repr(layer)
    with pytest.raises(se.ArgumentError, match="expected a rule of kind 'eigenvector'"):
        se.eigh(A, backward=se.Loewner())


def test_loewner_with_a_truncation_is_refused_not_substituted() -> None:
    for make in (
        lambda: se.nn.ZCAWhitening2d(8, method="loewner", truncation="paper"),
        lambda: se.nn.functional.zca_whitening(
            torch.randn(8, 4), method="loewner", truncation="pi"
        ),
    ):
        with pytest.raises(se.ArgumentError, match="needs an eigenvector rule"):
            make()
    assert se.nn.ZCAWhitening2d(8, method="power").truncation == "paper"  # the class default
    assert se.nn.ZCAWhitening2d(8, method="taylor", truncation="paper").truncation == "paper"


def test_every_python_example_in_the_readme_runs() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        for index, block in enumerate(blocks):
            namespace: dict[str, object] = {}
            exec(compile(block, f"{page.name} python block {index}", "exec"), namespace)
    readme = (root / "README.md").read_text()
    assert len(re.findall(r"```python\n", readme)) >= 5  # a quick start per story
    assert len(readme.splitlines()) <= 300  # depth lives on the docs pages
