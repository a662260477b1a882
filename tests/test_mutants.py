"""Tests aimed at invariants that small mutations of the code used to survive (issue 19,
item 10): each fails with the named mutation applied (``benchmarks/mutation_pass.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import stableeig as se
from stableeig.bench import files, reproduce
from stableeig.nn.zca import paper_truncation_mask, pi_truncation_mask
from stableeig.spectral import ridged_inv_sqrt

EPS64 = torch.finfo(torch.float64).eps


def test_tie_resolution_is_n_ulps_of_the_largest_eigenvalue() -> None:
    # mutant: n·eps·max|λ| -> eps·max|λ|: a 4-ulp gap at the cut of an 8×8 would count as real
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0 - 4 * EPS64, 1.0], dtype=torch.float64)
    A = torch.diag(w).requires_grad_(True)
    with pytest.raises(se.NotDifferentiableError, match="equal"):
        se.top_k_projector(A, 1).sum().backward()
    B = torch.diag(torch.cat([w[:-2], torch.tensor([0.9, 1.0], dtype=torch.float64)]))
    se.top_k_projector(B.requires_grad_(True), 1).sum().backward()  # a real gap: fine


def test_rayleigh_tolerance_is_ten_percent() -> None:
    # mutant: 0.1 -> 0.2; a deflated Rayleigh quotient 15 % off must stop the truncation
    w, V = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    off = torch.diag(torch.tensor([1.0, 2.3], dtype=torch.float64))  # 2.3 vs λ = 2: 15 %
    assert paper_truncation_mask(w, V, off, 1e-6)[0].tolist() == [0.0, 0.0]
    near = torch.diag(torch.tensor([1.0, 2.1], dtype=torch.float64))  # 5 %: kept
    assert paper_truncation_mask(w, V, near, 1e-6)[0].tolist() == [0.0, 1.0]


def test_energy_stop_is_strict() -> None:
    # mutant: energy < 1 - tol -> <=; exactly 1 - tol of the trace (powers of two: exact)
    tol = 2.0**-10
    w = torch.tensor([tol, 1 - tol], dtype=torch.float64)
    V = torch.eye(2, dtype=torch.float64)
    mask, _ = paper_truncation_mask(w, V, torch.diag(w), tol, convention="reference")
    assert mask.tolist() == [0.0, 0.0]


def test_pi_stop_rule_keeps_equal_quotients() -> None:
    # mutant: current <= previous -> <; equal Rayleigh quotients are kept by the reference
    assert pi_truncation_mask(torch.tensor([1.0, 1.0, 1.0]), 1e-4).tolist() == [1.0, 1.0, 1.0]
    assert pi_truncation_mask(torch.tensor([1.0, 2.0, 1.0]), 1e-4).tolist() == [0.0, 0.0, 1.0]
    assert pi_truncation_mask(torch.tensor([1e-4, 1.0, 2.0]), 1e-4).tolist() == [1.0, 1.0, 1.0]


def test_ridge_floor_is_eps() -> None:
    # mutant: clamp_min(eps) -> clamp_min(eps / 10): a round-off eigenvalue reads as eps
    function = ridged_inv_sqrt(1e-4)
    values = function.values(torch.tensor([1e-6, -1e-7, 1.0], dtype=torch.float64))
    torch.testing.assert_close(values, torch.tensor([100.0, 100.0, 1.0], dtype=torch.float64))
    loewner = function.loewner(torch.tensor([1e-6, 1e-4], dtype=torch.float64))
    torch.testing.assert_close(loewner[0, 0], loewner[1, 1])  # both at the floor: f'(eps)


def test_a_killed_unreaped_holder_frees_its_claim(tmp_path: Path) -> None:
    # formerly: a zombie (killed, not yet reaped) counted as a live holder
    results = tmp_path / "t.jsonl"
    cell = reproduce.Cell("table1", "power", 4, 0)
    folder = results.with_name(results.name + ".claims")
    folder.mkdir()
    ready, signal_ready = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: hold the claim until killed
        files.acquire_lock(folder / "table1_power_4_0.claim", "claim")
        os.write(signal_ready, b"x")
        time.sleep(60)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"  # the child holds it now
        with reproduce._claim(results, cell) as claimed:
            assert not claimed
        os.kill(pid, signal.SIGKILL)
        for _ in range(250):  # killed, not reaped: a zombie, whose locks are gone
            with reproduce._claim(results, cell) as claimed:
                if claimed:
                    break
            time.sleep(0.02)
        assert claimed
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "Z"  # still unreaped: the claim was freed by the kernel, not by wait
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready), os.close(signal_ready)


def test_the_float64_symmetrization_is_exact() -> None:
    # mutant: A/2 + Aᵀ/2 -> (A + Aᵀ)/2 overflows for entries near the maximum
    big = torch.full((2, 2), 1.5e308, dtype=torch.float64) - torch.diag(
        torch.tensor([0.0, 1e307], dtype=torch.float64)
    )
    w, _ = se.eigh(big / 2)  # finite: 1.4e308 at most
    assert bool(torch.isfinite(w).all())


def test_energy_projector_keeps_until_the_share_is_reached() -> None:
    # mutant: before < energy -> <=; exactly 75 % in the largest eigenvalue keeps one
    from stableeig.spectral import energy_projector_function

    kept = energy_projector_function(0.75).values(torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert kept.tolist() == [0.0, 1.0]
    kept = energy_projector_function(0.76).values(torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert kept.tolist() == [1.0, 1.0]


def test_clip_clamps_the_gap_at_min_gap() -> None:
    # mutant: clamp_min(min_gap) -> clamp_min(min_gap / 2)
    C = se.Clip(min_gap=0.01).coefficients(torch.tensor([0.0, 0.001, 1.0], dtype=torch.float64))
    assert float(C[0, 1]) == pytest.approx(100.0) and float(C[1, 0]) == pytest.approx(-100.0)
    assert float(C[0, 2]) == pytest.approx(1.0)
