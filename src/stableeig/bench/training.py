"""Training runs: SGD with the paper's recipe scaled to the run length, failure detection,
per-epoch JSONL metrics, checkpoint and resume.

A run fails, and stops, at the first step whose loss is not finite, whose parameters are
not finite, or whose loss exceeds ``divergence_factor`` (10) times the first step's loss.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..exceptions import ArgumentError
from ..rules import Power, PowerIteration
from .config import DATASETS, DTYPES, NORMS, RunConfig
from .data import Dataset, augment
from .files import atomic_write, read_bytes
from .models import resnet

__all__ = [
    "CHECKPOINT_FORMAT",
    "DATASETS",
    "DTYPES",
    "NORMS",
    "CheckpointError",
    "RunConfig",
    "RunResult",
    "train_run",
]

# 2: format field, loaded with weights_only=True (format 1, unversioned, loads the same way)
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = (
    "config",
    "model",
    "optimizer",
    "schedule",
    "generator",
    "torch_rng",
    "step",
    "losses",
    "metrics",
    "seconds",
    "first_loss",
)


def check_device(name: str, device: object) -> str:
    """A torch device string this machine has: ``cpu``, or ``cuda[:i]`` with CUDA present."""
    try:
        parsed = torch.device(device) if isinstance(device, str) and device else None
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ArgumentError(f"{name}: expected cpu, cuda or cuda:<index> (got {device!r})")
    if parsed.type == "cpu" and parsed.index not in (None, 0):
        raise ArgumentError(f"{name}: expected cpu (one CPU device, index 0) (got {device!r})")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise ArgumentError(
                f"{name}: expected a CUDA device this machine has ({count} found) (got {device!r})"
            )
    return str(device)


@dataclass
class RunResult:
    success: bool
    test_error: Optional[float]  # percent
    failure_step: Optional[int]
    failure_reason: Optional[str]
    seconds: float
    losses: list[float] = field(default_factory=list)  # one per epoch (mean training loss)


def _rule(config: RunConfig) -> Any:
    """The stem layer's rule: the name, or the rule object when ``num_iters`` is set."""
    if config.num_iters is None:
        return config.method
    if config.method == "power":
        return Power(num_iters=config.num_iters)
    if config.method == "pi":
        return PowerIteration(num_iters=config.num_iters)
    raise AssertionError("unreachable: RunConfig checks num_iters")  # pragma: no cover


