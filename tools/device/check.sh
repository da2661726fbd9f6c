#!/usr/bin/env bash
# The GPU checks, as one prepared command for a lent machine (see docs/performance.md,
# "GPU"). Build the bundle here first (bash tools/device/bundle.sh), then with the
# device tool: run(command="bash tools/device/check.sh", carry=[".device"],
# timeout_s=480). Everything lands in $OUT (8 files at most come back):
#   env.txt            card, driver, versions
#   gpu_check.json/.log  tools/device/gpu_check.py: CuPy parity against the torch core
#                      (bit for bit) and forward+backward timings against SpikingJelly's
#                      and snnTorch's stock neurons; the JSON is rewritten after every
#                      phase, so a step cut short keeps what it finished
#   pytest.log         the CUDA tests (tests/test_cupy.py without its wheel-building
#                      test, tests/test_triton_flexsn.py, and tests/test_precision.py's
#                      CUDA test) on the GPU
#   cifar.log          one epoch of Table 1(b) row 1 (the pure spiking CNN) at the full
#                      profile (T = 25, batch 64, batch norm) on the bundled CIFAR-10
#                      subset, backend spikingjelly-cupy then reference, with epochs.csv
#   cifar-cupy.json, cifar-reference.json   the two runs' results.json
# Each step has its own time limit (T_* below), so that one slow step cannot eat the
# others' time; together they stay under CHECK_LIMIT = 400 s, which leaves a 480 s run
# room for the machine's start-up and the copies (tests/test_cupy.py checks the sum).
# PYTHON, DEVICE and CIFAR_ARGS override the interpreter, the device and the CIFAR run's
# options (a dry run on a CPU: DEVICE=cpu CIFAR_ARGS="--profile quick --epochs 1").
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:?set OUT to the folder for the results}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
CIFAR_ARGS=${CIFAR_ARGS:-"--epochs 1"}
SITE=${SITE:-/tmp/hnn-site}
CHECK_LIMIT=400
T_INSTALL=30      # the wheels into $SITE
T_SMI=10          # nvidia-smi
T_ENV=20          # the versions
T_GPU_CHECK=160   # gpu_check.py; it starts no phase after GPU_CHECK_BUDGET
GPU_CHECK_BUDGET=120
T_PYTEST=60
T_CIFAR=60        # each of the two CIFAR-10 runs
export PYTHONUNBUFFERED=1
# -P keeps the repository root off sys.path: hnn_bridge comes from the wheel
# (its adapters and recipes sub-packages live outside hnn_bridge/ in the source tree).
export PYTHONSAFEPATH=1
started=$SECONDS

timeout "$T_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$REPO"/.device/wheels/*.whl || { echo "wheel install failed" >&2; exit 1; }
export PYTHONPATH="$SITE"

{
    date -u; timeout "$T_SMI" nvidia-smi 2>&1 || echo "no nvidia-smi"
    timeout "$T_ENV" "$PY" - <<'PYEOF'
import platform, torch, spikingjelly, snntorch, hnn_bridge
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("spikingjelly", getattr(spikingjelly, "__version__", "?"), "snntorch", snntorch.__version__,
      "hnn_bridge from", hnn_bridge.__file__)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
try:
    import cupy
    print("cupy", cupy.__version__)
except Exception as exc:  # reported, not fatal: gpu_check says what it needs
    print("cupy: not importable:", exc)
try:
    from hnn_bridge.adapters.cupy_kernels import nvrtc_binding
    print("nvrtc through", type(nvrtc_binding()).__name__)
except Exception as exc:  # reported, not fatal
    print("nvrtc: not reachable:", exc)
PYEOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== gpu_check ($((SECONDS - started)) s)"
timeout "$T_GPU_CHECK" "$PY" "$REPO/tools/device/gpu_check.py" --out "$OUT/gpu_check.json" \
    --budget "$GPU_CHECK_BUDGET" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $?"; tail -n 40 "$OUT/gpu_check.log"

echo "== pytest ($((SECONDS - started)) s)"
(cd "$REPO" && timeout "$T_PYTEST" "$PY" -m pytest -q -p no:cacheprovider tests/test_cupy.py \
    tests/test_triton_flexsn.py tests/test_precision.py -k "(cupy or cuda or flexsn or triton or nvrtc) and not wheel") \
    > "$OUT/pytest.log" 2>&1
echo "pytest exit $?"; tail -n 5 "$OUT/pytest.log"

echo "== CIFAR-10, Table 1(b) row 1 ($((SECONDS - started)) s)"
for backend in spikingjelly-cupy reference; do
    run="/tmp/cifar-$backend"
    rm -rf "$run"
    # shellcheck disable=SC2086
    timeout "$T_CIFAR" "$PY" -m hnn_bridge recipe table1b --rows 1 $CIFAR_ARGS --device "$DEVICE" \
        --backend "$backend" --data-dir "$REPO/.device/data" --out "$run" >> "$OUT/cifar.log" 2>&1
    echo "$backend exit $?" | tee -a "$OUT/cifar.log"
    cat "$run/epochs.csv" >> "$OUT/cifar.log" 2>/dev/null
    cp "$run/results.json" "$OUT/cifar-${backend#spikingjelly-}.json" 2>/dev/null
done
tail -n 30 "$OUT/cifar.log"
echo "check.sh done in $((SECONDS - started)) s (limit $CHECK_LIMIT s)"
