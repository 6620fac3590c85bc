#!/usr/bin/env bash
# One call on the device machine: install the carried farl_edge wheel (no network), then
#   farl-edge bench --preset gpu --data-root benchmarks/gpu_check/data --budget-s 400 [your flags]
# under a hard timeout. All measuring is farl-edge bench's; flags given here win over the preset.
# Usage (repository root): bash benchmarks/gpu_check/run.sh [farl-edge bench flags]
#   bash benchmarks/gpu_check/run.sh --model farl-small-300w     # one model
#   bash benchmarks/gpu_check/run.sh --dry-run                   # the plan only (any machine)
# Environment: OUT (report folder; default benchmarks/gpu_check/out), PRESET (gpu | mac; default gpu),
# BUDGET_S (default 400), TIMEOUT_S (default 470), BENCH_CACHE (artifacts; default benchmarks/gpu_check/cache),
# WHEELS (carried wheels; default benchmarks/gpu_check/wheels), PYTHON (default python3).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REPORT="${OUT:-$HERE/out}"
WHEELS="${WHEELS:-$HERE/wheels}"
PY="${PYTHON:-python3}"
mkdir -p "$REPORT"
{
  echo "== $(date -u +%FT%TZ) farl-edge bench --preset ${PRESET:-gpu} on $(hostname)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: not available"
  "$PY" --version
} | tee "$REPORT/environment.txt"

# The project from the carried wheel, without dependencies (nothing can be downloaded there);
# if that is not possible the source tree itself is used (PYTHONPATH).
if ls "$WHEELS"/farl_edge-*.whl >/dev/null 2>&1 && \
   "$PY" -m pip install --no-index --no-deps --force-reinstall -q "$WHEELS"/farl_edge-*.whl 2>"$REPORT/pip.log"; then
  echo "installed $(ls "$WHEELS"/farl_edge-*.whl)" | tee -a "$REPORT/environment.txt"
else
  echo "wheel not installed (see pip.log); using the source tree" | tee -a "$REPORT/environment.txt"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
# other carried wheels (e.g. tensorrt-rtx bindings when they fit the carry limit), best effort
for w in "$WHEELS"/*.whl; do
  case "$w" in *farl_edge-*|*'*'*) ;; *) "$PY" -m pip install --no-index --no-deps -q "$w" 2>>"$REPORT/pip.log" || true ;; esac
done

cd "$ROOT"
args=(bench --preset "${PRESET:-gpu}" --out "$REPORT" --cache "${BENCH_CACHE:-$HERE/cache}" --budget-s "${BUDGET_S:-400}")
[ -d "$HERE/data" ] && args+=(--data-root "$HERE/data")
limit=()
command -v timeout >/dev/null 2>&1 && limit=(timeout --signal=TERM "${TIMEOUT_S:-470}")  # macOS has none
"${limit[@]}" "$PY" -m farl_edge.cli "${args[@]}" "$@" 2>&1 | tee "$REPORT/bench.log"
rc=${PIPESTATUS[0]}
echo "farl-edge bench exit status $rc" | tee -a "$REPORT/bench.log"
exit "$rc"
