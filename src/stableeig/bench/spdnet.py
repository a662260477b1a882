"""``stableeig reproduce spdnet``: an SPDNet on region covariance descriptors of real images.

Each Fashion-MNIST image becomes the 8×8 covariance of per-pixel features (position x, y,
intensity, |∂x I|, |∂y I|, gradient magnitude, |∂xx I|, |∂yy I|: the classic region
covariance descriptor) plus ``1e-4·I``: eigenvalues ~2e-4 … 0.4, the two smallest at a median
2e-4 and 2e-3, so ReEig's ``eps = 5e-3`` clamps at least two of them in most matrices and the
matrices LogEig sees have exactly tied eigenvalues by design. The network is BiMap(8→6) →
ReEig → BiMap(6→4) → ReEig → LogEig → linear, trained with Adam (BiMap weights kept
orthonormal by ``torch.nn.utils.parametrizations.orthogonal``); ``analytic`` (eigh
autograd's rule) against ``power`` and ``loewner``. Rows go to the same JSONL/table
machinery as the other reproductions (resumable, claimed per cell).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import nn as se_nn
from ..nn.spd import symmetric_to_vector
from .data import Dataset

__all__ = [
    "BATCHNORMS",
    "METHODS",
    "PEERS",
    "PEER_BATCHNORMS",
    "PeerBatchNorm",
    "SPDNetConfig",
    "available",
    "descriptors",
    "error_rate",
    "fit_spdnet",
    "spdnet",
    "train_spdnet",
]

METHODS = ("analytic", "power", "loewner")
BATCHNORMS = {  # loewner with SPDBatchNorm after each BiMap (Brooks et al.'s placement)
    "spdbn-le": "log-euclidean",
    "spdbn-ai": "affine-invariant",
}
PEERS = ("geoopt", "spd_learn")  # the same network with a peer's ReEig and LogEig
PEER_BATCHNORMS = ("spd_learn-bn",)  # spd_learn's whole pipeline incl. its SPDBatchNormMean


class _PeerEig(nn.Module):
    """ReEig (``log=False``) or vectorized LogEig (``log=True``) through a peer package:
    geoopt's ``sym_funcm``/``sym_logm`` (eigh + autograd) or spd-learn's
    ``clamp_eigvals``/``matrix_log`` (its tie-thresholded backward)."""

    def __init__(self, peer: str, eps: float, log: bool) -> None:
        super().__init__()
        self.peer, self.eps, self.log = peer, eps, log

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.peer == "geoopt":
            from geoopt import linalg  # type: ignore[import-not-found, import-untyped, unused-ignore]

            if self.log:
                return symmetric_to_vector(linalg.sym_logm(X))
            return linalg.sym_funcm(X, lambda w: w.clamp_min(self.eps))
        from spd_learn import functional  # type: ignore[import-not-found, import-untyped, unused-ignore]

        if self.log:
            return symmetric_to_vector(functional.matrix_log.apply(X))
        return functional.clamp_eigvals.apply(X, self.eps)


class PeerBatchNorm(nn.Module):
    """spd-learn's ``SPDBatchNormMean`` (affine-invariant, one Karcher step, the batch mean
    detached from the gradient) on ``(N, n, n)``."""

    def __init__(self, n: int, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        from spd_learn.modules import SPDBatchNormMean  # type: ignore[import-not-found, import-untyped, unused-ignore]

        self.norm = SPDBatchNormMean(n, dtype=dtype)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.norm(X.unsqueeze(1)).squeeze(1)


def available(method: str) -> Optional[str]:
    """None if ``method`` can run here, else why not (a peer that does not import)."""
    if method not in (*PEERS, *PEER_BATCHNORMS):
        return None
    try:
        __import__("geoopt" if method == "geoopt" else "spd_learn")
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def descriptors(images: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Region covariance descriptors: (N, 1, H, W) uint8 → (N, 8, 8) float64 SPD, computed
    in chunks of 4,096 images (the whole data set at once peaked at 8.8 GB)."""
    if len(images) > 4096:
        return torch.cat([descriptors(chunk, eps) for chunk in images.split(4096)])
    x = images.double().squeeze(1) / 255
    N, H, W = x.shape
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[:, :, 1:-1] = (x[:, :, 2:] - x[:, :, :-2]) / 2
    dy[:, 1:-1, :] = (x[:, 2:, :] - x[:, :-2, :]) / 2
    dxx = torch.zeros_like(x)
    dyy = torch.zeros_like(x)
    dxx[:, :, 1:-1] = x[:, :, 2:] - 2 * x[:, :, 1:-1] + x[:, :, :-2]
    dyy[:, 1:-1, :] = x[:, 2:, :] - 2 * x[:, 1:-1, :] + x[:, :-2, :]
    rows = torch.arange(H, dtype=x.dtype).view(1, H, 1).expand(N, H, W) / H
    cols = torch.arange(W, dtype=x.dtype).view(1, 1, W).expand(N, H, W) / W
    features = torch.stack(
        [cols, rows, x, dx.abs(), dy.abs(), (dx**2 + dy**2).sqrt(), dxx.abs(), dyy.abs()], 1
    ).reshape(N, 8, H * W)
    centered = features - features.mean(-1, keepdim=True)
    covariance = centered @ centered.mT / (H * W)
    return (covariance + covariance.mT) / 2 + eps * torch.eye(8, dtype=x.dtype)


