#!/usr/bin/env bash
# The GPU measurements in one run, each step under its own time limit, so that a short loan of a GPU machine gives
# every number the README and benchmarks/NOTES.md lack: SD 1.5 and SDXL at real size (random weights) in half
# precision, (a) one call per image vs (b) one batched call vs (c) negprompt; SD 1.5 in float32 against float16;
# SD3 and FLUX.1 at real size; the classroom with batching off and on. Results (JSON and logs) go to OUT.
#
#     bash benchmarks/gpu_check.sh OUT            # on a machine with a CUDA GPU (about 9 minutes in all)
#     bash benchmarks/gpu_check.sh OUT --dry-run  # the same steps on the CPU with tiny models (a minute): the script
#                                                 # itself is checked before a GPU is spent on it
#
# A step that fails or runs out of time is logged and the next one runs; the exit status is the number of steps
# that failed. Nothing here downloads a model: every pipeline is built from its configuration with random weights.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT [--dry-run]}
PY=${PYTHON:-python}  # the interpreter with negprompt's requirements (default: python on the PATH)
mkdir -p "$OUT"
failed=0

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output in OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s): $*"
  local start=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - start))s; last line: $(tail -n 1 "$OUT/$name.log")"
  else
    echo "   FAILED (status $?) after $((SECONDS - start))s; see $OUT/$name.log"; tail -n 5 "$OUT/$name.log"
    failed=$((failed + 1))
  fi
}

if [[ "${2:-}" == "--dry-run" ]]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  step speed-unet 120 "$PY" benchmarks/speed.py --device cpu --smoke --json "$OUT/speed-unet.json"
  step speed-fp32 120 "$PY" benchmarks/speed.py --device cpu --smoke --dtype float32 --json "$OUT/speed-fp32.json"
  step speed-transformers 120 "$PY" benchmarks/speed.py --device cpu --configs tiny_sd3,tiny_flux --steps 2 \
    --negatives 2 --repeats 1 --json "$OUT/speed-transformers.json"
  step classroom 240 "$PY" benchmarks/classroom.py --compare-batching --clients 4 --within 2
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
  "$PY" -c "import torch, diffusers; print(torch.__version__, torch.version.cuda, diffusers.__version__)" \
    >>"$OUT/gpu.txt" 2>&1
  step speed-unet 200 "$PY" benchmarks/speed.py --device cuda --configs sd15,sdxl --negatives 8 --steps 30 \
    --repeats 3 --json "$OUT/speed-unet.json"
  step speed-fp32 90 "$PY" benchmarks/speed.py --device cuda --configs sd15 --dtype float32 --negatives 8 \
    --steps 30 --repeats 2 --levers none --json "$OUT/speed-fp32.json"
  step speed-transformers 180 "$PY" benchmarks/speed.py --device cuda --configs sd3,flux --negatives 4 --steps 28 \
    --repeats 2 --levers none --json "$OUT/speed-transformers.json"
  step classroom 90 "$PY" benchmarks/classroom.py --compare-batching
fi
echo "steps failed: $failed"
exit "$failed"
