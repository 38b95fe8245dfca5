#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA device and no network (the device
# tool's H200 has torch, onnx and onnxruntime; gymnasium and MuJoCo travel as wheels, see
# docs/latency.md, "GPU checks"). Writes every log and JSON into $OUT (default
# runs/device_check):
#   nvidia-smi.txt, pytest_fast_path.txt       the CUDA-graph tests (plans equal eager, re-capture)
#   gpu_<bundle>.json                          benchmark_latency --device cuda, eager vs cuda_graph
#   gpu_umaze_interleaved.json                 TD against DD in turn on the GPU
#   evaluate_hopper_<eager|auto>.json          evaluate.py on the GPU, eager and the default path
# Usage: bash training/device_check.sh   (CALLS=50 for a quick pass; DEVICE=cpu to try it here)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_check}
CALLS=${CALLS:-500}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0
run() {  # run a step, keep going if it fails, remember that one did
    echo "== $*"
    "$@" || { echo "FAILED ($?): $*"; status=1; }
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c 'import torch; print(torch.__version__, torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")'
run $PY -m pytest -q -p no:cacheprovider -rs test/test_fast_path.py > "$OUT/pytest_fast_path.txt" 2>&1
tail -n 8 "$OUT/pytest_fast_path.txt"
for bundle in pointmaze_umaze pointmaze_medium hopper; do
    run $PY tools/benchmark/benchmark_latency.py --bundle "models/$bundle" --device "$DEVICE" \
        --calls "$CALLS" --json "$OUT/gpu_$bundle.json"
done
# Decision Diffuser from the shipped UMaze bundle's networks (nothing trained).
run $PY -c "from diffusion_planner_ros.planning.bundle import derive_bundle
derive_bundle('models/pointmaze_umaze', 'decision_diffuser', '$OUT/umaze_dd')"
run $PY tools/benchmark/benchmark_latency.py --bundle models/pointmaze_umaze --device "$DEVICE" \
    --versus "decision_diffuser=$OUT/umaze_dd" --paths eager auto --calls 100 --warmup 10 \
    --json "$OUT/gpu_umaze_interleaved.json"
rm -rf "$OUT/umaze_dd"
# The same score on the GPU path: hopper needs MuJoCo (carried as wheels).
if $PY -c 'import mujoco' 2>/dev/null; then
    for backend in eager auto; do
        run $PY training/evaluate.py --bundle models/hopper --episodes 5 --seed 1000 \
            --device "$DEVICE" --backend "$backend" --json "$OUT/evaluate_hopper_$backend.json"
    done
else
    echo "mujoco is not importable: evaluate.py skipped"
fi
exit $status
