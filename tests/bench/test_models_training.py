"""Models, one training run end to end, failure detection, resume, the reproduce harness."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import stableeig as se
from stableeig.bench import reproduce, training
from stableeig.bench.data import DEBIAN_FASHION_MNIST, Dataset, load_fashion_mnist
from stableeig.bench.models import resnet


def test_parameter_counts_match_the_standard_cifar_resnets() -> None:
    assert sum(p.numel() for p in resnet("resnet18").parameters()) == 11_173_962
    assert sum(p.numel() for p in resnet("resnet50").parameters()) == 23_520_842


@pytest.mark.parametrize("norm", ["batchnorm", "zca", "pca"])
def test_stem_norm_and_shapes(norm: str) -> None:
    kwargs = {"group_size": 16} if norm != "batchnorm" else {}
    model = resnet("resnet18", in_channels=1, width=0.125, norm=norm, **kwargs)
    assert (
        type(model.bn1).__name__
        == {"batchnorm": "BatchNorm2d", "zca": "ZCAWhitening2d", "pca": "PCADenoising2d"}[norm]
    )
    assert sum(
        isinstance(m, (se.nn.ZCAWhitening2d, se.nn.PCADenoising2d)) for m in model.modules()
    ) == (norm != "batchnorm")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="expected one of resnet18"):
        resnet("resnet20")


def tiny_dataset(n: int = 48) -> Dataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    images = (torch.rand(n, 1, 12, 12, generator=g) * 60 + labels.view(-1, 1, 1, 1) * 40).to(
        torch.uint8
    )
    return Dataset("tiny", images, labels, images[:16].clone(), labels[:16].clone(), 4)


def tiny_config(**changes: object) -> training.RunConfig:
    base = training.RunConfig(
        dataset="tiny",
        width=0.0625,
        steps=4,
        steps_per_epoch=2,
        batch_size=16,
        test_subset=None,
        group_size=16,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_tiny_run_end_to_end_writes_metrics(tmp_path: Path) -> None:
    result = training.train_run(tiny_config(), tiny_dataset(), run_dir=tmp_path)
    assert result.success and result.test_error is not None and 0 <= result.test_error <= 100
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4] and len(result.losses) == 2


def test_injected_nan_is_recorded_as_failure_with_its_step() -> None:
    result = training.train_run(tiny_config(steps=6), tiny_dataset(), inject_nan_at=3)
    assert (
        not result.success
        and result.failure_step == 3
        and result.failure_reason == "non-finite loss"
    )
    assert result.test_error is None


def test_divergence_is_a_failure() -> None:
    result = training.train_run(tiny_config(steps=6, lr=1e4, norm="batchnorm"), tiny_dataset())
    assert not result.success and result.failure_reason is not None
    assert result.failure_reason.startswith(("diverged", "non-finite"))


def _metrics(run_dir: Path) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


@pytest.mark.parametrize(  # mid-epoch, right after a checkpoint; pi draws from torch's RNG
    ("interrupt_at", "method"), [(3, "loewner"), (4, "loewner"), (3, "pi")]
)
def test_killed_and_resumed_run_equals_an_uninterrupted_one(
    tmp_path: Path, interrupt_at: int, method: str
) -> None:
    config = tiny_config(steps=8, method=method)
    whole = training.train_run(config, tiny_dataset(), run_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        training.train_run(
            config, tiny_dataset(), run_dir=tmp_path / "cut", interrupt_at=interrupt_at
        )
    resumed = training.train_run(config, tiny_dataset(), run_dir=tmp_path / "cut")
    assert resumed.losses == whole.losses and resumed.test_error == whole.test_error
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "whole")  # no duplicated line
    final = [
        torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("whole", "cut")
    ]
    for key, value in final[0]["model"].items():
        assert (
            value == final[1]["model"][key]
            if key.endswith("_extra_state")
            else torch.equal(value, final[1]["model"][key])
        ), key


def test_restore_brings_back_generator_and_first_loss(tmp_path: Path) -> None:
    config = tiny_config(steps=4)
    training.train_run(config, tiny_dataset(), run_dir=tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    state = training._new_state(config, tiny_dataset())
    training._restore(state, saved, config)
    assert state.first_loss == saved["first_loss"] and state.first_loss is not None
    assert torch.equal(state.generator.get_state(), saved["generator"])
    assert state.step == 4 and state.metrics == saved["metrics"]


def test_resume_refuses_another_configuration(tmp_path: Path) -> None:
    training.train_run(tiny_config(steps=4), tiny_dataset(), run_dir=tmp_path)
    with pytest.raises(training.CheckpointError, match=r"method: 'loewner' -> 'power'.*--restart"):
        training.train_run(tiny_config(steps=4, method="power"), tiny_dataset(), run_dir=tmp_path)
    with pytest.raises(training.CheckpointError, match=r"steps: 4 -> 2"):
        training.train_run(tiny_config(steps=2), tiny_dataset(), run_dir=tmp_path)


def test_unreadable_checkpoint_falls_back_then_errors_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(steps=4)
    whole = training.train_run(config, tiny_dataset(), run_dir=tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # a kill during the write, before atomicity
    again = training.train_run(config, tiny_dataset(), run_dir=tmp_path)  # from step 2
    assert "cannot use" in capsys.readouterr().err and again.losses == whole.losses
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"\x80")
    with pytest.raises(training.CheckpointError, match=r"checkpoint.pt: expected a readable"):
        training.train_run(config, tiny_dataset(), run_dir=tmp_path)


def test_run_config_validates_every_field() -> None:
    for changes, message in [
        ({"steps": 0}, r"steps: expected an integer in \[1, 1e\+07\] \(got 0\)"),
        ({"steps_per_epoch": 0}, r"steps_per_epoch: expected an integer in \[1, "),
        ({"batch_size": 0}, r"batch_size: expected an integer in \[2, 65536\]"),
        ({"train_subset": 0}, r"train_subset: expected an integer in \[1, "),
        ({"compute_dtype": "banana"}, r"compute_dtype: expected one of 'float32'"),
        ({"group_size": 12}, r"group_size: expected a divisor of the stem's 64 channels"),
        ({"method": "svd"}, r"method: expected one of"),
    ]:
        with pytest.raises(se.StableEigError, match=message):
            tiny_config(**changes)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_a_few_steps_on_real_fashion_mnist() -> None:
    config = training.RunConfig(
        steps=3, steps_per_epoch=3, batch_size=32, width=0.0625, test_subset=200, group_size=16
    )
    result = training.train_run(config, load_fashion_mnist(download=False))
    assert result.success and result.test_error is not None


def test_reproduce_skips_finished_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[training.RunConfig] = []

    def fake_run(config: training.RunConfig, dataset: Dataset, **_: object) -> training.RunResult:
        calls.append(config)
        failed = config.method == "analytic" and config.group_size == 8
        return training.RunResult(
            not failed,
            None if failed else 10.0 + config.seed,
            5 if failed else None,
            "non-finite loss" if failed else None,
            1.0,
            [2.0, 1.0],
        )

    monkeypatch.setattr(reproduce, "train_run", fake_run)
    cells = reproduce.table_cells(
        "table1", seeds=2, group_sizes=(4, 8), methods=("analytic", "power")
    )
    results = tmp_path / "t1.jsonl"
    rows = reproduce.run_cells(cells[:3], tiny_dataset(), "quick", results, progress=False)
    assert len(rows) == 3 and len(calls) == 3
    rows = reproduce.run_cells(cells, tiny_dataset(), "quick", results, progress=False)
    assert len(rows) == len(cells) and len(calls) == len(cells)  # the first three were not rerun
    assert all(line["table"] == "table1" and "failure_reason" in line for line in rows)
    table = reproduce.render_table(rows, "table1")
    assert "| analytic | Suc. Rate | 100% (2/2; CI 34–100%) | 0% (0/2; CI 0–66%) |" in table
    assert "| power | Min, Mean | 10.00, 10.50±0.71 | 10.00, 10.50±0.71 |" in table
    assert "*paper SVD*" in table
    reproduce.plot(rows, "table1", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    # a torn last line (a kill mid-append) and a duplicated cell (two processes) are harmless
    with results.open("a") as out:
        out.write(json.dumps(rows[0]) + "\n" + '{"table": "tab')
    again = reproduce.run_cells(cells, tiny_dataset(), "quick", results, progress=False)
    assert len(again) == len(cells) and len(calls) == len(cells)
    assert reproduce.render_table(again, "table1") == table


def test_concurrent_reproduce_runs_each_cell_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = reproduce.table_cells("table1", seeds=1, group_sizes=(4,), methods=("power",))[1]
    results = tmp_path / "t1.jsonl"
    with reproduce._claim(results, cell) as first, reproduce._claim(results, cell) as second:
        assert first and not second  # a second process, same cell
    with reproduce._claim(results, cell) as third:
        assert third  # released: free again


def test_wilson_interval() -> None:
    low, high = reproduce.wilson_interval(7, 15)
    assert (round(low, 3), round(high, 3)) == (0.248, 0.699)
    assert reproduce.wilson_interval(0, 3)[0] == 0.0 and reproduce.wilson_interval(3, 3)[1] == 1.0


def test_kaplan_meier_censors_runs_at_their_length() -> None:
    # four runs: failures at 100 and 300; survivors censored at 200 and 1000
    curve = reproduce.kaplan_meier([(100, True), (200, False), (300, True), (1000, False)])
    assert curve == [(0, 1.0), (100, 0.75), (300, 0.375)]


def test_ablation_cells_vary_one_recorded_field() -> None:
    cells = reproduce.ablation_cells(seeds=2)
    tables = {c.table for c in cells}
    assert tables == {
        "ablation_energy",
        "ablation_n_components",
        "ablation_num_iters",
        "ablation_eps",
    }
    for cell in cells:
        ((field_name, value),) = cell.variant
        assert cell.table == f"ablation_{field_name}"
        config = reproduce.cell_config(cell, "quick")
        assert getattr(config, field_name) == value
        assert config.norm == ("zca" if field_name == "eps" else "pca")
    assert len({c.key() for c in cells}) == len(cells)
    model = training.build_model(reproduce.cell_config(cells[-1], "quick"), tiny_dataset())
    assert model is not None
    stem = training.build_model(
        dataclasses.replace(tiny_config(norm="pca", method="power"), num_iters=4), tiny_dataset()
    ).bn1
    assert stem.rule == se.Power(num_iters=4)


def test_reproduce_renders_the_whole_results_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call for one group size must not drop the other sizes' rows from the table."""
    from stableeig.cli import main

    def fake_run(config: training.RunConfig, dataset: Dataset, **_: object) -> training.RunResult:
        return training.RunResult(True, 10.0, None, None, 1.0, [2.0, 1.0])

    monkeypatch.setattr(reproduce, "train_run", fake_run)
    stem = tmp_path / "table1_quick_fashion-mnist-subset.jsonl"
    cells = reproduce.table_cells("table1", seeds=1, group_sizes=(4,), methods=("power",))
    reproduce.run_cells(cells, tiny_dataset(), "quick", stem, progress=False)
    args = ["reproduce", "table1", "--dataset", "fashion-mnist-subset", "--seeds", "1"]
    args += ["--methods", "power", "--group-sizes", "8", "--results", str(tmp_path), "--quiet"]
    assert main(args) == 0
    table = stem.with_suffix(".md").read_text()
    assert "d=4" in table and "d=8" in table
    assert main([*args, "--render-only"]) == 0
    assert stem.with_suffix(".md").read_text() == table
    capsys.readouterr()