def spdnet(method: str, num_classes: int = 10, eps: float = 1e-4) -> nn.Module:
    """BiMap(8→6) → ReEig → BiMap(6→4) → ReEig → LogEig → Linear(10, classes); ``method``
    a rule of ours, a peer (:data:`PEERS`) for the ReEig and LogEig layers, a
    :data:`BATCHNORMS` name (``loewner`` with an ``SPDBatchNorm`` after each BiMap), or
    ``spd_learn-bn`` (spd-learn's layers and its batch norm in the same places)."""
    rule = "loewner" if method in BATCHNORMS else method
    if method in (*PEERS, *PEER_BATCHNORMS):
        reeig: Any = lambda: _PeerEig(method, eps, log=False)  # noqa: E731
        logeig: nn.Module = _PeerEig(method, eps, log=True)
    else:
        reeig = lambda: se_nn.ReEig(eps, method=rule)  # noqa: E731
        logeig = se_nn.LogEig(method=rule)

    def bimap(n_in: int, n_out: int) -> list[nn.Module]:
        layers: list[nn.Module] = [se_nn.BiMap(n_in, n_out, dtype=torch.float64)]
        if method in BATCHNORMS:
            mean = BATCHNORMS[method]
            layers.append(se_nn.SPDBatchNorm(n_out, mean=mean, dtype=torch.float64))
        if method in PEER_BATCHNORMS:
            layers.append(PeerBatchNorm(n_out))
        return layers

    return nn.Sequential(
        *bimap(8, 6), reeig(), *bimap(6, 4), reeig(),
        logeig, nn.Linear(10, num_classes, dtype=torch.float64),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SPDNetConfig:
    method: str = "loewner"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-2
    eps: float = 5e-3  # ReEig's floor: above the two smallest eigenvalues of most descriptors
    ridge: float = 1e-4  # added to each descriptor
    test_subset: Optional[int] = None


def train_spdnet(
    config: SPDNetConfig, dataset: Dataset, cache: Optional[dict[str, torch.Tensor]] = None
) -> dict[str, Any]:
    """One run: ``{"success", "test_error", "failure_step", "failure_reason", "seconds",
    "losses"}`` (a failure is a non-finite loss, gradient or parameter, or a refused
    backward; recorded, never raised). ``cache`` keeps the descriptors between runs."""
    return fit_spdnet(config, dataset, cache)[1]


def fit_spdnet(
    config: SPDNetConfig, dataset: Dataset, cache: Optional[dict[str, torch.Tensor]] = None
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`train_spdnet`'s run, and the trained model (in eval mode)."""
    cache = {} if cache is None else cache
    if "train" not in cache:
        cache["train"] = descriptors(dataset.train_images, config.ridge)
        cache["test"] = descriptors(dataset.test_images, config.ridge)
    train, test = cache["train"], cache["test"]
    test_labels = dataset.test_labels
    if config.test_subset is not None:
        test, test_labels = test[: config.test_subset], test_labels[: config.test_subset]
    torch.manual_seed(config.seed)
    model = spdnet(config.method, dataset.num_classes, config.eps)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    losses: list[float] = []
    epoch: list[float] = []
    for step in range(config.steps):
        index = torch.randint(0, len(train), (config.batch_size,), generator=generator)
        try:
            loss = nn.functional.cross_entropy(model(train[index]), dataset.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except (ValueError, RuntimeError) as error:
            why = f"raised {type(error).__name__}: {str(error)[:120]}"
            return model.eval(), _failed(step, why, start, losses)
        grads_finite = all(
            p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()
        )
        if not math.isfinite(float(loss.detach())) or not grads_finite:
            return model.eval(), _failed(step, "non-finite loss or gradient", start, losses)
        optimizer.step()
        epoch.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            losses.append(sum(epoch) / len(epoch))
            epoch = []
    model.eval()
    return model, {
        "success": True, "test_error": error_rate(model, test, test_labels),
        "failure_step": None, "failure_reason": None,
        "seconds": time.perf_counter() - start, "losses": losses,
    }  # fmt: skip


def error_rate(model: nn.Module, descriptors: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of ``labels`` that ``model`` gets wrong, in batches of 1000, no grad."""
    with torch.no_grad():
        wrong = sum(
            int((model(descriptors[i : i + 1000]).argmax(1) != labels[i : i + 1000]).sum())
            for i in range(0, len(descriptors), 1000)
        )
    return 100.0 * wrong / max(len(descriptors), 1)


def _failed(step: int, why: str, start: float, losses: list[float]) -> dict[str, Any]:
    return {
        "success": False, "test_error": None, "failure_step": step, "failure_reason": why,
        "seconds": time.perf_counter() - start, "losses": losses,
    }  # fmt: skip


def run(
    dataset: Dataset, results: Path, seeds: int = 3, steps: int = 1000,
    methods: tuple[str, ...] = METHODS,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every method × seed not yet in ``results`` (JSONL), one row per finished run."""
    from . import reproduce as rp

    cache: dict[str, torch.Tensor] = {}

    def runner(cell: rp.Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        config = SPDNetConfig(method=cell.method, seed=cell.seed, steps=steps)
        return train_spdnet(config, dataset, cache), dataclasses.asdict(config)

    for method in methods:
        if (why := available(method)) is not None:
            print(f"note: skipping {method}: {why}")
    runnable = tuple(m for m in methods if available(m) is None)
    cells = rp.table_cells("spdnet", seeds, methods=runnable)
    return rp.run_cells(cells, dataset, f"steps{steps}", results, progress=False, runner=runner)
