#!/usr/bin/env bash
# The GPU check in one call: benchmarks/gpu/check.sh [--cpu] [OUTDIR]   (OUTDIR: $OUT)
#
# For a GPU machine with no network that gets this working tree (tracked files and the
# carried, git-ignored .whl/ folder: benchmarks/gpu/fetch_wheels.sh fills it) and has
# Python, torch with CUDA, triton, jax with CUDA, numpyro, pytest, pluggy, tqdm and
# opt-einsum, but not pyro-ppl. Phases, each under its own time limit, each writing its
# results into OUTDIR as soon as it ends, all of it stopped at 6 minutes:
#   setup      the carried wheels installed into /tmp/site (pip --no-index --no-deps)
#   versions   nvidia-smi, python, torch, CUDA, triton, jax, pyro; a C compiler and the
#              Python headers (triton builds with them); a smoke torch.compile on the device
#   cuda_tier  tests/test_cuda.py on the device: cuda_tier.log, cuda_tier.xml (JUnit)
#   benchmark  benchmarks/gpu/bench_gpu.py torch: bench_torch.json
#   numpyro    NumPyro on the GPU in its own process: bench_numpyro.json
#   report     bench_gpu.md, bench_gpu.json (the table)
# summary.txt has one line per phase: "<phase>: <ok|skipped: why|failed ...|timeout ...>
# (<seconds> s)". --cpu: the dry run on this machine's CPU (tiny sizes, no wheels, the
# tier with PYRO_SVI_EXT_TEST_DEVICE=cpu and the eager backend); tests/test_gpu_check.py
# runs it. --only=cuda_tier,benchmark reruns those phases (setup, versions and report
# always run). The package is imported from the tree (PYTHONPATH), never installed; the
# tier loads the pytest plugin with -p (no entry points there), other plugins not at all.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CPU=0
OUTDIR=""
ONLY=""  # --only=cuda_tier,benchmark: those phases (and setup, versions, report) only
for arg in "$@"; do
    case "$arg" in
        --cpu) CPU=1 ;;
        --only=*) ONLY=${arg#--only=} ;;
        -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "check.sh: unknown option $arg" >&2; exit 2 ;;
        *) OUTDIR=$arg ;;
    esac
done
OUTDIR=${OUTDIR:-${OUT:-}}
if [ -z "$OUTDIR" ]; then
    echo "check.sh: no OUTDIR given and \$OUT is not set" >&2
    exit 2
fi
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY=$OUTDIR/summary.txt
: > "$SUMMARY"

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ "$CPU" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then
    PY=$ROOT/.venv/bin/python
else
    PY=$(command -v python3 || command -v python)
fi
SITE=${PYRO_SVI_EXT_SITE:-/tmp/site}
if [ "$CPU" = 1 ]; then  # this environment's pyro, the package from the tree
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONDONTWRITEBYTECODE=1
# JAX takes most of the GPU's memory at its first use unless told not to
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "$CPU" = 1 ]; then
    DEVICE=cpu BACKEND=eager CPUFLAG=--cpu
    BUDGETS=(30 60 90 90 60 20)     # setup versions cuda_tier benchmark numpyro report
else
    DEVICE=cuda BACKEND=inductor CPUFLAG=
    BUDGETS=(40 50 130 105 45 15)
fi
TOTAL=${CHECK_TOTAL_S:-360}
START=$(date +%s)
cd "$ROOT" || exit 2

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# phase NAME BUDGET_S COMMAND...: run it under min(BUDGET_S, what the hard stop leaves),
# its output in OUTDIR/NAME.log, and append its summary line
phase() {
    local name=$1 budget=$2
    shift 2
    case "$name" in setup|versions|report) ;; *)
        if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
            echo "$name: skipped: not in --only=$ONLY (0.0 s)" >> "$SUMMARY"; return
        fi ;;
    esac
    local left=$(( TOTAL - ($(date +%s) - START) ))
    if [ "$left" -lt 5 ]; then
        echo "$name: skipped: the ${TOTAL} s hard stop was reached (0.0 s)" >> "$SUMMARY"
        return
    fi
    [ "$budget" -gt "$left" ] && budget=$left
    local t0 rc status
    t0=$(now_ms)
    timeout -s INT -k 10 "$budget" "$@" > "$OUTDIR/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timeout after $budget s" ;;
        *) status="failed (exit $rc; see $name.log)" ;;
    esac
    if [ -f "$OUTDIR/$name.xml" ]; then  # a test phase: its counts from the JUnit file
        status="$status [$("$PY" -c 'import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot().find("testsuite").attrib
