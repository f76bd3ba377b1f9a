#!/usr/bin/env bash
# One device call: GPU parity tests, then the benchmark suite, then a host-time profile;
# then the stream under CUDA MPS, then ptnp batch's throughput; all results under $OUT (at most
# 8 files come back: session.log, gpu_map_parity.json, suite/results.{json,md}, mps/results.json,
# profile.txt, profile_256.prof (the 256³ host profile's raw statistics, for pstats: callers and
# callees of every function), cupy_kernel_cache.tar.gz; ptnp batch's figures go to the log (its
# JSON stays on the device); the suite's plot is left out, as
# `python benchmarks/bench_report.py DIR` draws it again from results.json).
#
# Run through the device tool from the repository root, carrying the wheels the
# device lacks and the experimental models (both git-ignored, never committed):
#
#   mkdir -p .expdata && cp ../shared/data/experimental/{PdPt_EPB_5377.xyz,FePt_model.npy,FePt_atoms.npy} .expdata/
#   pip download --only-binary :all: --no-deps --python-version 3.12 -d .whlgpu gemmi mrcfile \
#       dask distributed partd locket tblib zict tornado     # the last seven: ptnp batch (Dask)
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whlgpu", ".expdata", ".cupycache"], timeout_s=590)
#
# CuPy compiles every kernel on first use (~2 min of a fresh machine's time, 125 s measured on
# 2026-11-28). The script keeps CuPy's kernel cache in .cupycache/kernel_cache (CUPY_CACHE_DIR),
# unpacks .cupycache/cupy_kernel_cache.tar.gz there first when it was carried, and returns the
# cache as $OUT/cupy_kernel_cache.tar.gz: copy that file to .cupycache/ (git-ignored) and carry
# the folder next time. CuPy keys each cached kernel by its source, options, architecture and
# CuPy/NVRTC versions, so a stale or foreign entry is only a miss.
#
# Budget (seconds) for the whole script: SESSION_S (default 540); the parity tests get
# PARITY_S (default 300: on a fresh machine every test process first compiles CuPy's kernels,
# ~2 min of one core each, 125 s measured on 2026-11-28), the random-map parity MAPS_S
# (default 90), the kernels A/B AB_S (default 60: stop 31's kernels against the cupyx calls they
# replaced, into the log), the suite the rest (it stops starting new cases in time). COLD=1 first times a
# cold start alone (a 128³ analyze; default 0), PARITY_WORKERS (default 8) sets the test
# processes (pytest-xdist), SUITE_ARGS replaces the suite's cases, MPS=0 skips the MPS stream
# (MPS_S seconds, default 70; MPS_PROCESSES, default "4 8 16"; MPS_MAPS, default 60).
set -u
export PYTHONUNBUFFERED=1          # a command stopped by its timeout keeps what it printed
OUT=${OUT:-/tmp/ptnp_gpu_out}
SESSION_S=${SESSION_S:-540}
PARITY_S=${PARITY_S:-300}
mkdir -p "$OUT"
t0=$(date +%s)
if ls .whlgpu/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whlgpu/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$PWD/.cupycache/kernel_cache}
mkdir -p "$CUPY_CACHE_DIR"
if [ -f .cupycache/cupy_kernel_cache.tar.gz ]; then
    tar -xzf .cupycache/cupy_kernel_cache.tar.gz -C "$CUPY_CACHE_DIR" \
        && echo "kernel cache: $(ls "$CUPY_CACHE_DIR" | wc -l) entries carried in" || echo "kernel cache: unpacking failed"
fi
[ -d .expdata ] && export PTNP_EXPERIMENTAL_DATA=$PWD/.expdata
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -m ptnp_gpu.cli info;
  echo "kernel cache: $(ls "$CUPY_CACHE_DIR" | wc -l) entries at the start"; } > "$OUT/session.log" 2>&1
LOG="$OUT/session.log"
# a cold start: the first analyze compiles every CuPy kernel the disk cache lacks
if [ "${COLD:-0}" = 1 ]; then
    timeout 150 python3 benchmarks/profile_gpu.py --size 128 --warmup 1 --top 0 --out "$OUT/cold.tmp" > /dev/null 2>> "$LOG"
    head -n 1 "$OUT/cold.tmp" | sed 's/^/cold start: /' | tee -a "$LOG"; rm -f "$OUT/cold.tmp"
    echo "cold start: done after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
fi
# the tests run in PARITY_WORKERS (default 8) processes (pytest-xdist, on the device image; 0: one);
# each compiles its kernels on its own, so a cold start costs ~2 min of CPU per process, not in series
WORKERS=${PARITY_WORKERS:-8}
XDIST=""
[ "$WORKERS" -gt 0 ] && XDIST="-n $WORKERS"
timeout "$PARITY_S" python3 -m pytest -v $XDIST --durations=15 -m gpu -p no:cacheprovider tests/ >> "$LOG" 2>&1
echo "parity tests: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
# stop 31's kernels against the cupyx calls they replaced (labelling, crop profiles, filters), into
# the log: host and wall ms, outputs equal
timeout "${AB_S:-60}" python3 benchmarks/bench_kernels_ab.py >> "$LOG" 2>&1
echo "kernels A/B: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
# NumPy vs CuPy detection on six random reconstruction-like maps (blur, low-pass, sharpening, masks)
timeout "${MAPS_S:-90}" python3 benchmarks/emulated_parity.py --device cupy --trials 6 --seed 1 \
    --json "$OUT/gpu_map_parity.json" >> "$LOG" 2>&1
echo "map parity: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
# where the backends part on the deblur / ladder / sharpened test maps: the first traced stage
# whose outputs differ (rounding-sized, and 100x that), into the log
timeout "${TRACE_S:-80}" python3 benchmarks/detect_trace_diff.py --device cupy \
    --maps very_blurred coarse_co sharpened >> "$LOG" 2>&1
