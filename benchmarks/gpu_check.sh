#!/usr/bin/env bash
# The prepared GPU check (issue 15, item 5; benchmarks/gpu_check.py): config/voc12.yaml's networks on the shared
# real photographs at VOC resolution, bounded steps, <= 5 min. On the device machine, from the repository root:
#   bash benchmarks/gpu_check.sh            # writes results/benchmarks/gpu_check.json
# then `python benchmarks/run_all.py --doc` here shows it in docs/performance.md. Extra arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec timeout 300 "$PY" benchmarks/gpu_check.py "$@"
