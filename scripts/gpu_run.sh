#!/usr/bin/env bash
# The GPU checks and timings in one go, each step under its own time limit so
# that one hang cannot use up the device time; the output is the GPU section
# of docs/performance.md.
#
#   bash scripts/gpu_run.sh [LOG_DIR] [STEPS]
#
# STEPS picks a subset by name (default: all): tests ratios stem flow e2e first
# profile asv.  Python is ``python3`` unless PYTHON says otherwise.
#
# The asv step (the whole suite's GPU rows) takes about 4 minutes, the other
# steps about 3. scripts/reduce_kernel.py times the reduction kernel alone and
# its tuning variants (one minute).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-.}
STEPS=${2:-"tests ratios stem flow e2e first profile asv"}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$LOG"

step() {  # step NAME SECONDS COMMAND...: run when NAME is in STEPS, log to LOG/NAME.log
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    echo "=== $name ($(date +%T), limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG/$name.log"
    echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
$PY -c "import flowtie_fast as ft, cupy, torch; print('gpu_available', ft.gpu_available(), \
'cupy', cupy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
step tests 200 $PY -m pytest -q -s -m gpu -rs -p no:cacheprovider tests
step ratios 120 $PY -m scripts.ratios --backend gpu --repeats 30 --sizes 256 1024 2048
step stem 60 $PY -m scripts.ratios --stem --backend gpu
step flow 90 bash -c "$PY -m scripts.ratios --flow --backend gpu --sizes 256 1024 && \
    $PY -m scripts.ratios --flow --backend gpu --sizes 256 --precision bfloat16 && \
    $PY -m scripts.ratios --flow --backend gpu --sizes 256 --model fast --precision bfloat16 && \
    $PY -m scripts.ratios --flow --backend gpu --sizes 256 --model ensemble"
step e2e 90 $PY scripts/end_to_end.py --backend gpu --repeats 5
step first 60 $PY scripts/first_call.py --backend gpu --methods tie flowtie
step profile 60 $PY scripts/profile_stages.py --backend gpu
# asv needs a git checkout: a device copy may come without one.
case " $STEPS " in *" asv "*)
    [ -d .git ] || { git init -q -b main && git add -A && \
        git -c user.name=device -c user.email=device@localhost commit -qm "device copy"; } ;;
esac
# The whole suite, GPU rows only (--quick: one sample each); results beside the logs.
step asv 300 bash -c "asv machine --yes >/dev/null && FLOWTIE_ASV_BACKENDS=gpu \
    asv run --python=same --quick --show-stderr; cp -r .asv/results '$LOG/asv-results'"
exit 0
