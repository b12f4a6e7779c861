#!/usr/bin/env bash
# One-shot GPU check (bench/bench_gpu.py says what each part measures). From the repo root:
#
#   bash bench/gpu_check.sh                                   # on the GPU machine, ~3-8 minutes
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --smoke   # here, on CPU: tiny sizes
#
# Device call: carry [".whl", ".gpu_carry"], command `bash bench/gpu_check.sh`, timeout_s 600.
# Writes $OUT/<part>.json, $OUT/gpu_check.json and $OUT/gpu_check.log (every part's full output); OUT defaults to
# outputs/gpu_check. Each part runs in its own process under its own timeout, so one failure does not stop the rest;
# the part timeouts add up to 9.5 minutes at most (about 3.5 minutes on an H200, 2026-12-01).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMOKE=${1:-}
export OUT=${OUT:-outputs/gpu_check}
export GPU_CHECK_WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
rm -rf "$GPU_CHECK_WORK" "$OUT"/*.json "$OUT"/gpu_check.log
mkdir -p "$GPU_CHECK_WORK"
LOG=$OUT/gpu_check.log

# the packages mrc_cli needs that the GPU machine lacks (datasets, evaluate, dill, multiprocess, nltk, defusedxml)
if ! "$PY" -c "import datasets, evaluate, nltk" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

{
    [ "$SMOKE" = "--smoke" ] || nvidia-smi
    "$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0), '| transformers',
transformers.__version__)"
} 2>&1 | tee -a "$LOG"

# mrc_cli as it was before the GPU-ready trainer, for the side-by-side part (carried: no git history travels)
[ -d .gpu_carry/old_trainer/mrc_cli ] || git archive c62c0a9 mrc_cli | tar -x -C .gpu_carry/old_trainer 2>/dev/null \
    || echo "gpu_check: no .gpu_carry/old_trainer (make it here: mkdir -p .gpu_carry/old_trainer && git archive c62c0a9 mrc_cli | tar -x -C .gpu_carry/old_trainer)"

# part and its timeout in seconds (matmul first: bert_base reads its peak)
# PARTS="syncs bert_base" runs only those (a part reads the files of parts run before it in the same $OUT)
ALL="matmul:40 bert_base:120 old_trainer:90 syncs:50 minilm:110 resume:100 eval_agreement:60"
for spec in $ALL; do
    [ -z "${PARTS:-}" ] || [[ " $PARTS " == *" ${spec%%:*} "* ]] || continue
    part=${spec%%:*} limit=${spec##*:}
    [ "$SMOKE" = "--smoke" ] && limit=$((limit * 6))  # 2 CPU cores
    echo "== $part (timeout ${limit}s)"
    start=$(wc -l <"$LOG")
    begun=$(date +%s)
    timeout -s KILL "$limit" "$PY" bench/bench_gpu.py --part "$part" $SMOKE >>"$LOG" 2>&1
    code=$?
    echo "$part $code" >>"$GPU_CHECK_WORK/exit_codes"
    # the part's last lines: its RESULT line, or the end of its traceback
    tail -n +"$((start + 1))" "$LOG" | grep -v '^\s*$' | tail -n "$([ "$code" = 0 ] && echo 1 || echo 12)"
    echo "-- $part: exit $code after $(( $(date +%s) - begun ))s" | tee -a "$LOG"
done

"$PY" bench/bench_gpu.py --summary $SMOKE 2>&1 | tee -a "$LOG"
