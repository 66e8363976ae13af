#!/usr/bin/env bash
# The fault table of docs/results.md: faults injected by hand into a finished tiny demo, the outcome of each.
#
#   syllablelm demo --tiny --workdir BASE                 # once, with the checkout to test
#   bash benchmarks/fault_table.sh CHECKOUT BASE OUT      # prints one markdown row per fault (5-10 minutes)
#
# CHECKOUT is the repository whose code runs (put first on PYTHONPATH, so an older commit checked out with
# `git worktree add /tmp/before COMMIT` runs with this virtual environment); BASE is a finished tiny demo made by that
# code; every fault works on a copy of it under OUT. The tests inject the same faults through SYLLABLELM_FAULT
# (tests/test_faults.py); this script uses only what a user can do: bad files, damaged shards, kill -9, SIGTERM.
set -uo pipefail
python -c "import torch, lightning" 2>/dev/null || { echo "run it in the project's environment (. .venv/bin/activate)" >&2; exit 2; }
CODE=$(realpath "$1"); BASE=$(realpath "$2"); OUT=$(realpath -m "$3")
rm -rf "$OUT"; mkdir -p "$OUT"; cd "$OUT"   # not a checkout: `python -m` puts the working directory on sys.path first
export PYTHONPATH="$CODE" HF_HUB_OFFLINE=1
S=(python -m experiments.cli)
row() {  # fault | exit status | the last line it printed
  local last; last=$(printf '%s\n' "$3" | grep -v '^\s*$' | grep -v 'Warning\|warn(\|--debug' | tail -1 | cut -c1-200)
  echo "| $1 | $2 | ${last//|/\\|} |" | tee -a "$OUT/table.md"
}
fresh() {  # a copy of BASE without the stages from SylBoost (or from $2) on
  local w=$OUT/$1; cp -a "$BASE" "$w"; sed -i "s#$BASE#$w#g" "$w"/configs/*.yaml
  if [ "${2:-}" = sylboost ]; then
    rm -rf "$w"/runs/boundaries/iter_1 "$w"/runs/boundaries/iter_2 "$w"/runs/sylboost "$w"/runs/units \
      "$w"/runs/speechlm "$w"/runs/tokenizer.ckpt* "$w"/runs/evaluate.json "$w"/runs/scores.json "$w"/report.* "$w"/figures
    for s in sylboost quantize units speechlm evaluate; do rm -f "$w/logs/$s.done" "$w/logs/$s.done.json"; done
  fi
  echo "$w"
}
echo "| fault | exit | what the user sees (last line) |" > "$OUT/table.md"; echo "|---|---|---|" >> "$OUT/table.md"

# ---- bad audio: NaN, inf, 0-sample and 0-byte WAVs beside the good files of the test split (at most six)
python - "$BASE/data/synth/test" "$OUT/audio" <<'PY'
import shutil, sys, pathlib, numpy as np, soundfile as sf
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]); out.mkdir(parents=True)
good = sorted(src.rglob("*.flac"))[:6]
for p in good: shutil.copy(p, out / p.name)
w, sr = sf.read(good[0], dtype="float32")
nan, inf = w.copy(), w.copy(); nan[1000:1100] = np.nan; inf[2000:2010] = np.inf
sf.write(out / "nan.wav", nan, sr, subtype="FLOAT"); sf.write(out / "inf.wav", inf, sr, subtype="FLOAT")
sf.write(out / "empty.wav", np.zeros(0, np.float32), sr, subtype="FLOAT"); (out / "zero_bytes.wav").write_bytes(b"")
PY
good=$(ls "$OUT"/audio/*.flac | wc -l)
for bad in nan inf empty zero_bytes; do
  mkdir -p "$OUT/in_$bad"; cp "$OUT"/audio/*.flac "$OUT/audio/$bad.wav" "$OUT/in_$bad/"
  o=$("${S[@]}" tokenize --checkpoint "$BASE/runs/tokenizer.ckpt" --input "$OUT/in_$bad" --output "$OUT/tok_$bad.jsonl" \
      --device cpu 2>&1); st=$?
  row "tokenize: $good good files + $bad.wav (lines written: $([ -f "$OUT/tok_$bad.jsonl" ] && wc -l < "$OUT/tok_$bad.jsonl" || echo none))" $st "$o"
done
mkdir -p "$OUT/only_zero"; cp "$OUT/audio/zero_bytes.wav" "$OUT/only_zero/"
o=$("${S[@]}" tokenize --checkpoint "$BASE/runs/tokenizer.ckpt" --input "$OUT/only_zero" --output "$OUT/tok_only.jsonl" \
    --device cpu 2>&1); st=$?
row "tokenize: only a 0-byte file (output: $([ -f "$OUT/tok_only.jsonl" ] && echo "$(stat -c %s "$OUT/tok_only.jsonl") bytes" || echo none))" $st "$o"
o=$("${S[@]}" units --checkpoint "$BASE/runs/tokenizer.ckpt" --data "$OUT/in_nan" --out "$OUT/units_nan" --device cpu \
    --manifest-cache "$OUT/cache" 2>&1); st=$?
row "units: $good good files + nan.wav" $st "$o"
o=$("${S[@]}" labels --data "$OUT/in_inf" --out "$OUT/labels_inf" --num-clusters 8 --fit-hours 0.01 \
    --manifest-cache "$OUT/cache" 2>&1); st=$?
row "labels (MFCC): $good good files + inf.wav" $st "$o"

# ---- damaged stores under a finished demo, then the same demo command again
for case in truncated_unit_shard bitflipped_boundary_v1 deleted_boundary_v2_shard; do
  w=$(fresh "demo_$case")
  case $case in
    truncated_unit_shard) f=$(ls "$w"/runs/units/iter_0/shard-*.npz | head -1); truncate -s $(( $(stat -c %s "$f") / 2 )) "$f";;
    bitflipped_boundary_v1) f=$(ls "$w"/runs/boundaries/iter_1/shard-*.npz | head -1)
      python -c "import sys; b = bytearray(open(sys.argv[1], 'rb').read()); b[len(b) // 2] ^= 0x10; open(sys.argv[1], 'wb').write(b)" "$f";;
    deleted_boundary_v2_shard) rm "$w"/runs/boundaries/iter_2/shard-*.npz;;
  esac
  o=$(timeout 1200 "${S[@]}" demo --tiny --workdir "$w" 2>&1); st=$?
  rows=$(python -c "import json, sys; r = json.load(open(sys.argv[1])); print(len(r['stages']), 'stage rows,', 'header total', r.get('total_seconds'), 's')" "$w/report.json" 2>/dev/null)
  row "demo rerun, $case (report: $rows)" $st "$o"
done
w=$(fresh fit_truncated_unit_shard); f=$(ls "$w"/runs/units/iter_0/shard-*.npz | head -1); truncate -s $(( $(stat -c %s "$f") / 2 )) "$f"
o=$(cd "$w" && timeout 600 "${S[@]}" fit --config configs/speechlm.yaml --trainer.fast_dev_run true 2>&1); st=$?
row "speechlm fit on a truncated unit shard ($(printf '%s\n' "$o" | wc -l) lines printed)" $st "$o"

# ---- kill -9 once boundary version 1 and SylBoost's last.ckpt exist, then the same command again
w=$(fresh demo_killed sylboost)
setsid "${S[@]}" demo --tiny --workdir "$w" > "$OUT/killed_first.log" 2>&1 &
for _ in $(seq 1 6000); do [ -f "$w/runs/boundaries/iter_1/manifest.json" ] && [ -f "$w/runs/sylboost/checkpoints/last.ckpt" ] && break; sleep 0.1; done
pkill -KILL -f "workdir $w"; pkill -KILL -f "$w/configs"; sleep 1
o=$(timeout 1200 "${S[@]}" demo --tiny --workdir "$w" 2>&1); st=$?
diff=$(python - "$BASE/report.json" "$w/report.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
n = 0
def walk(x, y):
    global n
    if isinstance(x, dict) and isinstance(y, dict):
        for k in set(x) | set(y): walk(x.get(k), y.get(k))
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for u, v in zip(x, y): walk(u, v)
    else: n += x != y
for k in ("stages", "baselines", "units", "lm_pairs", "checks", "significance"): walk(a.get(k), b.get(k))
f1 = lambda r: 100 * r["stages"]["SylBoost iteration 2"]["syllablelm_tuned"]["f1"]
print(f"{n} report values differ from the uninterrupted run; SylBoost iteration 2 F1 {f1(a):.1f} -> {f1(b):.1f}")
PY
)
row "kill -9 after boundary version 1 and last.ckpt, rerun: $diff" $st "$o"

# ---- SIGTERM to the demo while SylBoost runs
w=$(fresh demo_sigterm sylboost)
"${S[@]}" demo --tiny --workdir "$w" > "$OUT/sigterm.log" 2>&1 &
demo=$!
for _ in $(seq 1 600); do pgrep -f "$w/configs/sylboost.yaml" > /dev/null && break; sleep 0.2; done
sleep 8; kill -TERM $demo; wait $demo; st=$?; sleep 3
left=$(pgrep -f "$w/configs/sylboost.yaml" | wc -l); pkill -KILL -f "$w/configs" 2>/dev/null
row "SIGTERM to the demo during SylBoost: $left SylBoost processes left running 3 s later" $st "$(cat "$OUT/sigterm.log")"