def build_model(config: RunConfig, dataset: Dataset) -> nn.Module:
    norm_kwargs: dict[str, Any] = {}
    if config.norm in ("zca", "pca"):
        norm_kwargs = {
            "group_size": config.group_size,
            "method": _rule(config),
            "eps": config.eps,
            "compute_dtype": getattr(torch, config.compute_dtype),
            "convention": config.convention,
        }
        if config.norm == "pca":
            norm_kwargs["energy"] = config.energy
            norm_kwargs["n_components"] = config.n_components
    return resnet(
        config.depth,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        width=config.width,
        norm=config.norm,
        head=config.head,
        pool_method=config.pool_method,
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


class CheckpointError(RuntimeError):
    """A run directory's checkpoint cannot be used (unreadable, or another configuration)."""


@dataclass
class _State:
    """Everything a run needs to continue bit-identically after an interruption."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    generator: torch.Generator
    step: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    first_loss: Optional[float] = None

    def snapshot(self, config: RunConfig, seconds: float) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config_dict(config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "losses": self.losses,
            "metrics": self.metrics,
            "seconds": seconds,
            "first_loss": self.first_loss,
        }


def _new_state(config: RunConfig, dataset: Dataset) -> _State:
    torch.manual_seed(config.seed)
    model = build_model(config, dataset).to(config.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    milestones = [max(1, int(f * config.steps)) for f in config.lr_milestones]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    return _State(model, optimizer, schedule, torch.Generator().manual_seed(config.seed))


def config_differences(saved: dict[str, Any], config: RunConfig) -> list[str]:
    """``field: saved -> requested`` for every field that differs (``device`` may change);
    a field the saved run predates counts as its default."""
    current = config_dict(config)
    defaults = config_dict(RunConfig())
    return [
        f"{key}: {saved.get(key, defaults[key])!r} -> {current[key]!r}"
        for key in current
        if key != "device" and saved.get(key, defaults[key]) != current[key]
    ]


def activation_bytes(config: RunConfig, dataset: Dataset) -> int:
    """Estimated memory of one training step: every module output for one sample, found by
    running the model on the meta device (no memory, no compute), × batch size × 2 (the
    activations kept for the backward and their gradients), plus weights, gradients and
    momentum (3 × the parameters). Against the measured growth of the peak RSS over one
    step (quick-preset ResNet-18, Fashion-MNIST): 0.9–1.0× at batch 512, 1.25× at 2048 —
    an estimate, not a bound (hence ``--force``)."""
    with torch.device("meta"):
        model = build_model(config, dataset)  # build_model never moves it to config.device
    total = [0]

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    shape = dataset.train_images.shape[1:]
    model(torch.zeros(2, *shape, device="meta"))  # two samples: batch statistics need > 1
    for hook in hooks:
        hook.remove()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    return 2 * (total[0] // 2) * config.batch_size + 3 * parameters


def available_memory() -> Optional[int]:
    """``MemAvailable`` of /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return type(error).__name__ + (f": {text[0][:150]}" if text else "")


def checkpoint_size_limit(model: nn.Module) -> int:
    """The most bytes a checkpoint of ``model`` may hold once decompressed: 4× its state
    (weights, optimizer momentum, slack) plus 16 MiB for the rest; a larger one is refused
    before it is loaded (a small file of deflated zeros can expand to gigabytes)."""
    tensors = [t for t in model.state_dict().values() if isinstance(t, torch.Tensor)]
    state = sum(t.numel() * t.element_size() for t in tensors)
    return 4 * state + (16 << 20)


def _archive_size(data: bytes, limit: int) -> None:
    """Refuse a zip checkpoint whose entries decompress to more than ``limit`` bytes."""
    with contextlib.suppress(zipfile.BadZipFile), zipfile.ZipFile(io.BytesIO(data)) as archive:
        total = sum(entry.file_size for entry in archive.infolist())
        if total > limit:
            raise ValueError(f"it decompresses to {total} bytes > limit {limit}")


def _checkpoint_problem(saved: Any, steps: int) -> Optional[str]:
    """Why a loaded checkpoint's fields are unusable (types and ranges), or None."""
    if not isinstance(saved, dict):
        return f"expected a dict (got {type(saved).__name__})"
    missing = [k for k in CHECKPOINT_KEYS if k not in saved]
    if missing:
        return f"missing {', '.join(missing)}"
    number = (int, float)
    checks = {
        "format": lambda v: type(v) is int and 1 <= v <= CHECKPOINT_FORMAT,
        "config": lambda v: isinstance(v, dict),
        "step": lambda v: type(v) is int and 0 <= v <= steps,
        "seconds": lambda v: isinstance(v, number) and not isinstance(v, bool)
        and math.isfinite(v) and v >= 0,
        "losses": lambda v: isinstance(v, list) and all(
            isinstance(x, number) and not isinstance(x, bool) for x in v
        ),
        "metrics": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
        "first_loss": lambda v: v is None or (isinstance(v, number) and not isinstance(v, bool)),
        "model": lambda v: isinstance(v, dict),
        "optimizer": lambda v: isinstance(v, dict),
        "schedule": lambda v: isinstance(v, dict),
        "generator": lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8,
        "torch_rng": lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8,
    }  # fmt: skip
    for key, valid in checks.items():
        if key in saved and not valid(saved[key]):
            value = saved[key]
            shown = repr(value) if not isinstance(value, (dict, list, torch.Tensor)) else ""
            return f"field {key!r} has the wrong type or range {shown}".rstrip()
    return None


def _epoch_ends(step: int, config: RunConfig) -> int:
    """How many epochs end at or before ``step`` (a checkpoint holds one loss per epoch)."""
    return step // config.steps_per_epoch + (
        step == config.steps and step % config.steps_per_epoch != 0
    )


def _expected_lr(step: int, config: RunConfig, fresh: _State) -> float:
    """The learning rate after ``step`` steps of the schedule ``fresh`` was built with."""
    milestones = fresh.schedule.state_dict()["milestones"]
    drops = sum(count for milestone, count in milestones.items() if milestone <= step)
    return float(config.lr * fresh.schedule.gamma**drops)


