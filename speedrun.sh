#!/usr/bin/env bash
# The whole nanochat pipeline, start to end, sized to this machine:
#   install -> data -> tokenizer (train, eval) -> base (train, loss, CORE) -> mid (train, eval)
#   -> SFT (train, eval) -> optional RL (RUN_RL=1) -> report card.
#
#   bash speedrun.sh                        # 8 GPUs: the d20 reference run (~561M params, 20 tokens/param)
#                                           # 1-7 GPUs: the same with gradient accumulation
#                                           # no GPU: a small preset that finishes in under an hour on 2 cores
#   DEPTH=12 DEVICE_BATCH_SIZE=16 bash speedrun.sh     # overrides (GPU default: auto, the largest that fits)
#   DATA_SOURCE=offline WANDB_RUN=myrun RUN_RL=1 bash speedrun.sh
#   FORCE=1 bash speedrun.sh                # redo stages that already finished
#   SCALE=micro bash speedrun.sh            # every stage a few steps (the end-to-end test uses this)
#
# A finished stage leaves a marker under $NANOCHAT_BASE_DIR/speedrun/ holding its command; a re-run
# skips it when the command is the same (resume after a failure), unless FORCE=1. Logs of every
# stage are in $NANOCHAT_BASE_DIR/speedrun/logs/.
set -euo pipefail
cd "$(dirname "$0")"

export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
STATE="$NANOCHAT_BASE_DIR/speedrun"
mkdir -p "$STATE/logs"

# --- install ---------------------------------------------------------------------------------------
source dev/install.sh --quiet
PY="$UV run --no-sync python"

# --- size the run to the machine ------------------------------------------------------------------
NGPU="${NPROC:-$($PY -c 'import torch; print(torch.cuda.device_count())')}"
WANDB_RUN="${WANDB_RUN:-dummy}"
if [ "$NGPU" -ge 1 ]; then
    PRESET="gpu x$NGPU"
    DEPTH="${DEPTH:-20}"
    # auto: one real training step per try, from 64 down, until one fits in 90% of the card
    DEVICE_BATCH_SIZE="${DEVICE_BATCH_SIZE:-auto}"
    EVAL_BATCH_SIZE=16                      # no gradients: 16 × 2048 fits any card that trains d20
    DATA_SOURCE="${DATA_SOURCE:-auto}"
    NUM_SHARDS=240                          # ~24B characters: enough for d20 at 20 tokens/param
    VOCAB=65536
    TOK_CHARS=2000000000
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # one CPU thread per GPU process
    LAUNCH="$UV run --no-sync torchrun --standalone --nproc_per_node=$NGPU -m"
    BASE_ARGS="--depth=$DEPTH --device-batch-size=$DEVICE_BATCH_SIZE"
    BASE_EVAL_ARGS=""
    MID_ARGS="--device-batch-size=$DEVICE_BATCH_SIZE"
    SFT_ARGS="--device-batch-size=auto"
    CHAT_EVAL_ARGS=""
    RL_ARGS=""