echo "trace diff: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
# mostly-solvent maps detected in the particle's box and whole on the device (printed to the log only:
# the device returns at most 8 files)
timeout "${BOX_S:-45}" python3 benchmarks/particle_box.py --backend cupy --renderer ours --trials 3 >> "$LOG" 2>&1
echo "particle box: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
# the multi-process stream again under CUDA MPS (one server shares the GPU between the processes'
# contexts instead of time-slicing them), when the driver has it and MPS_S (default 70) seconds are
# left; the daemon runs in user folders under /tmp and is stopped after (no device setting changes)
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null 2>&1 \
        && [ $(( SESSION_S - ($(date +%s) - t0) )) -gt "${MPS_S:-70}" ]; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/ptnp_mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/ptnp_mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d >> "$LOG" 2>&1; then
        echo "MPS: daemon started" | tee -a "$LOG"
        # stopped however the script ends (a device timeout included)
        trap 'echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/ptnp_mps/pipe nvidia-cuda-mps-control >/dev/null 2>&1' EXIT TERM INT
        timeout $(( ${MPS_S:-70} - 10 )) python3 benchmarks/run_suite.py --out "$OUT/mps" --backends cupy \
            --stream-only --stream-maps "${MPS_MAPS:-60}" --stream-workers 1 \
            --stream-processes ${MPS_PROCESSES:-4 8 16} >> "$LOG" 2>&1
        echo "MPS stream: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
        # a stream stopped by its timeout leaves its worker processes: end them before the server
        pkill -f "run_suite.py --out $OUT/mps" 2>/dev/null; pkill -f "multiprocessing.spawn" 2>/dev/null; sleep 1
        echo get_server_list | nvidia-cuda-mps-control >> "$LOG" 2>&1
        echo quit | nvidia-cuda-mps-control >> "$LOG" 2>&1
        trap - EXIT TERM INT
        rm -f "$OUT/mps/results.md" "$OUT/mps/results.png"   # the device returns at most 8 files
    else
        echo "MPS: the daemon did not start" | tee -a "$LOG"
    fi
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
left=$(( SESSION_S - ($(date +%s) - t0) ))
# the suite stops starting cases at 70% of what is left (a case can take ~30 s at 384³)
# SUITE_ARGS replaces the cases (default: every size, both experimental particles, the stream)
python3 benchmarks/run_suite.py --out "$OUT/suite" ${SUITE_ARGS:---sizes 256 128 384 192 --numpy-sizes 256 128 192 \
    --repeats 3 --stream-first --stream-maps 30 --stream-processes 4 8} --max-seconds $(( left * 7 / 10 )) >> "$LOG" 2>&1
echo "suite: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
# host-time profile of one warm analyze (what to shorten next), if time is left
for n in 256 160; do
    [ $(( SESSION_S - ($(date +%s) - t0) )) -gt 25 ] || break
    echo "=== profile ${n}³ ===" >> "$OUT/profile.txt"
    dump=""
    [ "$n" = 256 ] && dump="--dump $OUT/profile_256.prof"
    timeout 40 python3 benchmarks/profile_gpu.py --size $n --out "$OUT/profile_$n.tmp" $dump > /dev/null 2>> "$LOG"
    cat "$OUT/profile_$n.tmp" >> "$OUT/profile.txt" 2>/dev/null; rm -f "$OUT/profile_$n.tmp"
done
# the GPU's own busy time and kernels in one warm 256³ analyze (PyTorch's profiler sees CuPy's
# kernels through CUPTI), if time is left: how much of the wall the device works
if [ $(( SESSION_S - ($(date +%s) - t0) )) -gt 70 ]; then
    echo "=== kernels 256³ ===" >> "$OUT/profile.txt"
    timeout 60 python3 benchmarks/profile_gpu.py --size 256 --kernels --top 30 --out "$OUT/kernels.tmp" \
        > /dev/null 2>> "$LOG"
    sed -n '1,75p' "$OUT/kernels.tmp" >> "$OUT/profile.txt" 2>/dev/null; rm -f "$OUT/kernels.tmp"
fi
echo "profiles: done after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
# ptnp batch on the GPU (16 maps of 200 atoms, full analyze with files and figures): one worker,
# four, and the default plan (a worker per core sharing the GPU), if Dask travelled and BATCH_S
# (default 100) seconds are left
if [ "${BATCH:-1}" = 1 ] && python3 -c "import distributed" 2>/dev/null \
        && [ $(( SESSION_S - ($(date +%s) - t0) )) -gt "${BATCH_S:-100}" ]; then
    timeout $(( ${BATCH_S:-100} - 10 )) python3 benchmarks/bench_batch.py --maps 16 --atoms 200 \
        --configs gpu1,gpu4,gpu --out /tmp/batch_gpu.json >> "$LOG" 2>&1
    echo "batch: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
fi
rm -f "$OUT/suite/results.png"          # the device returns at most 8 files
tail -n 60 "$OUT/suite/results.md" 2>/dev/null
# CuPy's kernel cache, for the next session to carry (see the header); under 16 MiB or left out
tar -czf "$OUT/cupy_kernel_cache.tar.gz" -C "$CUPY_CACHE_DIR" . 2>> "$LOG"
size=$(stat -c %s "$OUT/cupy_kernel_cache.tar.gz" 2>/dev/null || echo 0)
if [ "$size" -gt 16000000 ]; then rm -f "$OUT/cupy_kernel_cache.tar.gz"; fi
echo "kernel cache: $(ls "$CUPY_CACHE_DIR" | wc -l) entries, packed ${size} bytes" | tee -a "$LOG"
