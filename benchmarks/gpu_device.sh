#!/usr/bin/env bash
# The device checks for a lent GPU machine, as one prepared script (the `device` tool's `run`; about 8
# minutes, under its 10-minute limit). Run from the repository root; results go to $OUT:
#   1. versions, and the GPU backend's tests on the hardware (kernels, the peak finder on the device,
#      the pinned feed; the stage tests when the appliance's own dependencies import there);
#   2. benchmarks/gpu.py: integration (kernel, back to back, fed from a pinned ring against the pinned
#      copy rate of the same run), peak finding and FBP beside the numba backend, correction;
#   3. when the appliance's dependencies import there: benchmarks/e2e.py, the whole appliance, on the
#      numba backend and on the GPU (upstream copy on tmpfs).
# Each step has its own time limit, so one that hangs leaves the others their time.
set -u
OUT=${OUT:-/tmp/edge-gpu-device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0 EDGE_TEST_GPU=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    $PY -c 'import numpy, numba, cupy; print("numpy", numpy.__version__, "numba", numba.__version__, "cupy", cupy.__version__)' 2>&1
    nproc
} > "$OUT/versions.txt"
tests=(tests/unit/kernels)
if $PY -c 'import pydantic, h5py' 2>/dev/null; then
    tests+=(tests/unit/edge/test_modes_backends.py)
fi
timeout 300 $PY -m pytest "${tests[@]}" -k "gpu and not simulator and not missing" -o addopts="" \
    -W ignore::DeprecationWarning -p no:cacheprovider -q -rs > "$OUT/tests.txt" 2>&1
echo "tests: exit $?" >> "$OUT/versions.txt"
timeout 300 $PY benchmarks/gpu.py --json-file "$OUT/gpu.json" > "$OUT/gpu.txt" 2>&1
echo "gpu.py: exit $?" >> "$OUT/versions.txt"
if $PY -c 'import zmq, h5py, hdf5plugin, bitshuffle, fastapi, uvicorn, softioc, psutil' 2>/dev/null; then
    for backend in numba gpu; do
        timeout 150 $PY benchmarks/e2e.py --seconds 30 --set "reduction.backend=$backend" --json \
            > "$OUT/e2e-$backend.json" 2> "$OUT/e2e-$backend.err"
        echo "e2e $backend: exit $?" >> "$OUT/versions.txt"
    done
else
    echo "e2e skipped: the appliance's dependencies do not import here" >> "$OUT/versions.txt"
fi
cat "$OUT/versions.txt"
