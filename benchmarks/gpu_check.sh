#!/usr/bin/env bash
# Everything this project checks on one CUDA GPU, in one go (for a lent GPU machine; CI has none):
#   1. the CUDA tests (tests/test_cuda.py: min-cuts, LossPred, SylBoost fit + regeneration, bf16 decoder),
#   2. `syllablelm demo --tiny --accelerator gpu` (every stage on the GPU; its report.json/report.md),
#   3. benchmarks/gpu_smoke.py (paper-sized random networks in bf16: throughput, MFU and peak memory per stage),
#   4. benchmarks/generation.py (batch-1 decoding: eager vs static vs CUDA graph vs compiled, side by side),
#   5. benchmarks/matmul_peak.py (the bf16 matmul rate MFU is also reported against),
#   6. benchmarks/train_speed.py (teacher, SylBoost and SpeechLM training steps: today's settings against fused
#      AdamW and compiled layers, side by side),
#   7. benchmarks/continuation_speed.py (issue 29: the paper-size interleaved vocoder LM's fine tokens/s in bf16,
#      KV cache against none; never measured on a GPU yet),
# then one table (benchmarks/gpu_table.py -> OUT_DIR/table.md).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [WORK_DIR]
#
# Each part has its own time limit (TESTS_S, DEMO_S, SMOKE_S, GEN_S, TRAIN_S seconds) and a failure does not stop the
# next; PARTS="tests smoke" (or PARTS=gen,matmul) runs a subset. The default (all but the demo) takes about 5 minutes
# (the limits cap it at 7.5). OUT_DIR gets the logs and results (at most 12 small files), WORK_DIR (default
# /tmp/gpu_check) the demo's workdir.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [WORK_DIR]}
work=${2:-/tmp/gpu_check}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
$py -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee "$out/env.txt"
nproc | tee -a "$out/env.txt"

parts=" ${PARTS:-matmul gen train tests smoke speech} "  # demo (about 3 minutes more) on request: PARTS=demo
parts=${parts//,/ }
if [[ $parts == *" tests "* ]]; then
start=$(date +%s)
timeout "${TESTS_S:-90}" $py -m pytest -q -m gpu tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -25
echo "tests: rc ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/env.txt"
fi

if [[ $parts == *" demo "* ]]; then
start=$(date +%s)
timeout "${DEMO_S:-200}" $py -m experiments.cli demo --workdir "$work/demo" --tiny --accelerator gpu > "$out/demo.log" 2>&1
echo "demo: rc $? after $(( $(date +%s) - start )) s" | tee -a "$out/env.txt"
tail -5 "$out/demo.log"
cp "$work/demo/report.json" "$work/demo/report.md" "$out/" 2>/dev/null || tail -n 40 "$work"/demo/logs/*.log
fi

if [[ $parts == *" smoke "* ]]; then
start=$(date +%s)
timeout "${SMOKE_S:-120}" $py benchmarks/gpu_smoke.py --out "$out/gpu_smoke.json" > "$out/smoke.log" 2>&1
echo "smoke: rc $? after $(( $(date +%s) - start )) s" | tee -a "$out/env.txt"
tail -20 "$out/smoke.log"
fi

if [[ $parts == *" matmul "* ]]; then
timeout 60 $py benchmarks/matmul_peak.py --json "$out/matmul.json" 2>&1 | tail -2
fi

if [[ $parts == *" gen "* ]]; then
start=$(date +%s)
timeout "${GEN_S:-60}" $py benchmarks/generation.py --size base --json "$out/generation.json" > "$out/gen.log" 2>&1
echo "gen: rc $? after $(( $(date +%s) - start )) s" | tee -a "$out/env.txt"
tail -8 "$out/gen.log"
fi

if [[ $parts == *" train "* ]]; then
start=$(date +%s)
timeout "${TRAIN_S:-120}" $py benchmarks/train_speed.py --json "$out/train_speed.json" > "$out/train.log" 2>&1
echo "train: rc $? after $(( $(date +%s) - start )) s" | tee -a "$out/env.txt"
tail -9 "$out/train.log"
fi

if [[ $parts == *" speech "* ]]; then
start=$(date +%s)
timeout "${SPEECH_S:-120}" $py benchmarks/continuation_speed.py --size paper --device cuda --dtype bfloat16 \
    --json "$out/continuation_speed.json" > "$out/speech.log" 2>&1
echo "speech: rc $? after $(( $(date +%s) - start )) s" | tee -a "$out/env.txt"
tail -6 "$out/speech.log"
fi

$py benchmarks/gpu_table.py "$out"
