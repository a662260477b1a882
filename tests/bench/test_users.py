"""``stableeig bench users`` at its smallest sizes: every row measured twice, the tables,
the accuracy columns (no timing assertions: speed stays in the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from stableeig import cli
from stableeig.bench import timing, users


def test_bench_users_measures_every_row_twice_and_writes_its_tables(tmp_path: Path) -> None:
    code = cli.main(
        ["bench", "users", "--quick", "--runs", "2", "--only",
         "calls,embeddings,spdnet,fid,precision", "--results", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "bench_users_quick.json").read_text())
    rows = result["rows"]
    assert {row["section"] for row in rows} == {"calls", "embeddings", "spdnet", "fid", "precision"}
    for row in rows:
        assert len(row["runs"]) == 2
        for run in row["runs"]:
            low, high = run["ratio_quartiles"]
            assert 0 < low <= high and run["ours_ms"] > 0 and run["baseline_ms"] > 0
    # every row computes what its baseline computes
    for row in rows:
        if row["section"] in ("calls", "embeddings"):
            assert row["max_abs_difference"] < (1e-10 if row["section"] == "calls" else 1e-4)
    fid = [row for row in rows if row["section"] == "fid"]
    assert {row["mode"] for row in fid} == {"forward", "fwd+bwd"}
    assert fid[0]["relative_difference"] < 1e-8
    for row in (r for r in rows if r["section"] == "spdnet"):
        assert row["ours_gradient_error"] < 1e-4  # float32 gradients of a float32 net
        assert row["baseline_gradient_error"] < 1e-2
    for row in (r for r in rows if r["section"] == "precision"):
        # float64 compute of float32 input: exact up to the float32 rounding of the result
        assert row["float64_error"] <= 2 * row["float32_floor"] + 1e-12
    table = (tmp_path / "bench_users_quick.md").read_text()
    assert table.count("| run 1 | run 2 |") == 5
    assert result["environment"]["cpu"] in table
    assert (tmp_path / "bench_users_quick.png").stat().st_size > 1000


def test_the_sections_the_cli_offers_are_the_benchmark_s() -> None:
    assert cli.USERS_SECTIONS == users.SECTIONS


def test_the_compiled_table_reads_compile_time_against_batchnorm() -> None:
    def run(ratio: float, compile_s: float) -> dict[str, object]:
        return {"ours_ms": 10.0 * ratio, "baseline_ms": 10.0, "ratio": ratio,
                "ratio_quartiles": [ratio, ratio], "compile_s": compile_s}  # fmt: skip

    def row(norm: str, model: str, ratios: tuple[float, float], seconds: tuple[float, float]
            ) -> dict[str, object]:  # fmt: skip
        return {"section": "compiled", "norm": norm, "model": model, "batch": 8, "width": 0.125,
                "target": 1.0, "runs": [run(r, s) for r, s in zip(ratios, seconds)]}  # fmt: skip

    result = {
        "environment": timing.environment(), "runs": 2, "repeats": 1, "quick": True,
        "rows": [row("batchnorm", "BatchNorm", (0.8, 0.9), (40.0, 50.0)),
                 row("zca", "ZCA at the stem", (0.9, 1.1), (44.0, 65.0))],
    }  # fmt: skip
    table = users.render(result)
    assert "44.0 / 65.0 (1.10× / 1.30× BatchNorm's)" in table
    zca = "| ZCA at the stem | 9 / 11 | 10 / 10 | 0.90× [0.90–0.90] | 1.10× [1.10–1.10] |"
    assert zca + " ≤ 1.0× **not met** |" in table
    batchnorm = "| BatchNorm | 8 / 9 | 10 / 10 | 0.80× [0.80–0.80] | 0.90× [0.90–0.90] |"
    assert batchnorm + " ≤ 1.0× met | 40.0 / 50.0 |" in table
