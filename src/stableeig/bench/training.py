"""Training runs: SGD with the paper's recipe scaled to the run length, failure detection,
per-epoch JSONL metrics, checkpoint and resume.

A run fails, and stops, at the first step whose loss is not finite, whose parameters are
not finite, or whose loss exceeds ``divergence_factor`` (10) times the first step's loss.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .data import Dataset, augment
from .models import resnet

__all__ = ["RunConfig", "RunResult", "train_run"]


@dataclass
class RunConfig:
    """Everything that defines a run; its fields are recorded with the result."""

    dataset: str = "fashion-mnist"
    depth: str = "resnet18"
    width: float = 0.125
    norm: str = "zca"  # batchnorm | zca | pca
    method: str = "loewner"
    group_size: Optional[int] = 64
    compute_dtype: str = "float64"  # of the stem layer's decomposition
    convention: str = "stableeig"  # or "reference": the authors' code's arithmetic
    energy: float = 0.99  # pca
    eps: float = 1e-4
    steps: int = 120
    steps_per_epoch: int = 40
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_subset: Optional[int] = None  # None: the whole training set
    test_subset: Optional[int] = 2000
    seed: int = 0
    device: str = "cpu"
    divergence_factor: float = 10.0
    lr_milestones: tuple[float, ...] = (100 / 350, 200 / 350, 300 / 350)  # the paper's, scaled


@dataclass
class RunResult:
    success: bool
    test_error: Optional[float]  # percent
    failure_step: Optional[int]
    failure_reason: Optional[str]
    seconds: float
    losses: list[float] = field(default_factory=list)  # one per epoch (mean training loss)


def build_model(config: RunConfig, dataset: Dataset) -> nn.Module:
    norm_kwargs: dict[str, Any] = {}
    if config.norm in ("zca", "pca"):
        norm_kwargs = {
            "group_size": config.group_size,
            "method": config.method,
            "eps": config.eps,
            "compute_dtype": getattr(torch, config.compute_dtype),
            "convention": config.convention,
        }
        if config.norm == "pca":
            norm_kwargs["energy"] = config.energy
    return resnet(
        config.depth,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        width=config.width,
        norm=config.norm,
        **norm_kwargs,
    )


def _normalizer(images: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    scaled = images.float() / 255
    mean = scaled.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = scaled.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    return lambda batch: (batch.float() / 255 - mean) / std


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: str,
) -> float:
    """Test error in percent."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(images), 500):
            batch = normalize(images[start : start + 500]).to(device)
            prediction = model(batch).argmax(dim=1).cpu()
            wrong += int((prediction != labels[start : start + 500]).sum())
    model.train()
    return 100.0 * wrong / max(len(images), 1)


def _parameters_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train_run(
    config: RunConfig,
    dataset: Dataset,
    run_dir: Optional[Path] = None,
    progress: bool = False,
    inject_nan_at: Optional[int] = None,
) -> RunResult:
    """Train one model; never raises on numerical failure (it is recorded instead).

    Args:
        config: the run.
        dataset: its data.
        run_dir: where ``metrics.jsonl`` (one line per epoch) and ``checkpoint.pt`` go; a
            checkpoint there is resumed. Default: None (nothing written).
        progress: show a tqdm progress bar.
        inject_nan_at: for tests: make the loss NaN at this step.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config, dataset).to(config.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    milestones = [max(1, int(f * config.steps)) for f in config.lr_milestones]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    train_images, train_labels = dataset.train_images, dataset.train_labels
    if config.train_subset is not None:
        train_images, train_labels = (
            train_images[: config.train_subset],
            train_labels[: config.train_subset],
        )
    normalize = _normalizer(train_images)
    step, elapsed, losses, epoch_losses, first_loss = 0, 0.0, [], [], None
    checkpoint = run_dir / "checkpoint.pt" if run_dir else None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, losses, first_loss = (
            state["step"],
            state["seconds"],
            state["losses"],
            state["first_loss"],
        )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=config.steps,
            initial=step,
            desc=f"{config.norm}/{config.method}/d={config.group_size}/s{config.seed}",
            leave=False,
        )
    start = time.perf_counter() - elapsed
    failure: Optional[tuple[int, str]] = None
    model.train()
    while step < config.steps and failure is None:
        index = torch.randint(0, len(train_images), (config.batch_size,), generator=generator)
        batch = normalize(augment(train_images[index], generator)).to(config.device)
        try:
            loss = nn.functional.cross_entropy(model(batch), train_labels[index].to(config.device))
        except ValueError as error:  # a layer refusing non-finite statistics
            failure = (step, f"forward raised {type(error).__name__}: {str(error)[:150]}")
            break
        if inject_nan_at is not None and step == inject_nan_at:
            loss = loss * float("nan")
        value = float(loss.detach())
        if not math.isfinite(value):
            failure = (step, "non-finite loss")
            break
        first_loss = value if first_loss is None else first_loss
        if value > config.divergence_factor * first_loss:
            failure = (
                step,
                f"diverged: loss {value:.3g} > "
                f"{config.divergence_factor:g} x initial {first_loss:.3g}",
            )
            break
        optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()
        except (ValueError, RuntimeError) as error:  # e.g. a layer refusing NaN statistics
            failure = (step, f"backward raised {type(error).__name__}: {str(error)[:150]}")
            break
        optimizer.step()
        schedule.step()
        step += 1
        epoch_losses.append(value)
        if bar is not None:
            bar.update(1)
        if step % config.steps_per_epoch == 0 or step == config.steps:
            if not _parameters_finite(model):
                failure = (step, "non-finite parameters")
                break
            losses.append(sum(epoch_losses) / len(epoch_losses))
            epoch_losses = []
            _log_epoch(run_dir, step, config, losses[-1], time.perf_counter() - start)
            if checkpoint is not None:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "step": step,
                        "losses": losses,
                        "seconds": time.perf_counter() - start,
                        "first_loss": first_loss,
                    },
                    checkpoint,
                )
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    if failure is not None:
        return RunResult(False, None, failure[0], failure[1], seconds, losses)
    test_images, test_labels = dataset.test_images, dataset.test_labels
    if config.test_subset is not None:
        test_images, test_labels = (
            test_images[: config.test_subset],
            test_labels[: config.test_subset],
        )
    test_error = evaluate(model, test_images, test_labels, normalize, config.device)
    if not math.isfinite(test_error):
        return RunResult(False, None, step, "non-finite evaluation", seconds, losses)
    return RunResult(True, test_error, None, None, time.perf_counter() - start, losses)


def _log_epoch(
    run_dir: Optional[Path], step: int, config: RunConfig, loss: float, seconds: float
) -> None:
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("a") as out:
        out.write(
            json.dumps(
                {
                    "step": step,
                    "epoch": step // config.steps_per_epoch,
                    "train_loss": loss,
                    "seconds": round(seconds, 2),
                }
            )
            + "\n"
        )


def config_dict(config: RunConfig) -> dict[str, Any]:
    values = asdict(config)
    values["lr_milestones"] = list(config.lr_milestones)
    return values