else
    # CPU preset: every stage sized so the whole run stays under an hour on 2 cores (dev/LOG.md)
    PRESET="cpu"
    DEPTH="${DEPTH:-4}"
    DEVICE_BATCH_SIZE="${DEVICE_BATCH_SIZE:-8}"
    EVAL_BATCH_SIZE=$DEVICE_BATCH_SIZE
    DATA_SOURCE="${DATA_SOURCE:-offline}"
    NUM_SHARDS=8
    VOCAB=8192
    TOK_CHARS=200000000
    LAUNCH="$UV run --no-sync python -m"
    BASE_ITERS=${BASE_ITERS:-300} MID_ITERS=${MID_ITERS:-80} SFT_ITERS=${SFT_ITERS:-60}
    EVAL_N=50 CORE_N=20 EVAL_TOKENS=131072 COMPILE=on
    if [ "${SCALE:-}" = "micro" ]; then
        PRESET="cpu micro"; TOK_CHARS=5000000; BASE_ITERS=4; MID_ITERS=2; SFT_ITERS=2; EVAL_N=2; CORE_N=2
        EVAL_TOKENS=8192; COMPILE=off
    fi
    BASE_ARGS="--depth=$DEPTH --max-seq-len=512 --device-batch-size=$DEVICE_BATCH_SIZE --total-batch-size=16384 \
--num-iterations=$BASE_ITERS --eval-every=100 --eval-tokens=$EVAL_TOKENS --sample-every=-1 --save-every=100 --compile=$COMPILE"
    BASE_EVAL_ARGS="--max-per-task=$CORE_N"
    MID_ARGS="--device-batch-size=$DEVICE_BATCH_SIZE --total-batch-size=16384 --num-iterations=$MID_ITERS \
--eval-every=40 --eval-tokens=$EVAL_TOKENS --save-every=40 --compile=$COMPILE"
    SFT_ARGS="--device-batch-size=8 --target-examples-per-step=32 --num-iterations=$SFT_ITERS --eval-every=50 \
--eval-examples=64 --metrics-every=-1 --metrics-max-problems=$EVAL_N"
    CHAT_EVAL_ARGS="-x $EVAL_N --max-new-tokens=128"
    RL_ARGS="--num-steps=20 --examples-per-step=4 --num-samples=4 --max-new-tokens=96 --eval-every=10 \
--eval-examples=20 --eval-samples=2"
fi
echo "[speedrun] preset $PRESET: depth $DEPTH, data $DATA_SOURCE, base dir $NANOCHAT_BASE_DIR"

# --- stages ---------------------------------------------------------------------------------------
stage() {  # stage NAME COMMAND... : run unless already done with the same command
    local name="$1"; shift
    local marker="$STATE/$name.done" log="$STATE/logs/$name.log"
    if [ "${FORCE:-0}" != "1" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$*" ]; then
        echo "[speedrun] $name: already done, skipping (FORCE=1 to redo)"
        return 0
    fi
    echo "[speedrun] $name: $*"
    local t0=$SECONDS
    set +e
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "[speedrun] stage '$name' failed (exit $rc); its log is $log. Fix the cause and re-run" \
             "speedrun.sh: finished stages are skipped." >&2
        exit "$rc"
    fi
    echo "$*" > "$marker"
    echo "[speedrun] $name: done in $((SECONDS - t0))s"
}

if [ ! -f "$STATE/report_started" ] || [ "${FORCE:-0}" = "1" ]; then
    $PY -m nanochat.report reset
    touch "$STATE/report_started"
fi
stage data          $PY -m nanochat.data -n $NUM_SHARDS --source $DATA_SOURCE
stage identity      $PY -m dev.gen_identity
stage tok_train     $PY -m scripts.tok_train --vocab-size=$VOCAB --max-chars=$TOK_CHARS --source=$DATA_SOURCE
stage tok_eval      $PY -m scripts.tok_eval
stage base_train    $LAUNCH scripts.base_train $BASE_ARGS --run=$WANDB_RUN --resume
stage base_loss     $LAUNCH scripts.base_loss --device-batch-size=$EVAL_BATCH_SIZE --eval-tokens=${EVAL_TOKENS:-10485760}
stage base_eval     $LAUNCH scripts.base_eval $BASE_EVAL_ARGS
stage mid_train     $LAUNCH scripts.mid_train $MID_ARGS --run=$WANDB_RUN --resume
stage mid_eval      $LAUNCH scripts.chat_eval -i mid --report $CHAT_EVAL_ARGS
stage sft_train     $LAUNCH scripts.chat_sft $SFT_ARGS --run=$WANDB_RUN
stage sft_eval      $LAUNCH scripts.chat_eval -i sft --report $CHAT_EVAL_ARGS
if [ "${RUN_RL:-0}" = "1" ]; then
    stage rl_train  $LAUNCH scripts.chat_rl $RL_ARGS --run=$WANDB_RUN
    stage rl_eval   $LAUNCH scripts.chat_eval -i rl -a GSM8K --report $CHAT_EVAL_ARGS
fi
$PY -m nanochat.report generate --out "${REPORT_PATH:-report.md}"

echo
echo "[speedrun] done. Talk to your model:"
echo "  source .venv/bin/activate"
echo "  python -m scripts.chat_cli                 # in the terminal (-p \"question\" for one answer)"
echo "  python -m scripts.chat_web                 # in the browser at http://127.0.0.1:8000"