print("{tests} tests: {failures} failed, {errors} errors, {skipped} skipped".format(**s))' "$OUTDIR/$name.xml" 2>&1 | tail -1)]"
    fi
    echo "$name: $status ($(awk -v ms=$(( $(now_ms) - t0 )) 'BEGIN{printf "%.1f", ms/1000}') s)" \
        >> "$SUMMARY"
}

skip() {  # skip NAME WHY
    echo "$1: skipped: $2 (0.0 s)" >> "$SUMMARY"
}

install_wheels() {
    set -e
    shopt -s nullglob
    local wheels=("$ROOT"/.whl/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        if "$PY" -c "import pyro" 2>/dev/null; then
            echo "no .whl/: using the installed pyro"; return 0
        fi
        echo "no .whl/ folder and no pyro-ppl: run benchmarks/gpu/fetch_wheels.sh here and"
        echo "carry .whl (run(..., carry=['.whl']))"; return 1
    fi
    mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --no-index --no-deps --quiet --target "$SITE" "${wheels[@]}"
    else  # pure-Python wheels are zip files of the site-packages layout
        for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE"; done
    fi
    ls "$SITE"
}

versions() {
    echo "== nvidia-smi"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    echo "== python packages, the device, C compiler and headers, a smoke compile"
    DEVICE=$DEVICE "$PY" "$ROOT/benchmarks/gpu/versions.py"
}
# phases run in a child bash under `timeout`: it needs these
export -f install_wheels versions
export ROOT PY SITE DEVICE

# --- setup -----------------------------------------------------------------------------
if [ "$CPU" = 1 ]; then
    skip setup "--cpu runs on this environment's packages"
else
    phase setup "${BUDGETS[0]}" bash -c install_wheels
fi

# --- versions and a smoke compile ------------------------------------------------------
phase versions "${BUDGETS[1]}" bash -c versions

# --- the CUDA tier -----------------------------------------------------------------------
PLUGIN=()
if [ -f "$ROOT/_pyro_svi_ext_pytestplugin.py" ]; then
    PLUGIN=(-p _pyro_svi_ext_pytestplugin)
elif [ -f "$ROOT/pyro_svi_ext/pytest_plugin.py" ]; then
    PLUGIN=(-p pyro_svi_ext.pytest_plugin)
fi
phase cuda_tier "${BUDGETS[2]}" env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
    PYRO_SVI_EXT_TEST_DEVICE=$DEVICE PYRO_SVI_EXT_TEST_BACKEND=$BACKEND \
    "$PY" -m pytest tests/test_cuda.py "${PLUGIN[@]}" -m cuda -v -rs -p no:cacheprovider \
    --durations=15 --junitxml="$OUTDIR/cuda_tier.xml"

# --- the benchmark -------------------------------------------------------------------------
# the bench's own budget ends it before the phase's timeout would
bench_budget=$(( BUDGETS[3] - 15 ))
phase benchmark "${BUDGETS[3]}" "$PY" benchmarks/gpu/bench_gpu.py torch --out "$OUTDIR" \
    $CPUFLAG --budget-s "$bench_budget"
if [ -n "$ONLY" ] && [[ ",$ONLY," != *",numpyro,"* ]]; then
    skip numpyro "not in --only=$ONLY"
elif "$PY" -c "import numpyro, jax" >/dev/null 2>&1; then
    jax_platform=cuda
    [ "$CPU" = 1 ] && jax_platform=cpu
    phase numpyro "${BUDGETS[4]}" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
        JAX_PLATFORMS=$jax_platform "$PY" benchmarks/gpu/bench_gpu.py numpyro \
        --out "$OUTDIR" $CPUFLAG --budget-s $(( BUDGETS[4] - 10 ))
else
    skip numpyro "numpyro not installed"
fi
phase report "${BUDGETS[5]}" "$PY" benchmarks/gpu/bench_gpu.py report --out "$OUTDIR"

echo "== summary ($OUTDIR, $(( $(date +%s) - START )) s)"
cat "$SUMMARY"
[ -f "$OUTDIR/bench_gpu.md" ] && { echo; cat "$OUTDIR/bench_gpu.md"; }
grep -E "^(FAILED|ERROR)|passed|failed" "$OUTDIR/cuda_tier.log" 2>/dev/null | tail -15
exit 0
