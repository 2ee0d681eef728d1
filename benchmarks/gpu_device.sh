#!/usr/bin/env bash
# The device checks for a lent GPU machine, as one prepared script (the `device` tool's `run`; at most
# about 9 minutes, under its 10-minute limit). Run from the repository root; results go to $OUT:
#   1. benchmarks/gpu.py: integration (kernel, back to back, fed from a pinned ring against the pinned
#      copy rate of the same run), peak finding and FBP beside the numba backend, correction;
#   2. when the appliance's dependencies import there (wheels carried in .whl/ are installed first):
#      benchmarks/e2e.py, the whole appliance, on the GPU and on the numba backend (upstream copy on
#      tmpfs); a run whose daemon fell back from the GPU fails its check;
#   3. the GPU backend's tests on the hardware (kernels, the peak finder on the device, the pinned feed;
#      the stage tests when the appliance's own dependencies import there).
# Each step has its own time limit, so one that hangs leaves the others their time.
set -u
OUT=${OUT:-/tmp/edge-gpu-device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0 EDGE_TEST_GPU=1 PYTHONUNBUFFERED=1
# the appliance's dependencies the machine's image lacks, carried as wheels in .whl/ (see docs/kernels.md)
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl > "$OUT/tests.txt" 2>&1 && export PYTHONPATH=$PWD:/tmp/site
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    $PY -c 'import numpy, numba, cupy; print("numpy", numpy.__version__, "numba", numba.__version__, "cupy", cupy.__version__)' 2>&1
    nproc
} > "$OUT/versions.txt"
timeout ${GPU_PY_SECONDS:-200} $PY benchmarks/gpu.py --json-file "$OUT/gpu.json" > "$OUT/gpu.txt" 2>&1
echo "gpu.py: exit $?" >> "$OUT/versions.txt"
if [ "${E2E:-1}" = 0 ]; then
    echo "e2e skipped: E2E=0" >> "$OUT/versions.txt"
elif $PY -c 'import zmq, h5py, hdf5plugin, bitshuffle, fastapi, uvicorn, softioc, psutil' 2>/dev/null; then
    for backend in gpu numba; do
        timeout ${E2E_SECONDS_LIMIT:-120} $PY benchmarks/e2e.py --seconds ${E2E_SECONDS:-20} \
            --set "reduction.backend=$backend" --json > "$OUT/e2e-$backend.json" 2> "$OUT/e2e-$backend.err"
        echo "e2e $backend: exit $?" >> "$OUT/versions.txt"
    done
else
    echo "e2e skipped: the appliance's dependencies do not import here" >> "$OUT/versions.txt"
fi
tests=(tests/unit/kernels)
if $PY -c 'import pydantic, h5py' 2>/dev/null; then
    tests+=(tests/unit/edge/test_modes_backends.py)
fi
timeout ${TESTS_SECONDS:-120} $PY -m pytest "${tests[@]}" -k "gpu and not simulator and not missing" -o addopts="" \
    -W ignore::DeprecationWarning -p no:cacheprovider -q -rs >> "$OUT/tests.txt" 2>&1
echo "tests: exit $?" >> "$OUT/versions.txt"
cat "$OUT/versions.txt"
