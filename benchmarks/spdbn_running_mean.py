"""Where SPDNet + SPDBatchNorm's test error comes from: the layer's running means at the end
of training against batch statistics and against running means re-estimated with the
weights frozen (the BatchNorm "recalibration" check).

    python benchmarks/spdbn_running_mean.py [--seeds 3] [--threads 1]

For each ``spdbn-*`` method and seed of ``stableeig reproduce spdnet`` (the same training:
same seed, data and steps), prints and writes ``results/spdnet_batchnorm_eval.md``: the test
error (%) with the running means as trained, with each test batch's own statistics (1000
images per batch), and with the running means recalibrated on the frozen weights: reset,
then BatchNorm's cumulative average (momentum ``1/k`` at the ``k``-th batch, what
``momentum=None`` does) over 100 random training batches of 128, no gradient. The peer
pipeline ``spd_learn-bn`` (spd-learn's SPDBatchNormMean) runs where spd-learn imports. A
gap between the first and the last is the running mean lagging the moving weights, not the
layer's arithmetic.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from stableeig import nn as se_nn
from stableeig.bench import spdnet
from stableeig.bench.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset("fashion-mnist", None)
    cache: dict[str, torch.Tensor] = {}
    lines = [
        "| method | seed | running means as trained | batch statistics | recalibrated, "
        "weights frozen |",
        "|---|---|---|---|---|",
    ]
    methods = [*spdnet.BATCHNORMS, *spdnet.PEER_BATCHNORMS]
    for method in [m for m in methods if spdnet.available(m) is None]:
        for seed in range(args.seeds):
            config = spdnet.SPDNetConfig(method=method, seed=seed)
            model, row = spdnet.fit_spdnet(config, dataset, cache)
            test, labels = cache["test"], dataset.test_labels
            as_trained = spdnet.error_rate(model, test, labels)
            assert row["test_error"] == as_trained
            batch = spdnet.error_rate(copy.deepcopy(model).train(), test, labels)
            norms = [m for m in model.modules() if hasattr(m, "running_mean")]
            with torch.no_grad():
                for layer in norms:  # ours by its method; spd-learn's to the identity
                    if isinstance(layer, se_nn.SPDBatchNorm):
                        layer.reset_running_stats()
                    else:
                        eye = torch.eye(layer.running_mean.shape[-1], dtype=torch.float64)
                        layer.running_mean = eye.expand_as(layer.running_mean).clone()
            model.train()
            generator = torch.Generator().manual_seed(1000 + seed)
            with torch.no_grad():
                for k in range(100):
                    for layer in norms:
                        layer.momentum = 1 / (k + 1)
                    index = torch.randint(0, len(cache["train"]), (128,), generator=generator)
                    model(cache["train"][index])
            recalibrated = spdnet.error_rate(model.eval(), test, labels)
            lines.append(
                f"| {method} | {seed} | {as_trained:.2f} | {batch:.2f} | {recalibrated:.2f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + f"\n\ntorch {torch.__version__}, {args.threads} thread(s), cpu\n"
    (ROOT / "results" / "spdnet_batchnorm_eval.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
