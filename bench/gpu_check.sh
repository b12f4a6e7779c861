#!/usr/bin/env bash
# One-shot GPU check (bench/bench_gpu.py says what each part measures). From the repo root:
#
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --prepare # here, once: .gpu_carry/ and .whl/ (reaches PyPI)
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --smoke   # here, on CPU: tiny sizes, 6-10 minutes on 2 cores
#   bash bench/gpu_check.sh                                   # on the GPU machine, ~5 minutes on an H200
#
# Device call: carry [".whl", ".gpu_carry"], command `bash bench/gpu_check.sh`, timeout_s 600 (the default parts'
# timeouts add up to 555 s; the wheels' install, nvidia-smi and the summary take about 20 s more).
# Writes $OUT/<part>.json, $OUT/gpu_check.json (every part's file, the ratios across parts, the environment) and
# $OUT/gpu_check.log (every part's full output); OUT defaults to outputs/gpu_check. The device tool brings back 8
# files at most: the 6 default parts' files, gpu_check.json and the log. A part added through PARTS is the 9th, which
# may be left behind; gpu_check.json holds it all the same. Each part runs in its own process under its own timeout,
# so one failure does not stop the rest.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=${1:-}

if [ "$MODE" = "--prepare" ]; then
    # what travels beside the working tree (~50 MB of the call's 64 MiB), ignored by git: the data and an fp16
    # MiniLM, mrc_cli at c62c0a9 for the old_trainer part (no git history travels), and the wheels of the packages
    # mrc_cli needs that the GPU machine lacks, at this venv's versions, for its Python 3.12
    set -e
    grep -qxF /.gpu_carry/ .git/info/exclude 2>/dev/null || printf '/.gpu_carry/\n/.whl/\n' >>.git/info/exclude
    "$PY" bench/bench_gpu.py --prepare
    rm -rf .gpu_carry/old_trainer .whl
    mkdir -p .gpu_carry/old_trainer .whl
    git archive c62c0a9 mrc_cli | tar -x -C .gpu_carry/old_trainer
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        $("$PY" -c "from importlib.metadata import version
print(*(f'{n}=={version(n)}' for n in ('datasets', 'evaluate', 'dill', 'multiprocess', 'nltk', 'defusedxml')))")
    du -sh .gpu_carry .whl
    exit 0
fi

SMOKE=$MODE
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
        || { echo "gpu_check: installing .whl/ failed (made by: bash bench/gpu_check.sh --prepare)"; exit 1; }
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

# part:timeout in seconds, in running order: kernels first (the MFU figures read its peak), minilm before
# eval_agreement (which evaluates its checkpoint), bert_base before old_trainer (its ratio). Expected on an H200
# (2026-12-01 part times, scaled by the runs each part now has; a part's own process start included): kernels 15 s,
# bert_base 95 s, recipe 70 s, syncs 25 s, minilm 45 s, eval_agreement 35 s: about 4.8 minutes. The default parts'
# timeouts add up to 555 s.
ALL="kernels:45 bert_base:220 recipe:90 syncs:45 minilm:95 eval_agreement:60 old_trainer:90 resume:100"
# PARTS="syncs bert_base" runs only those; old_trainer and resume (measured on 2026-12-01) run only when named
PARTS=${PARTS:-kernels bert_base recipe syncs minilm eval_agreement}
for spec in $ALL; do
    [[ " $PARTS " == *" ${spec%%:*} "* ]] || continue
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
