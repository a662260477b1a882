"""BatchNorm → ZCA whitening in a ResNet-18, compiled whole with default settings.

    python examples/compile_resnet.py     # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

Prints the graph breaks (0: the checks are assertions inside the graph), and eager against
compiled training steps (the compiled step is tested against eager in
``tests/nn/test_compile.py``).
"""

from __future__ import annotations

import os
import time

import torch

import stableeig as se
from stableeig.bench.models import resnet

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
BATCH, WIDTH, STEPS = (8, 0.125, 2) if SMALL else (64, 0.25, 5)


def main() -> None:
    torch.manual_seed(0)
    model = se.nn.convert_batchnorm(resnet(num_classes=10, in_channels=3, width=WIDTH), "zca",
                                    group_size=8)  # fmt: skip
    x = torch.randn(BATCH, 3, 32, 32)
    labels = torch.randint(0, 10, (BATCH,))
    explanation = torch._dynamo.explain(model)(x)
    print(f"graph breaks with every BatchNorm converted: {explanation.graph_break_count}")
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    runs = (("eager", model),) if SMALL else (("eager", model), ("compiled", compiled))
    for name, net in runs:  # CI's small size skips the compilation (minutes on 2 cores)
        times = []
        for _ in range(STEPS + 1):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        print(f"{name:9s} first step {times[0]:.2f} s, then {min(times[1:]):.3f} s a step")
    assert explanation.graph_break_count == 0


if __name__ == "__main__":
    main()
