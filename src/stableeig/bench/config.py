"""The run configuration and the names the command line offers, importable without torch
(``stableeig --help`` answers before torch loads; constructing a :class:`RunConfig` checks
its fields with the library's validators, which import it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "CONVENTIONS",
    "DATASETS",
    "DEPTHS",
    "DTYPES",
    "HEADS",
    "NORMS",
    "POOL_METHODS",
    "RULE_NAMES",
    "STEM_CHANNELS",
    "RunConfig",
]


def _option(default: Any, help: str, choices: Optional[tuple[str, ...]] = None) -> Any:
    """A RunConfig field whose help text and choices also make its command-line option."""
    return field(default=default, metadata={"help": help, "choices": choices})


DATASETS = ("fashion-mnist", "fashion-mnist-subset", "cifar10", "cifar100")
NORMS = ("batchnorm", "zca", "pca")
DTYPES = ("float32", "float64")
STEM_CHANNELS = 64  # the paper's stem width (one home: models, run configuration, CLI)
HEADS = ("average", "covpool")
POOL_METHODS = ("analytic", "power", "taylor", "clip", "loewner", "newton-schulz")
# The names of registries that live beside torch code; tests/bench/test_config.py checks
# that each equals its registry (models.DEPTHS, rules.RULES, nn.CONVENTIONS).
DEPTHS = ("resnet18", "resnet34", "resnet50")
RULE_NAMES = ("loewner", "power", "taylor", "clip", "analytic", "pi")
CONVENTIONS = ("stableeig", "reference")


@dataclass
class RunConfig:
    """Everything that defines a run; its fields are recorded with the result, and each is
    an option of ``stableeig train`` (help text and choices from the field's metadata)."""

    dataset: str = _option("fashion-mnist", "data set", DATASETS)
    depth: str = _option("resnet18", "CIFAR ResNet depth", DEPTHS)
    width: float = _option(
        0.125, f"stage width multiplier (the stem keeps {STEM_CHANNELS} channels), > 0"
    )
    norm: str = _option("zca", "normalization after the stem convolution", NORMS)
    head: str = _option("average", "pooling before the classifier", HEADS)
    pool_method: str = _option(
        "loewner", "the covariance head's square root (head covpool)", POOL_METHODS
    )
    method: str = _option("loewner", "gradient rule of the stem ZCA/PCA layer", RULE_NAMES)
    group_size: Optional[int] = _option(
        STEM_CHANNELS, f"channels per group of the stem layer (divides {STEM_CHANNELS})"
    )
    compute_dtype: str = _option("float64", "precision of the stem's decomposition", DTYPES)
    convention: str = _option(
        "stableeig", "the layer's arithmetic where it differs from the authors' code", CONVENTIONS
    )
    energy: float = _option(0.99, "PCA: share of the trace kept, in (0, 1]")
    n_components: Optional[int] = _option(None, "PCA: eigenvectors kept (overrides energy)")
    num_iters: Optional[int] = _option(None, "power iterations of power/pi (default: 19)")
    eps: float = _option(1e-4, "ridge added to the group covariances, > 0")
    steps: int = _option(120, "SGD steps, >= 1")
    steps_per_epoch: int = _option(40, "steps between metrics lines and checkpoints, >= 1")
    batch_size: int = _option(128, "images per step, >= 2")
    lr: float = _option(0.1, "initial learning rate, > 0")
    momentum: float = _option(0.9, "SGD momentum, in [0, 1)")
    weight_decay: float = _option(5e-4, "SGD weight decay, >= 0")
    train_subset: Optional[int] = _option(None, "use the first N training images, >= 1")
    test_subset: Optional[int] = _option(2000, "evaluate on the first N test images, >= 1")
    seed: int = _option(0, "random seed")
    device: str = _option("cpu", "torch device, e.g. cpu or cuda")
    divergence_factor: float = _option(10.0, "failure when the loss exceeds this x the first")
    lr_milestones: tuple[float, ...] = (100 / 350, 200 / 350, 300 / 350)  # the paper's, scaled

    def __post_init__(self) -> None:
        """Every field checked before any work: :class:`ArgumentError` names the field."""
        from .._validation import check_choice, check_in_range  # (torch: when one is made)
        from ..exceptions import ArgumentError
        from .training import check_device

        for name, choices in (  # the dataset's name is a label here; the CLI checks it
            ("depth", DEPTHS),
            ("norm", NORMS),
            ("head", HEADS),
            ("pool_method", POOL_METHODS),
            ("method", RULE_NAMES),
            ("compute_dtype", DTYPES),
            ("convention", CONVENTIONS),
        ):
            check_choice(name, getattr(self, name), choices)
        if self.group_size is not None:
            check_in_range("group_size", self.group_size, 1, STEM_CHANNELS, integer=True)
            if STEM_CHANNELS % self.group_size:
                raise ArgumentError(
                    f"group_size: expected a divisor of the stem's {STEM_CHANNELS} channels "
                    f"(got {self.group_size})"
                )
        for name, low, high in (  # upper bounds: beyond them a run only exhausts memory/time
            ("steps", 1, 10**7),
            ("steps_per_epoch", 1, 10**7),
            ("batch_size", 2, 65536),
            ("train_subset", 1, 10**7),
            ("test_subset", 1, 10**7),
            ("num_iters", 1, 1000),
            ("seed", 0, 2**63 - 1),
            ("n_components", 1, self.group_size or STEM_CHANNELS),
        ):
            if getattr(self, name) is not None:
                check_in_range(name, getattr(self, name), low, high, integer=True)
        intervals: tuple[tuple[str, float, float, bool, bool], ...] = (
            ("width", 1 / STEM_CHANNELS, 16, False, False),  # every stage keeps >= 1 channel
            ("eps", 0, 1, True, False),  # a ridge on unit-variance activations
            ("lr", 0, 1e4, True, False),
            ("energy", 0, 1, True, False),
            ("momentum", 0, 1, False, True),
            ("weight_decay", 0, 1, False, False),
            ("divergence_factor", 1, 1e6, True, False),
        )
        for name, lower, upper, open_low, open_high in intervals:
            check_in_range(name, getattr(self, name), lower, upper, open_low, open_high)
        if self.num_iters is not None and self.method not in ("power", "pi"):
            raise ArgumentError(
                f"num_iters: expected method power or pi (got method {self.method!r})"
            )
        if self.n_components is not None and self.norm != "pca":
            raise ArgumentError(f"n_components: expected norm 'pca' (got norm {self.norm!r})")
        check_device("device", self.device)