def is_finite_number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite int or float (not a bool) in ``[low, high]``: the value checks of checkpoints
    and results rows (``reproduce.row_problem``)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _state_problem(saved: dict[str, Any], config: RunConfig, fresh: _State) -> Optional[str]:
    """Why the values of a well-typed checkpoint cannot continue this run, or None: the
    fields must agree with each other and with what this configuration's run holds at that
    step (0.8.1 trusted them: any scheduler attribute could be set, an ``lr`` of ``'x'``
    loaded, a run with no losses reported success, a NaN first loss disabled the
    divergence test)."""
    step, losses, metrics = saved["step"], saved["losses"], saved["metrics"]
    if step < 1 or not (step % config.steps_per_epoch == 0 or step == config.steps):
        return f"'step' = {step} is not the end of an epoch"
    if len(losses) != _epoch_ends(step, config) or len(metrics) != len(losses):
        return f"{len(losses)} losses and {len(metrics)} metrics for {step} steps"
    if not all(is_finite_number(x, 0.0) for x in losses):
        return "a loss that is not a finite number >= 0"
    if not is_finite_number(saved["first_loss"], 0.0):
        return f"'first_loss' = {saved['first_loss']!r} is not a finite number >= 0"
    keys = {"step", "epoch", "train_loss", "seconds"}
    for index, (record, loss) in enumerate(zip(metrics, losses)):
        if set(record) != keys or not all(is_finite_number(record[k], 0.0) for k in keys):
            return f"metrics[{index}] is not a record of {', '.join(sorted(keys))}"
        if record["train_loss"] != loss or not isinstance(record["step"], int):
            return f"metrics[{index}] disagrees with the losses"
    return _optimizer_problem(saved, config, fresh)


