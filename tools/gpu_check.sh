#!/usr/bin/env bash
# The GPU check (`make gpu-check`): for a machine with a GPU and torch, and no internet. Stages,
# each under its own time limit, so that a short lease of a GPU still brings back every part:
#   build       the library (setup.py), unless DDF_OPS_LIBRARY names a prebuilt one that loads
#               with CUDA kernels (built elsewhere against this machine's torch version)
#   correctness tests/test_cuda.py: agreement with the CPU kernels in every dtype and layout,
#               network-sized calls in both layouts against the float64 reference, the
#               shared-memory edge, determinism, huge grids
#   bench       benchmarks.bench_gpu (GPU_BENCH_ARGS)
#   profile     with GPU_PROFILE=1 and ncu there: tools/gpu_profile.py under Nsight Compute
#               (time, DRAM bytes, instructions, occupancy of each of our kernels)
#   sanitizer   compute-sanitizer memcheck, racecheck and synccheck over GPU_SANITIZER_SELECT of
#               tests/test_cuda.py, this library's kernels only (kns=ddf4cuda); torch's caching
#               allocator off, so that memcheck sees each tensor's own bounds. Without
#               compute-sanitizer the log and the last line say so: that part was not run.
#   rest        every other `pytest -m cuda` test (the device-parametrized suites) but
#   compile     tests/test_compile.py's (Inductor compiles: seconds each), last
# A limit (GPU_LIMIT_<STAGE>_S, seconds; 0 = none) stops its stage with SIGINT, so pytest still
# prints what ran. Each stage's log is $GPU_LOG_DIR/gpu-<stage>.log; the last line sums up.
set -u
PY=${GPU_PYTHON:-python3}
LOG_DIR=${GPU_LOG_DIR:-.}
mkdir -p "$LOG_DIR"
declare -A status

limited() {  # limited SECONDS command...: the command, stopped with SIGINT after SECONDS (0: never)
    local seconds=$1
    shift
    if [ "$seconds" -gt 0 ]; then timeout -s INT -k 15 "$seconds" "$@"; else "$@"; fi
}

stage() {  # stage NAME command...: runs it with its limit, logs it, records its exit status
    local name=$1 limit_var
    shift
    limit_var="GPU_LIMIT_${name^^}_S"
    echo "== gpu-check: $name ($(date -u +%H:%M:%SZ), limit ${!limit_var:-0} s)"
    limited "${!limit_var:-0}" "$@" 2>&1 | tee "$LOG_DIR/gpu-$name.log"
    status[$name]=${PIPESTATUS[0]}
    [ "${status[$name]}" -eq 124 ] && echo "== gpu-check: $name STOPPED at its limit"
}

echo "== gpu-check $(date -u +%Y-%m-%dT%H:%MZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

if [ -n "${DDF_OPS_LIBRARY:-}" ] && $PY -c 'import ddf_ops, sys; sys.exit(0 if ddf_ops.has_cuda_kernels() else 1)'; then
    echo "== gpu-check: prebuilt library $DDF_OPS_LIBRARY loads, with CUDA kernels"
    status[build]=0
else
    [ -n "${DDF_OPS_LIBRARY:-}" ] && echo "== gpu-check: prebuilt $DDF_OPS_LIBRARY does not load here: building"
    unset DDF_OPS_LIBRARY
    stage build $PY setup.py --quiet build_ext --inplace
fi
$PY -c 'import ddf_ops; print(ddf_ops.build_info())' || status[build]=1

if [ "${status[build]}" -eq 0 ]; then
    stage correctness $PY -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider
    # shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of arguments
    stage bench $PY -m benchmarks.bench_gpu ${GPU_BENCH_ARGS:-}

    if [ "${GPU_PROFILE:-0}" = 1 ]; then
        ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
        if [ -n "$ncu" ]; then
            stage profile "$ncu" --clock-control none --kernel-name-base mangled --kernel-name regex:ddf4cuda \
                --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size,launch__block_size,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__shared_mem_per_block_dynamic \
                --csv $PY -m tools.gpu_profile
            $PY -m tools.gpu_profile --summarize "$LOG_DIR/gpu-profile.log"
        else
            echo "== gpu-check: GPU_PROFILE=1 but no ncu: profile NOT run"
            status[profile]="NOT-RUN"
        fi
    fi
    sanitizer=""
    for s in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer "$(command -v compute-sanitizer)"; do
        if [ -n "$s" ] && [ -x "$s" ]; then sanitizer=$s; break; fi
    done
    select=${GPU_SANITIZER_SELECT:-agreement or shared_memory_edge or deterministic or more_rows or network_sized}
    if [ -n "$sanitizer" ]; then
        for tool in memcheck racecheck synccheck; do
            PYTORCH_NO_CUDA_MEMORY_CACHING=1 stage "$tool" "$sanitizer" --tool "$tool" --kernel-name kns=ddf4cuda \
                --error-exitcode 86 $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider -k "$select"
        done
    else
        echo "== gpu-check: compute-sanitizer not found: memcheck, racecheck and synccheck were NOT run"
        status[sanitizer]="NOT-RUN"
    fi

    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
    stage rest $PY -m pytest tests -m cuda -q -rs -p no:cacheprovider --ignore=tests/test_cuda.py --ignore=tests/test_compile.py ${PYTEST_ARGS:-}
    # shellcheck disable=SC2086
    stage compile $PY -m pytest tests/test_compile.py -m cuda -q -rs -p no:cacheprovider ${PYTEST_ARGS:-}
fi

summary=""
failed=0
for name in build correctness bench profile memcheck racecheck synccheck sanitizer rest compile; do
    [ -n "${status[$name]:-}" ] || continue
    summary="$summary $name=${status[$name]}"
    [ "${status[$name]}" = 0 ] || [ "${status[$name]}" = NOT-RUN ] || failed=1
done
echo "== gpu-check:$summary"
exit $failed
