"""Why do ``pi`` runs at d = 8 finish without NaN yet test near chance?

Trains one ``long``-preset Table 1 run of the ``pi`` layer at d = 8 (kept in
``runs/diagnose-pi-d8-s<seed>``, so a rerun resumes or reuses it), then evaluates the final
model three ways: as the harness does (eval mode, the stem layer's running statistics), with
the stem layer whitening each test batch by its own statistics, and after re-estimating the
stem's running statistics as a cumulative average over 50 training batches. It also prints
the largest gain (spectral norm) of the running whitening matrices, and how much the stem's
output on one training batch changes between two calls (new random starts) and between
batch and running statistics. Appends its report to ``results/diagnose_pi_d8.txt``.
Run: ``python benchmarks/diagnose_pi.py [seed]`` (~10 min on 2 cores).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

from stableeig.bench.data import augment, load_dataset
from stableeig.bench.reproduce import Cell, cell_config
from stableeig.bench.training import _normalizer, build_model, evaluate, train_run
from stableeig.nn import ZCAWhitening2d


def stem_layer(model: nn.Module) -> ZCAWhitening2d:
    return next(m for m in model.modules() if isinstance(m, ZCAWhitening2d))


def gain(matrices: torch.Tensor) -> float:
    """The largest spectral norm among (G, d, d) whitening matrices."""
    return float(torch.linalg.matrix_norm(matrices.double(), ord=2).max())


def main(seed: int) -> None:
    torch.set_num_threads(2)
    config = cell_config(Cell("table1", "pi", 8, seed), "long")
    dataset = load_dataset(config.dataset)
    run_dir = Path(f"runs/diagnose-pi-d8-s{seed}")
    result = train_run(config, dataset, run_dir=run_dir)
    lines = [f"pi, d = 8, long preset, seed {seed}: {result}"]
    if result.success:
        model = build_model(config, dataset)
        model.load_state_dict(torch.load(run_dir / "checkpoint.pt")["model"])
        normalize = _normalizer(dataset.train_images)
        images, labels = dataset.test_images, dataset.test_labels
        lines.append(
            f"test error, running statistics (the harness): "
            f"{evaluate(model, images, labels, normalize, 'cpu'):.2f} %"
        )
        batch_stats = copy.deepcopy(model)
        stem_layer(batch_stats).track_running_stats = False  # eval uses each batch's statistics
        lines.append(
            f"test error, each test batch whitened by its own statistics: "
            f"{evaluate(batch_stats, images, labels, normalize, 'cpu'):.2f} %"
        )
        recalibrated = copy.deepcopy(model)
        stem = stem_layer(recalibrated)
        stem.reset_running_stats()
        stem.momentum = None  # cumulative average
        generator = torch.Generator().manual_seed(seed)
        train = dataset.train_images
        with torch.no_grad():
            recalibrated.eval()
            stem.train()
            for _ in range(50):
                index = torch.randint(0, len(train), (config.batch_size,), generator=generator)
                recalibrated(normalize(augment(train[index], generator)))
        lines.append(
            f"test error, stem running statistics re-estimated over 50 batches: "
            f"{evaluate(recalibrated, images, labels, normalize, 'cpu'):.2f} %"
        )
        lines.append(
            f"largest gain of the running whitening: {gain(stem_layer(model).running_matrix):.3g}; "
            f"re-estimated: {gain(stem.running_matrix):.3g}"
        )
        index = torch.randint(0, len(train), (config.batch_size,), generator=generator)
        lines.append(stem_variation(model, normalize(augment(train[index], generator))))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open("results/diagnose_pi_d8.txt", "a") as out:
        out.write(text + "\n")


def stem_variation(model: nn.Module, batch: torch.Tensor) -> str:
    """Relative change of the stem layer's output on one batch: two training-mode calls
    (fresh random starts), and training mode (batch statistics) vs eval (running)."""
    captured: list[torch.Tensor] = []
    stem = copy.deepcopy(stem_layer(model))
    handle = stem_layer(model).register_forward_hook(lambda m, i, o: captured.append(i[0]))
    model.eval()
    with torch.no_grad():
        model(batch)
        handle.remove()
        stem.train()
        first, second = stem(captured[0]), stem(captured[0])
        stem.eval()
        running = stem(captured[0])

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / a.norm())

    return (
        f"stem output on one training batch: two calls differ by {relative(first, second):.3g} "
        f"(relative); batch vs running statistics by {relative(first, running):.3g}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
