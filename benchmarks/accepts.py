"""Write ``results/accepts.md``: what each public spectral function accepts, per dtype
(:mod:`stableeig.bench.accepts`; the same cells ``tests/test_accepts.py`` asserts).

    python benchmarks/accepts.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from stableeig.bench import accepts
from stableeig.bench.files import write_text


def main() -> int:
    torch.set_num_threads(1)
    table = accepts.render()
    note = (
        "`ok (e)`: the value, relative error `e` against the float64 oracle on the input as "
        "rounded to that dtype (bound `16·eps(dtype)`, `64·eps` through an SVD, `+1e-7` where a "
        "square root meets zero eigenvalues, `+32·eps` in float64 on the 4,096 × 3×3 batch, "
        "where the float64 oracle is the less accurate side); an error name: the typed error "
        "raised, as documented; `—`: the input "
        "cannot be written in that dtype (overflow or flush to zero). Bold: a disagreement "
        "with the oracle (none).\n\n"
    )
    write_text(Path("results/accepts.md"), note + table + "\n")
    print(note + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
