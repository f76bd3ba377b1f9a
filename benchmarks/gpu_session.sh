#!/usr/bin/env bash
# One device call: GPU parity tests, then the benchmark suite, all results under $OUT.
#
# Run through the device tool from the repository root, carrying the wheels the
# device lacks and the experimental models (both git-ignored, never committed):
#
#   mkdir -p .expdata && cp ../shared/data/experimental/{PdPt_EPB_5377.xyz,FePt_model.npy,FePt_atoms.npy} .expdata/
#   pip download --only-binary :all: --no-deps --python-version 3.12 -d .whlgpu gemmi mrcfile
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whlgpu", ".expdata"], timeout_s=560)
#
# Budget (seconds) for the whole script: SESSION_S (default 500); the parity tests get
# PARITY_S (default 150), the random-map parity MAPS_S (default 90), the suite the rest (it
# stops starting new cases in time).
set -u
OUT=${OUT:-/tmp/ptnp_gpu_out}
SESSION_S=${SESSION_S:-500}
PARITY_S=${PARITY_S:-150}
mkdir -p "$OUT"
t0=$(date +%s)
if ls .whlgpu/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whlgpu/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
[ -d .expdata ] && export PTNP_EXPERIMENTAL_DATA=$PWD/.expdata
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -m ptnp_gpu.cli info; } \
    > "$OUT/device.txt" 2>&1
timeout "$PARITY_S" python3 -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/gpu_tests.log" 2>&1
echo "parity tests: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu_tests.log"
# NumPy vs CuPy detection on six random reconstruction-like maps (blur, low-pass, sharpening, masks)
timeout "${MAPS_S:-90}" python3 benchmarks/emulated_parity.py --device cupy --trials 6 --seed 1 \
    --json "$OUT/gpu_map_parity.json" > "$OUT/gpu_map_parity.log" 2>&1
echo "map parity: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu_map_parity.log"
left=$(( SESSION_S - ($(date +%s) - t0) ))
# the suite stops starting cases at 70% of what is left (a case can take ~30 s at 384³)
python3 benchmarks/run_suite.py --out "$OUT/suite" --sizes 128 192 256 384 --numpy-sizes 256 \
    --repeats 3 --stream-maps 40 --stream-processes 4 8 --max-seconds $(( left * 7 / 10 )) > "$OUT/suite.log" 2>&1
echo "suite: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/suite.log"
tail -n 60 "$OUT/suite/results.md" 2>/dev/null
