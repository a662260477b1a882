"""An SPDNet on EEG-like covariances (22 channels, two classes), trained a few steps.

    python examples/spdnet_eeg.py       # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

BiMap → ReEig → LogEig → linear with our layers, beside the same network written with
``torch.linalg.eigh`` autograd (what SPDNet code copies): ReEig clamps eigenvalues to ε,
which ties them, and the copied backward turns NaN; ours stays exact.
"""

from __future__ import annotations

import os

import torch
from torch import nn

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
TRIALS, CHANNELS, SAMPLES, STEPS = (64, 22, 100, 5) if SMALL else (512, 22, 250, 60)


def eeg_covariances() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of trials whose sources differ in power on a few channels."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(TRIALS) % 2
    mixing = torch.randn(CHANNELS, CHANNELS, generator=g, dtype=torch.float64)
    power = torch.ones(TRIALS, CHANNELS, dtype=torch.float64)
    power[labels == 1, :3] = 3.0
    sources = torch.randn(TRIALS, CHANNELS, SAMPLES, generator=g, dtype=torch.float64)
    signals = mixing @ (sources * power.sqrt().unsqueeze(-1))
    X = signals @ signals.mT / SAMPLES
    return X / X.diagonal(dim1=-2, dim2=-1).mean(-1).view(-1, 1, 1), labels


class EighReEig(nn.Module):
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        w, V = torch.linalg.eigh(X)
        return (V * w.clamp_min(0.5).unsqueeze(-2)) @ V.mT


class EighLogEig(nn.Module):
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        w, V = torch.linalg.eigh(X)
        return se.nn.spd.symmetric_to_vector((V * w.log().unsqueeze(-2)) @ V.mT)


def network(ours: bool) -> nn.Module:
    torch.manual_seed(0)
    reeig = se.nn.ReEig(0.5) if ours else EighReEig()
    logeig = se.nn.LogEig() if ours else EighLogEig()
    return nn.Sequential(se.nn.BiMap(CHANNELS, 8, dtype=torch.float64), reeig, logeig,
                         nn.Linear(36, 2, dtype=torch.float64))  # fmt: skip


def main() -> None:
    X, labels = eeg_covariances()
    for name, ours in (("stableeig", True), ("torch.linalg.eigh", False)):
        model = network(ours)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        status = "every gradient finite"
        for step in range(STEPS):
            loss = nn.functional.cross_entropy(model(X), labels)
            optimizer.zero_grad()
            loss.backward()
            if not all(bool(p.grad.isfinite().all()) for p in model.parameters()):
                status = f"non-finite gradient at step {step}"
                break
            optimizer.step()
        with torch.no_grad():
            accuracy = float((model(X).argmax(1) == labels).double().mean())
        print(f"{name:18s} {status}; training accuracy {accuracy:.2f}")
        if ours:
            assert status == "every gradient finite"


if __name__ == "__main__":
    main()
