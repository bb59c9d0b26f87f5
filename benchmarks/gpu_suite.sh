#!/usr/bin/env bash
# GPU part of the vispos benchmark suite (issue 8). One script, < 8 minutes on an H100/H200; results under $OUT.
#   run from the repository root:  OUT=/some/dir bash benchmarks/gpu_suite.sh
# Steps (each bounded by `timeout`, so one slow step cannot eat the others' time):
#   1. GPU tests of the fused paths (Triton RoPE vs reference, forward and gradients)   -> $OUT/gpu_tests.txt
#   2. RoPE apply, anchor shape B32 H12 N4096 D64 bf16 + Wan-like 3D, vs timm / eager / compiled -> $OUT/rope/
#   3. decomposed rel-pos attention, 32x32 and 64x64 tokens, B8 H12 D64 bf16 (time + peak memory) -> $OUT/relpos/
#   4. whole ViT-S/16 forward (batch 256, bf16 autocast) and dynamic-size APE                     -> $OUT/vit/
set -u
OUT=${OUT:-results/gpu_suite}
mkdir -p "$OUT"
PY=${PY:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, timm, triton; print(torch.__version__, timm.__version__, triton.__version__)"; } > "$OUT/env.txt" 2>&1
timeout 90 $PY -m pytest -q -m gpu tests/test_perf_paths.py -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests rc=$?" >> "$OUT/gpu_tests.txt"
timeout 180 $PY benchmarks/bench_all.py --device cuda --suite rope --min-time 0.3 --out "$OUT/rope" > "$OUT/rope.log" 2>&1
echo "rope rc=$?" >> "$OUT/rope.log"
timeout 120 $PY benchmarks/bench_all.py --device cuda --suite relpos --min-time 0.3 --out "$OUT/relpos" > "$OUT/relpos.log" 2>&1
echo "relpos rc=$?" >> "$OUT/relpos.log"
timeout 120 $PY benchmarks/bench_all.py --device cuda --suite vit --suite ape --min-time 0.5 --out "$OUT/vit" > "$OUT/vit.log" 2>&1
echo "vit rc=$?" >> "$OUT/vit.log"
tail -n 3 "$OUT"/*.txt "$OUT"/*.log