def test_fisher_exact_two_sided_known_values() -> None:
    assert reproduce.fisher_exact(0, 3, 3, 0) == pytest.approx(0.1)  # 0/3 vs 3/3
    assert reproduce.fisher_exact(0, 8, 8, 0) == pytest.approx(2 / 12870)  # 0/8 vs 8/8
    assert reproduce.fisher_exact(1, 2, 3, 0) == pytest.approx(0.4)
    assert reproduce.fisher_exact(3, 0, 3, 0) == 1.0
    # R: fisher.test(matrix(c(2, 6, 7, 1), 2))$p.value == 0.04056
    assert reproduce.fisher_exact(2, 6, 7, 1) == pytest.approx(0.040559, abs=1e-6)


def _row(method: str, d: object, seed: int, success: bool, error: object) -> dict[str, object]:
    return {
        "table": "table1", "method": method, "group_size": d, "seed": seed, "success": success,
        "test_error": error, "failure_step": None if success else 5, "losses": [1.0],
        "seconds": 1.0, "config": {"steps": 10, "convention": "reference"},
    }  # fmt: skip


def test_trained_column_and_p_values_in_the_rendered_table(tmp_path: Path) -> None:
    rows = [_row("batchnorm", None, s, True, 10.0) for s in range(3)]  # threshold 15 %
    rows += [_row("power", 8, s, True, 11.0) for s in range(4)]
    rows += [_row("pi", 8, s, True, e) for s, e in enumerate([12.0, 30.0, 80.0, 85.0])]
    rows += [_row("analytic", 8, s, False, None) for s in range(4)]
    assert reproduce.trained_threshold(rows) == pytest.approx(15.0)
    table = reproduce.render_table(rows, "table1")
    assert "| pi | Suc. Rate | 100% (4/4; CI 51–100%) |" in table
    assert "| pi | Trained (< 15.0%) | 25% (1/4; CI 5–70%) |" in table
    assert "| pi | Fisher p vs power (finished; trained) | 1.00; 0.14 |" in table
    assert "| analytic | Fisher p vs power (finished; trained) | 0.03; 0.03 |" in table
    assert "| power | Fisher" not in table  # the anchor is not tested against itself
    folder = tmp_path / "results"
    folder.mkdir()
    with (folder / "table1_x.jsonl").open("w") as out:
        out.write("".join(json.dumps(r) + "\n" for r in rows))
    survival = reproduce.survival_report(folder)
    assert "| pi | 8 | 4 | 0 | 10 | 1.00 | 100% (51–100%) | 1/4 |" in survival
    table2 = reproduce.render_table([dict(r, table="table2") for r in rows], "table2")
    assert "| pi | 8 | 100% (4/4; CI 51–100%) | 12.00, 51.75±36.32 | 25% (1/4;" in table2


