#!/usr/bin/env bash
# farl-edge GPU check: install the carried wheel (no network), then run gpu_check.py within ~8 minutes.
# Usage (repository root, on a machine with an NVIDIA GPU): bash benchmarks/gpu_check/run.sh [gpu_check.py args]
# The report lands in $OUT (the device tool's output folder) or benchmarks/gpu_check/out.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REPORT="${OUT:-$HERE/out}"
mkdir -p "$REPORT"
PY="${PYTHON:-python3}"
{
  echo "== $(date -u +%FT%TZ) gpu check on $(hostname)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: not available"
  "$PY" --version
} | tee "$REPORT/environment.txt"

# The project from the carried wheel, without dependencies (nothing can be downloaded there);
# if that is not possible the source tree itself is used (PYTHONPATH).
if ls "$HERE"/wheels/farl_edge-*.whl >/dev/null 2>&1 && \
   "$PY" -m pip install --no-index --no-deps --force-reinstall -q "$HERE"/wheels/farl_edge-*.whl 2>"$REPORT/pip.log"; then
  echo "installed $(ls "$HERE"/wheels/farl_edge-*.whl)" | tee -a "$REPORT/environment.txt"
else
  echo "wheel not installed (see pip.log); using the source tree" | tee -a "$REPORT/environment.txt"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
# other carried wheels (e.g. tensorrt-rtx bindings when they fit the carry limit), best effort
for w in "$HERE"/wheels/*.whl; do
  case "$w" in *farl_edge-*|*'*'*) ;; *) "$PY" -m pip install --no-index --no-deps -q "$w" 2>>"$REPORT/pip.log" || true ;; esac
done

cd "$ROOT"
timeout --signal=TERM 470 "$PY" "$HERE/gpu_check.py" --out "$REPORT" --budget-s 400 "$@" 2>&1 | tee "$REPORT/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check exit status $rc" | tee -a "$REPORT/gpu_check.log"
exit "$rc"