def _optimizer_problem(saved: dict[str, Any], config: RunConfig, fresh: _State) -> Optional[str]:
    """The schedule and optimizer states against a fresh run's: the same fields, the same
    hyperparameters, the learning rate of this step, momentum buffers shaped as the
    parameters and finite."""
    step, lr = saved["step"], _expected_lr(saved["step"], config, fresh)
    schedule, expected = saved["schedule"], fresh.schedule.state_dict()
    if set(schedule) != set(expected):
        return "the schedule's fields are not a MultiStepLR's"
    moving = {"last_epoch": step, "_step_count": step + 1}
    for key, value in schedule.items():
        if key in moving:
            if type(value) is not int or value != moving[key]:
                return f"schedule {key!r} = {value!r} (expected {moving[key]})"
        elif key == "_last_lr":
            if not (
                isinstance(value, list)
                and len(value) == len(expected[key])
                and all(is_finite_number(v) and math.isclose(v, lr) for v in value)
            ):
                return f"schedule '_last_lr' = {value!r} (expected {lr:g})"  # fmt: skip
        elif key in ("_is_initial", "_get_lr_called_within_step"):
            if not isinstance(value, bool):
                return f"schedule {key!r} = {value!r} is not a bool"
        elif type(value) is not type(expected[key]) or value != expected[key]:
            return f"schedule {key!r} = {value!r} (expected {expected[key]!r})"
    optimizer, fresh_optimizer = saved["optimizer"], fresh.optimizer.state_dict()
    if set(optimizer) != {"state", "param_groups"} or not isinstance(optimizer["state"], dict):
        return "the optimizer's fields are not SGD's"
    groups = optimizer["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh_optimizer["param_groups"]):
        return "the optimizer's parameter groups are not this model's"
    for group, expected_group in zip(groups, fresh_optimizer["param_groups"]):
        if not isinstance(group, dict) or set(group) != set(expected_group) | {"initial_lr"}:
            return "an optimizer parameter group with other fields"
        for key, value in group.items():
            if key in ("lr", "initial_lr"):
                target = lr if key == "lr" else config.lr
                if not is_finite_number(value) or not math.isclose(value, target):
                    return f"optimizer {key!r} = {value!r} (expected {target:g})"
            elif type(value) is not type(expected_group[key]) or value != expected_group[key]:
                return f"optimizer {key!r} = {value!r} (expected {expected_group[key]!r})"
    parameters = list(fresh.model.parameters())
    for index, buffers in optimizer["state"].items():
        if type(index) is not int or not 0 <= index < len(parameters):
            return f"optimizer state for a parameter {index!r} this model does not have"
        if not isinstance(buffers, dict) or set(buffers) != {"momentum_buffer"}:
            return f"optimizer state {index} is not a momentum buffer"
        buffer, parameter = buffers["momentum_buffer"], parameters[index]
        if not (
            isinstance(buffer, torch.Tensor)
            and buffer.shape == parameter.shape
            and buffer.dtype == parameter.dtype
            and bool(torch.isfinite(buffer).all())
        ):
            return f"optimizer state {index} does not fit parameter {index}"  # fmt: skip
    return None


def _load_checkpoint(
    run_dir: Path,
    steps: int = 1 << 62,
    limit: Optional[int] = None,
    config: Optional[RunConfig] = None,
    fresh: Optional[_State] = None,
) -> Optional[dict[str, Any]]:
    """The newest usable checkpoint of ``run_dir``, falling back to the previous one.

    Checkpoints hold only tensors, numbers, strings and containers of them and are read with
    ``torch.load(weights_only=True)``: a crafted file cannot run code, it is just unreadable.
    Before loading: a regular file (no FIFO, symlink or hard link), at most ``limit`` bytes
    decompressed; after: every field's type and range (``step`` within ``[0, steps]``), and
    with ``config`` and a ``fresh`` state of it, every value (:func:`_state_problem`).
    """
    candidates = [run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"]
    existing = [path for path in candidates if os.path.lexists(path)]
    for path in existing:
        try:
            data = read_bytes(path, limit)
            if limit is not None:
                _archive_size(data, limit)
            saved = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as error:  # unreadable, truncated, garbage, forbidden globals, too big
            reason = _first_line(error)
        else:
            problem = _checkpoint_problem(saved, steps)
            if problem is None and config is not None and fresh is not None:
                # (a checkpoint of another configuration is _restore's error to report)
                same = not config_differences(saved["config"], config)
                problem = _state_problem(saved, config, fresh) if same else None
            if problem is None:
                return dict(saved)
            reason = problem
        print(
            f"warning: cannot use {path} ({reason}); trying the previous checkpoint",
            file=sys.stderr,
        )
    if existing:
        raise CheckpointError(
            f"{existing[0]}: expected a readable checkpoint (got an unreadable or incomplete "
            "file, and no usable previous one); pass --restart to start over"
        )
    return None


def _restore(state: _State, saved: dict[str, Any], config: RunConfig) -> None:
    differences = config_differences(saved.get("config", {}), config)
    if differences:
        raise CheckpointError(
            "the run directory holds a run with another configuration ("
            + "; ".join(differences)
            + "); use another --run-dir or pass --restart to start over"
        )
    try:
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.schedule.load_state_dict(saved["schedule"])
        state.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(
            f"the checkpoint does not fit this run ({_first_line(error)}); "
            "pass --restart to start over"
        ) from None
    state.step, state.seconds = saved["step"], saved["seconds"]
    state.losses, state.metrics = saved["losses"], saved["metrics"]
    state.first_loss = saved["first_loss"]


def _save(run_dir: Path, snapshot: dict[str, Any]) -> None:
    """Checkpoint (the previous one kept as ``checkpoint.prev.pt``), then the metrics file
    rewritten from the checkpoint's records: both always describe the same step."""
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        os.replace(checkpoint, run_dir / "checkpoint.prev.pt")
    atomic_write(checkpoint, lambda out: torch.save(snapshot, out), binary=True)
    lines = "".join(json.dumps(m) + "\n" for m in snapshot["metrics"])
    atomic_write(run_dir / "metrics.jsonl", lambda out: out.write(lines))


def _test_error(config: RunConfig, dataset: Dataset, model: nn.Module, normalize: Any) -> float:
    test_images, test_labels = dataset.test_images, dataset.test_labels
    if config.test_subset is not None:
        test_images, test_labels = (
            test_images[: config.test_subset],
            test_labels[: config.test_subset],
        )
    return evaluate(model, test_images, test_labels, normalize, config.device)


def _step(
    state: _State,
    config: RunConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Any,
    inject_nan: bool,
) -> tuple[Optional[float], Optional[str]]:
    """One SGD step: ``(loss, None)``, or ``(None, why it failed)``."""
    index = torch.randint(0, len(images), (config.batch_size,), generator=state.generator)
    batch = normalize(augment(images[index], state.generator)).to(config.device)
    try:
        loss = nn.functional.cross_entropy(state.model(batch), labels[index].to(config.device))
    except ValueError as error:  # a layer refusing non-finite statistics
        return None, f"forward raised {type(error).__name__}: {str(error)[:150]}"
    if inject_nan:
        loss = loss * float("nan")
    value = float(loss.detach())
    if not math.isfinite(value):
        return None, "non-finite loss"
    state.first_loss = value if state.first_loss is None else state.first_loss
    if value > config.divergence_factor * state.first_loss:
        return None, (
            f"diverged: loss {value:.3g} > {config.divergence_factor:g} x initial "
            f"{state.first_loss:.3g}"
        )
    state.optimizer.zero_grad(set_to_none=True)
    try:
        loss.backward()
    except (ValueError, RuntimeError) as error:  # e.g. a layer refusing NaN statistics
        return None, f"backward raised {type(error).__name__}: {str(error)[:150]}"
    state.optimizer.step()
    state.schedule.step()
    state.step += 1
    return value, None


def train_run(
    config: RunConfig,
    dataset: Dataset,
    run_dir: Optional[Path] = None,
    progress: bool = False,
    inject_nan_at: Optional[int] = None,
    interrupt_at: Optional[int] = None,
) -> RunResult:
    """Train one model; never raises on numerical failure (it is recorded instead).

    Args:
        config: the run.
        dataset: its data.
        run_dir: where ``metrics.jsonl`` (one line per epoch) and ``checkpoint.pt`` go,
            written atomically at the end of every epoch; a checkpoint there is resumed
            (bit-identically) if it was made with the same configuration, else
            :class:`CheckpointError`. Default: None (nothing written).
        progress: show a tqdm progress bar.
        inject_nan_at: for tests: make the loss NaN at this step.
        interrupt_at: for tests: raise ``KeyboardInterrupt`` once this step is done, as a
            kill would.
    """
    state = _new_state(config, dataset)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        limit = checkpoint_size_limit(state.model)
        saved = _load_checkpoint(run_dir, config.steps, limit, config, state)
        if saved is not None:
            _restore(state, saved, config)
    images, labels = dataset.train_images, dataset.train_labels
    if config.train_subset is not None:
        images, labels = images[: config.train_subset], labels[: config.train_subset]
    normalize = _normalizer(images)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=config.steps,
            initial=state.step,
            desc=f"{config.norm}/{config.method}/d={config.group_size}/s{config.seed}",
            leave=False,
        )
    start = time.perf_counter() - state.seconds
    failure: Optional[tuple[int, str]] = None
    epoch_losses: list[float] = []
    state.model.train()
    while state.step < config.steps and failure is None:
        value, why = _step(state, config, images, labels, normalize, state.step == inject_nan_at)
        if why is not None:
            failure = (state.step, why)
            break
        assert value is not None
        epoch_losses.append(value)
        if bar is not None:
            bar.update(1)
        if state.step % config.steps_per_epoch == 0 or state.step == config.steps:
            if not _parameters_finite(state.model):
                failure = (state.step, "non-finite parameters")
                break
            state.losses.append(sum(epoch_losses) / len(epoch_losses))
            epoch_losses = []
            seconds = time.perf_counter() - start
            state.metrics.append(
                {
                    "step": state.step,
                    "epoch": state.step // config.steps_per_epoch,
                    "train_loss": state.losses[-1],
                    "seconds": round(seconds, 2),
                }
            )
            if run_dir is not None:
                _save(run_dir, state.snapshot(config, seconds))
        if state.step == interrupt_at:
            raise KeyboardInterrupt(f"interrupted at step {state.step} (test hook)")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    if failure is not None:
        return RunResult(False, None, failure[0], failure[1], seconds, state.losses)
    test_error = _test_error(config, dataset, state.model, normalize)
    if not math.isfinite(test_error):
        return RunResult(False, None, state.step, "non-finite evaluation", seconds, state.losses)
    return RunResult(True, test_error, None, None, time.perf_counter() - start, state.losses)


def config_dict(config: RunConfig) -> dict[str, Any]:
    values = asdict(config)
    values["lr_milestones"] = list(config.lr_milestones)
    return values