@pytest.mark.parametrize("pool", ["loewner", "analytic", "newton-schulz"])
def test_a_covariance_pooling_run_end_to_end(pool: str) -> None:
    config = tiny_config(norm="batchnorm", head="covpool", pool_method=pool, group_size=None)
    result = training.train_run(config, tiny_dataset())  # a failure is recorded, not raised
    if pool == "analytic":  # eigh autograd at the head's tied eigenvalues: NaN, then refused
        assert result.success or result.failure_reason is not None
    else:
        assert result.success and result.test_error is not None and len(result.losses) == 2


def test_newton_schulz_converges_to_the_square_root() -> None:
    from stableeig.bench.models import newton_schulz_sqrt

    X = torch.randn(3, 8, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    S = X @ X.mT / 20 + 1e-3 * torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(newton_schulz_sqrt(S, 20), se.sqrtm(S))
    five = newton_schulz_sqrt(S, 5)  # the iSQRT-COV setting: approximate
    assert float((five - se.sqrtm(S)).norm() / se.sqrtm(S).norm()) > 1e-4


def test_covpool_cells_configs_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cells = reproduce.table_cells("covpool", seeds=2)
    assert [c.method for c in cells[::2]] == list(reproduce.COVPOOL_METHODS)
    config = reproduce.cell_config(cells[2], "quick")  # analytic
    assert (config.norm, config.head, config.pool_method) == ("batchnorm", "covpool", "analytic")
    assert reproduce.cell_config(cells[0], "quick").head == "average"

    def fake_run(config: training.RunConfig, dataset: Dataset, **_: object) -> training.RunResult:
        failed = config.pool_method == "analytic" and config.head == "covpool"
        error = None if failed else 10.0 + config.seed
        return training.RunResult(not failed, error, 3 if failed else None, None, 1.0, [1.0])

    monkeypatch.setattr(reproduce, "train_run", fake_run)
    rows = reproduce.run_cells(cells, tiny_dataset(), "quick", tmp_path / "c.jsonl", progress=False)
    table = reproduce.render_table(rows, "covpool")
    assert "Fisher p vs loewner" in table and "| average | - | 100% (2/2;" in table
    assert (
        "| analytic | - | 0% (0/2; CI 0–66%) | - | 0% (0/2; CI 0–66%) | 0.33; 0.33 | — |" in table
    )
    # s/step: the median of seconds / steps over the finished runs only
    steps = rows[0]["config"]["steps"]
    timed = [dict(r, seconds=s * steps) for r, s in zip(rows, [0.1, 0.3, 9.0, 9.0] * 99)]
    assert "| s/step (median) |" in table
    line = next(x for x in reproduce.render_table(timed, "covpool").splitlines() if "average" in x)
    assert line.endswith("| 0.2 | — |")  # median of 0.1 and 0.3
    assert "s/step" not in reproduce.render_table([dict(r, table="table2") for r in rows], "table2")
    figures: list[object] = []  # a table without group sizes: finished and trained bars
    monkeypatch.setattr(reproduce, "save_figure", lambda figure, path: figures.append(figure))
    reproduce.plot(rows, "covpool", tmp_path / "c.png")
    left = figures[0].axes[0]  # type: ignore[attr-defined]
    heights = [bar.get_height() for bar in left.patches]
    methods = len(reproduce.COVPOOL_METHODS)
    assert len(heights) == 2 * methods and heights[1] == 0 and heights[0] == 100  # analytic 0


def test_spdnet_descriptors_and_a_short_run(tmp_path: Path) -> None:
    from stableeig.bench import spdnet

    data = tiny_dataset()
    D = spdnet.descriptors(data.train_images)
    assert D.shape == (48, 8, 8) and bool((torch.linalg.eigvalsh(D) >= 1e-4 * (1 - 1e-9)).all())
    torch.testing.assert_close(D, D.mT)
    rows = spdnet.run(data, tmp_path / "s.jsonl", seeds=1, steps=20, methods=("loewner",))
    assert len(rows) == 1 and rows[0]["success"] and rows[0]["table"] == "spdnet"
    again = spdnet.run(data, tmp_path / "s.jsonl", seeds=1, steps=20, methods=("loewner",))
    assert again == rows  # resumed: nothing rerun
    assert "Fisher p vs loewner" in reproduce.render_table(rows, "spdnet")


@pytest.mark.parametrize("peer", ["geoopt", "spd_learn"])
def test_spdnet_peer_pipelines_compute_the_same_network(peer: str) -> None:
    """The peer's ReEig/LogEig in the same network: equal outputs and gradients to ours on
    well-separated descriptors (skipped, as the reproduction skips it, without the peer)."""
    from stableeig.bench import spdnet

    if (why := spdnet.available(peer)) is not None:
        pytest.skip(why)
    X = torch.randn(6, 8, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spd = X @ X.mT / 20 + 0.1 * torch.eye(8, dtype=torch.float64)
    outputs, grads = [], []
    for method in ("loewner", peer):
        torch.manual_seed(0)
        model = spdnet.spdnet(method, eps=1e-3)
        out = model(spd)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(grads[1], grads[0])  # through both ReEig and LogEig


@pytest.mark.parametrize("method", ["spdbn-le", "spdbn-ai"])
def test_spdnet_with_spd_batchnorm_places_it_after_each_bimap_and_runs(
    method: str, tmp_path: Path
) -> None:
    from stableeig.bench import spdnet

    model = spdnet.spdnet(method)
    norms = [m for m in model if isinstance(m, se.nn.SPDBatchNorm)]
    assert [type(m).__name__ for m in model][:3] == ["ParametrizedBiMap", "SPDBatchNorm", "ReEig"]
    assert [(m.n, m.mean) for m in norms] == [(n, spdnet.BATCHNORMS[method]) for n in (6, 4)]
    data = tiny_dataset()
    rows = spdnet.run(data, tmp_path / "s.jsonl", seeds=1, steps=12, methods=(method,))
    assert rows[0]["success"] and rows[0]["method"] == method
    assert all(int(m.num_batches_tracked) == 0 for m in norms)  # run builds its own model
    config = spdnet.SPDNetConfig(method=method, steps=12, test_subset=20)
    trained, row = spdnet.fit_spdnet(config, data)
    assert not trained.training and row["success"]
    tracked = [m for m in trained.modules() if isinstance(m, se.nn.SPDBatchNorm)]
    assert [int(m.num_batches_tracked) for m in tracked] == [12, 12]
    descriptors = spdnet.descriptors(data.test_images)[:20]
    assert row["test_error"] == spdnet.error_rate(trained, descriptors, data.test_labels[:20])
