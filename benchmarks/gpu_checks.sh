#!/usr/bin/env bash
# The GPU checks recorded in docs/benchmarks.md, in one run (a lent GPU machine is short-lived):
#   1. the shipped models built on the GPU with their committed commands (`tscam-explain pretrained build`),
#   2. trainer throughput: our loop (bf16 autocast, fused AdamW, loader workers) against a plain fp32 loop,
#   3. the demo (bench on the shipped models) on the GPU, with the models of step 1.
# Each step's results are packed into $OUT/results.tar.gz as soon as it ends, so a run cut short keeps them.
#
#   OUT=out/gpu bash benchmarks/gpu_checks.sh          (STEPS="build demo" runs only those steps)
set -uo pipefail
STEPS=${STEPS:-build bench_train demo}
OUT=${OUT:-out/gpu}
PY=${PYTHON:-python3}
WORK=$OUT/work
mkdir -p "$WORK"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$WORK/steps.txt"; }
pack() {
  (cd "$WORK" && tar -czf ../results.tar.gz --exclude='data' --exclude='runs/*/*.pt' \
     $(ls -d steps.txt gpu.txt bench_train.txt build.txt build_*.log demo.log runs demo pretrained 2>/dev/null))
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$WORK/gpu.txt"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
  >> "$WORK/gpu.txt" 2>&1
nproc >> "$WORK/gpu.txt"
cat "$WORK/gpu.txt"

for name in $([[ $STEPS == *build* ]] && echo vit-synth tscam-synth trt-synth); do
  log "build $name"
  start=$SECONDS
  $PY -m tscam_explain.cli pretrained build "$name" --device cuda --data-dir "$WORK/data" --runs-dir "$WORK/runs" \
    --out-dir "$WORK/pretrained" > "$WORK/build_$name.log" 2>&1
  status=$?
  tail -3 "$WORK/build_$name.log" | tee -a "$WORK/build.txt"
  echo "$name: exit $status, wall $((SECONDS - start)) s" | tee -a "$WORK/build.txt"
  pack
done

if [[ $STEPS == *bench_train* ]]; then
  log "bench_train"
  $PY benchmarks/bench_train.py --device cuda --batch 128 --steps 20 --rounds 5 > "$WORK/bench_train.txt" 2>&1
  tail -15 "$WORK/bench_train.txt"
  pack
fi
[[ $STEPS == *demo* ]] || exit 0

log "demo on the GPU with the models just built"
cp "$WORK"/pretrained/*-synth.* tscam_explain/pretrained/ 2>/dev/null
start=$SECONDS
$PY -m tscam_explain.cli demo --device cuda --out "$WORK/demo" --no-progress > "$WORK/demo.log" 2>&1
echo "demo: exit $?, wall $((SECONDS - start)) s" | tee -a "$WORK/steps.txt"
tail -12 "$WORK/demo.log"
rm -rf "$WORK/demo/data"
pack
log "done"
