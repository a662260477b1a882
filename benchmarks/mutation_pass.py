# ruff: noqa: E501  (a table of literal code fragments)
"""A mutation pass: apply one small change to the library at a time, run the tests that
should notice, and record whether they did (killed) or not (survived).

    python benchmarks/mutation_pass.py [--results results/mutation_pass.md]

Each mutation is a literal replacement that must occur exactly once; the file is restored
afterwards whatever happens. The first seven are issue 19's survivors of the earlier pass.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = "src/stableeig/"

# (file, original, mutant, tests to run)
MUTATIONS: list[tuple[str, str, str, str]] = [
    ("spectral.py", "return n * torch.finfo(w.dtype).eps", "return torch.finfo(w.dtype).eps",
     "tests/test_mutants.py tests/test_spectral.py"),
    ("nn/whitening.py", "RAYLEIGH_TOLERANCE = 0.1", "RAYLEIGH_TOLERANCE = 0.2",
     "tests/test_mutants.py tests/test_fidelity.py"),
    ("bench/training.py", 'torch.set_rng_state(saved["torch_rng"])', "pass",
     "tests/bench/test_models_training.py -k killed"),
    ("nn/whitening.py", "(extracted[..., 1:] <= extracted[..., :-1])",
     "(extracted[..., 1:] < extracted[..., :-1])", "tests/test_mutants.py tests/test_fidelity.py"),
    ("spectral.py", "return w.clamp_min(eps)", "return w.clamp_min(eps / 10)",
     "tests/test_mutants.py tests/nn/test_zca.py"),
    ("nn/whitening.py", "& (energy < 1 - tolerance)", "& (energy <= 1 - tolerance)",
     "tests/test_mutants.py tests/test_fidelity.py"),
    ("bench/files.py", "fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass",
     "tests/bench/test_safety.py -k claim"),
    ("spectral.py", "return -1.0 / (s_i * s_j * (s_i + s_j))", "return 1.0 / (s_i * s_j * (s_i + s_j))",
     "tests/test_spectral.py"),
    ("spectral.py", "return 1.0 / (s.unsqueeze(-1) + s.unsqueeze(-2))",
     "return 0.5 / (s.unsqueeze(-1) + s.unsqueeze(-2))", "tests/test_spectral.py"),
    ("spectral.py", "return (before < energy).to(w.dtype).flip(-1)",
     "return (before <= energy).to(w.dtype).flip(-1)", "tests/test_mutants.py tests/nn/test_pca.py tests/test_spectral.py"),
    ("rules.py", "return torch.sign(gaps) / gaps.abs().clamp_min(self.min_gap)",
     "return torch.sign(gaps) / gaps.abs().clamp_min(self.min_gap / 2)", "tests/test_mutants.py tests/test_eigh.py"),
    ("rules.py", "partial = geometric_sum(q, self.num_iters)",
     "partial = geometric_sum(q, self.num_iters + 1)", "tests/test_eigh.py tests/test_fidelity.py"),
    ("rules.py", "geometric_sum(q, self.order + 1) / denominator",
     "geometric_sum(q, self.order) / denominator", "tests/test_eigh.py tests/test_fidelity.py"),
    ("bench/reproduce.py", "if (q := probability(x)) <= observed * (1 + 1e-7)",
     "if (q := probability(x)) < observed", "tests/bench/test_models_training.py -k fisher"),
    ("bench/reproduce.py", "centre = (p + z * z / (2 * runs))", "centre = (p + z / (2 * runs))",
     "tests/bench/test_models_training.py -k wilson"),
    ("bench/reproduce.py", "TRAINED_FACTOR = 1.5", "TRAINED_FACTOR = 2.0",
     "tests/bench/test_models_training.py -k trained"),
    ("bench/reproduce.py", "at_risk = sum(1 for t, _ in runs if t >= step)",
     "at_risk = sum(1 for t, _ in runs if t > step)", "tests/bench/test_models_training.py -k kaplan"),
    ("nn/transforms.py", "return biased * (count / (count - 1).clamp_min(1))", "return biased",
     "tests/nn/test_zca.py tests/nn/test_pca.py"),
    ("nn/statistics.py", "A = (grad_covariance + grad_covariance.mT) / count",
     "A = (grad_covariance + grad_covariance.mT) / (2 * count)", "tests/nn/test_statistics.py"),
    ("nn/_base.py", 'factor = 1.0 / (float(self._buffer("num_batches_tracked")) + 1)',
     'factor = 1.0 / (float(self._buffer("num_batches_tracked")) + 2)', "tests/nn"),
    ("bench/files.py", 'prefix = b"" if reader.read(1) == b"\\n" else b"\\n"', 'prefix = b""',
     "tests/bench/test_safety.py -k torn"),
    ("_autograd.py", "return rotated, rotated.diagonal(dim1=-2, dim2=-1), V @ (coefficients * rotated)",
     "return rotated, rotated.diagonal(dim1=-2, dim2=-1), V @ rotated", "tests/test_composability.py"),
    ("nn/statistics.py", "    return not traced(x3)", "    return True",
     "tests/nn/test_compile.py -k reproducer"),
    ("_validation.py", "    return _HOST_CHECKS[0] and not _under_vmap()", "    return _HOST_CHECKS[0]",
     "tests/test_composability.py -k vmap"),
    ("bench/files.py", "    if resolved == Path.home().resolve():", "    if False:",
     "tests/bench/test_safety.py -k restart or protected"),
]  # fmt: skip


def run(tests: str) -> bool:
    """True if the tests fail (the mutant is killed)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W",
               "ignore", *tests.split(" -k ")[0].split()]  # fmt: skip
    if " -k " in tests:
        command += ["-k", tests.split(" -k ", 1)[1]]
    return subprocess.run(command, cwd=ROOT, capture_output=True).returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/mutation_pass.md")
    args = parser.parse_args()
    for tests in dict.fromkeys(t for *_, t in MUTATIONS):  # a kill must mean the mutation
        assert not run(tests), f"the unmutated code fails {tests}"
    lines = ["| # | file | mutation | tests | result |", "|---|---|---|---|---|"]
    killed = 0
    for number, (name, original, mutant, tests) in enumerate(MUTATIONS, 1):
        path = ROOT / SRC / name
        text = path.read_text()
        assert text.count(original) == 1, f"{name}: {original!r} occurs {text.count(original)}x"
        started = time.perf_counter()
        try:
            path.write_text(text.replace(original, mutant))
            dead = run(tests)
        finally:
            path.write_text(text)
        killed += dead
        shown = f"`{original.strip()}` → `{mutant.strip()}`".replace("|", "\\|")
        verdict = "killed" if dead else "**survived**"
        lines.append(f"| {number} | {name} | {shown} | `{tests}` | {verdict} |")
        print(f"[{number}/{len(MUTATIONS)}] {name}: {verdict} ({time.perf_counter() - started:.0f}s)",
              flush=True)  # fmt: skip
    lines.append(f"\n{killed} of {len(MUTATIONS)} mutants killed.")
    (ROOT / args.results).write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
