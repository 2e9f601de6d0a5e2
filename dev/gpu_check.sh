#!/usr/bin/env bash
# The GPU check: does training, chat and decoding work on this machine's GPUs, how fast, in how much
# memory? One script for 1-8 GPUs, no internet needed, under 5 minutes on one H100.
#
#   bash dev/gpu_check.sh                  # d20, speedrun.sh's GPU defaults, ~10 steps, every GPU
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_DEPTH=1 GPU_CHECK_STEPS=3 GPU_CHECK_SEQ_LEN=64 GPU_CHECK_VOCAB=512 \
#       GPU_CHECK_TOTAL_BATCH=1024 bash dev/gpu_check.sh               # dry run on CPU (the test does this)
#
# 1. data: reuses $GPU_CHECK_BASE_DIR (default ~/.cache/nanochat-gpu-check) if it holds shards and a
#    tokenizer; else builds the offline corpus from this interpreter's stdlib sources (nothing is
#    fetched; 31M characters, 12 s on 2 CPU cores) and trains a tokenizer on it (20M characters, 6 s).
# 2. base_train under torchrun at speedrun.sh's GPU settings (--device-batch-size=auto, 524,288
#    tokens per step, seq 2048), GPU_CHECK_STEPS steps; its step lines give tok/s, MFU, peak memory.
# 3. chat_cli on that checkpoint (one reply), then the decode benchmark when dev/bench_decode.py exists.
# 4. a summary: per stage its wall time, and for training the median tok/s, MFU and peak memory.
#
# Overrides: GPU_CHECK_DEPTH (20), GPU_CHECK_STEPS (10), GPU_CHECK_DEVICE (cuda|cpu, default cuda
# when present), GPU_CHECK_NPROC (every GPU; 1 on CPU), GPU_CHECK_BATCH (auto), GPU_CHECK_SEQ_LEN
# (2048), GPU_CHECK_TOTAL_BATCH (524288), GPU_CHECK_VOCAB (65536), GPU_CHECK_TOK_CHARS (20000000).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
export NANOCHAT_BASE_DIR="${GPU_CHECK_BASE_DIR:-$HOME/.cache/nanochat-gpu-check}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
DEVICE="${GPU_CHECK_DEVICE:-$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
if [ "$DEVICE" = cuda ]; then
    NPROC="${GPU_CHECK_NPROC:-$($PY -c 'import torch; print(torch.cuda.device_count())')}"
    DTYPE=auto
else
    NPROC="${GPU_CHECK_NPROC:-1}"
    DTYPE=float32
fi
DEPTH="${GPU_CHECK_DEPTH:-20}"
STEPS="${GPU_CHECK_STEPS:-10}"
BATCH="${GPU_CHECK_BATCH:-auto}"
SEQ_LEN="${GPU_CHECK_SEQ_LEN:-2048}"
TOTAL_BATCH="${GPU_CHECK_TOTAL_BATCH:-524288}"
VOCAB="${GPU_CHECK_VOCAB:-65536}"
TOK_CHARS="${GPU_CHECK_TOK_CHARS:-20000000}"
TAG="gpu_check_d$DEPTH"
LOGS="$NANOCHAT_BASE_DIR/gpu_check_logs"
mkdir -p "$LOGS"
SUMMARY=()

stage() {  # stage NAME COMMAND... : run, log, time; stop the check with the log's path on failure
    local name="$1"; shift
    echo "[gpu_check] $name: $*"
    local t0=$SECONDS rc
    set +e
    "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "[gpu_check] FAILED: $name (exit $rc); its log is $LOGS/$name.log" >&2
        exit "$rc"
    fi
    SUMMARY+=("$(printf '%-12s %5ss' "$name" "$((SECONDS - t0))")")
}

echo "[gpu_check] device $DEVICE × $NPROC, depth $DEPTH, $STEPS steps, batch $BATCH, seq $SEQ_LEN, base dir $NANOCHAT_BASE_DIR"
$PY -c 'import torch; print(f"[gpu_check] torch {torch.__version__}, CUDA {torch.version.cuda}, " + ", ".join(
    f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
    for i in range(torch.cuda.device_count())))'

# --- 1. data and tokenizer, offline ---------------------------------------------------------------
if ! ls "$NANOCHAT_BASE_DIR"/base_data/*.parquet >/dev/null 2>&1; then
    stage corpus $PY -c 'import sysconfig
from nanochat.common import setup_logging
from nanochat.data.corpus import build_offline_corpus
setup_logging()
# 1,000-character documents: ~38k of them, 19 row groups per train shard, so each of 8 ranks gets some
build_offline_corpus(roots={"python-stdlib": sysconfig.get_paths()["stdlib"]}, max_doc_chars=1000)'
fi
if [ ! -f "$NANOCHAT_BASE_DIR/tokenizer/tokenizer.json" ]; then
    stage tokenizer $PY -m scripts.tok_train --vocab-size="$VOCAB" --max-chars="$TOK_CHARS" --source=offline
fi

# --- 2. pretraining steps at speedrun.sh's GPU settings -------------------------------------------
rm -rf "$NANOCHAT_BASE_DIR/base_checkpoints/$TAG"
stage base_train $PY -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m scripts.base_train \
    --depth="$DEPTH" --device-batch-size="$BATCH" --max-seq-len="$SEQ_LEN" --total-batch-size="$TOTAL_BATCH" \
    --num-iterations="$STEPS" --eval-every=-1 --eval-tokens="$((SEQ_LEN * NPROC * 4))" --sample-every=-1 \
    --model-tag="$TAG" --device-type="$DEVICE" --dtype="$DTYPE"

# --- 3. chat and decoding on that checkpoint ------------------------------------------------------
stage chat_cli $PY -m scripts.chat_cli -i base -g "$TAG" -p "The capital of France is" --max-tokens=32 \
    --device-type="$DEVICE"
if [ -f dev/bench_decode.py ]; then
    stage bench_decode $PY -m dev.bench_decode --source base --model-tag "$TAG" --batch-sizes 1 8 \
        --max-new-tokens 64 --device "$DEVICE"
fi

# --- 4. summary -----------------------------------------------------------------------------------
echo
echo "[gpu_check] summary (logs in $LOGS)"
printf '  %s\n' "${SUMMARY[@]}"
$PY - "$LOGS/base_train.log" <<'EOF'
import re, statistics, sys
text = open(sys.argv[1]).read()
auto = re.search(r"--device-batch-size auto: .*", text)
steps = re.findall(r"step (\d+)/\d+ .*?tok/s ([\d,]+) \| mfu ([\d.na]+)%.*?(?:\| mem ([\d.]+)GiB)?$", text, re.M)
timed = steps[1:] or steps  # the first step includes compilation
tok = statistics.median(float(t.replace(",", "")) for _, t, _, _ in timed)
mfu = statistics.median(float(m) for _, _, m, _ in timed)
mems = [float(g) for *_, g in steps if g]  # only CUDA runs log memory
mem = f"{max(mems):.1f} GiB per GPU" if mems else "n/a (not CUDA)"
print(f"  base_train   {len(steps)} steps; after the first: median {tok:,.0f} tok/s, MFU {mfu:.1f}%, "
      f"peak memory {mem}")
if auto:
    print(f"  {auto.group(0)}")
EOF
echo "[gpu_check] OK"
