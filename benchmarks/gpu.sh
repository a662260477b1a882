#!/usr/bin/env bash
# The prepared GPU check, for a machine with torch + CUDA and no network (each block under its
# own timeout, 14.5 minutes at most on one H100/H200; where one call may run 10 minutes, run
# it as two: ONLY=small bash benchmarks/gpu.sh runs the last block alone): the CUDA tests,
# the speed benchmark on the device, a short training slice of the long preset, and the
# many-small-matrices rows. Everything it writes goes under results/ with the device in the name.
# Needs python with torch (CUDA), pytest, hypothesis and matplotlib; stableeig runs from src/.
#   bash benchmarks/gpu.sh            # or PYTHON=/path/to/python bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name().replace(' ', '-'))")
OUT="results/gpu-$DEVICE"
mkdir -p "$OUT"
if [ "${ONLY:-}" = small ]; then
  timeout 180 "$PY" benchmarks/small_gpu.py --device cuda --repeats 3 --results "$OUT" | tee "$OUT/small.txt"
  exit 0
fi
echo "== $DEVICE: CUDA tests and the test suite's device-independent core"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/bench/test_benchmarks.py tests/test_eigh.py tests/nn/test_zca.py tests/nn/test_statistics.py tests/nn/test_distributed.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
echo "== speed on the device (forward + y.backward(G), interleaved with BatchNorm)"
timeout 180 "$PY" -m stableeig bench speed --device cuda --only decomposition,layers,placement,training --repeats 20 --results "$OUT" | tee "$OUT/speed.txt"
echo "== the training step under torch.compile (inductor; default, and reduce-overhead = CUDA graphs with host checks off) vs eager"
timeout 240 "$PY" -m stableeig bench speed --device cuda --only compiled --repeats 20 --results "$OUT/compiled" | tee "$OUT/compiled.txt"
echo "== a training slice: long preset, d = 64, 300 steps, one seed per rule"
timeout 150 "$PY" -m stableeig reproduce table1 --preset long --device cuda --group-sizes 64 --methods analytic,power,loewner --seeds 1 --steps 300 --dataset fashion-mnist-subset --quiet --results "$OUT" | tee "$OUT/training.txt"
echo "== many small matrices (issue 42): logm, normals, rotations on B x 3x3 vs cuSOLVER, eager and compiled"
timeout 180 "$PY" benchmarks/small_gpu.py --device cuda --repeats 3 --results "$OUT" | tee "$OUT/small.txt"
echo "wrote $OUT"
