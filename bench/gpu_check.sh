#!/usr/bin/env bash
# The one prepared GPU check (issue 23): card, CUDA tests, throughput eager/compiled, the CPU's
# accuracy mini-protocol on CUDA, --jobs 1 against --jobs 4, the smoke pipeline's time; one summary
# (summary.md, summary.json) in $OUT if set, else results/gpu_check/. Needs no network: first run
# `bash bench/gpu_prepare.sh` where there is one (data slices -> .gpu_data/, wheels -> .whl/).
#
#   bash bench/gpu_check.sh                     # every step, about 8 minutes on one H100/H200
#   bash bench/gpu_check.sh --only smoke jobs   # only these steps (a rerun of what ran out of time)
#
# Without a GPU it exits 2 with one line. Details: bench/README.md ("The GPU check").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "error: bench/gpu_check.sh needs a CUDA GPU and PyTorch sees none here; run it on a machine with one (check: $PY -c 'import torch; print(torch.cuda.is_available())' prints True)" >&2
  exit 2
fi
if compgen -G ".whl/*.whl" >/dev/null; then  # packages the GPU machine lacks (fpdf2, ...), carried as wheels
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py "$@"
