"""Models, one training run end to end, failure detection, resume, the reproduce harness."""

from __future__ import annotations

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
    for key, value in changes.items():
        setattr(base, key, value)
    return base


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


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    training.train_run(tiny_config(steps=4), tiny_dataset(), run_dir=tmp_path)
    resumed = training.train_run(tiny_config(steps=8), tiny_dataset(), run_dir=tmp_path)
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8] and resumed.success and len(resumed.losses) == 4


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
    assert "| analytic | Suc. Rate | 100% (2/2) | 0% (0/2) |" in table
    assert "| power | Min, Mean | 10.00, 10.50±0.71 | 10.00, 10.50±0.71 |" in table
    assert "*paper SVD*" in table
    reproduce.plot(rows, "table1", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
