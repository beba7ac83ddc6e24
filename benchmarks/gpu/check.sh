#!/usr/bin/env bash
# The one command of docs/gpu_check.md on a bare GPU machine: if open_clip is not importable, unpack the wheels of
# benchmarks/gpu/wheels.sh (a wheel is a zip of the installed files; no pip, no index needed) into a folder on
# PYTHONPATH, then run benchmarks/gpu/check.py with the arguments given.
#   bash benchmarks/gpu/check.sh [--out FILE] [benchmarks.gpu.check arguments]      # WHEELS=DIR (default .whl)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if ! $PY -c "import open_clip" 2>/dev/null; then
  WHEELS=${WHEELS:-.whl}
  tag=$($PY -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  site=${STG_WHEEL_SITE:-/tmp/stg-wheels-$tag}
  mkdir -p "$site"
  shopt -s nullglob
  wheels=("$WHEELS"/open_clip_torch-*.whl "$WHEELS"/ftfy-*.whl "$WHEELS"/wcwidth-*.whl "$WHEELS"/regex-*-"$tag"-*.whl)
  if [ ${#wheels[@]} -lt 4 ]; then
    echo "error: open_clip is not importable and $WHEELS lacks its wheels for $tag (bash benchmarks/gpu/wheels.sh)" >&2
    exit 2
  fi
  for w in "${wheels[@]}"; do $PY -m zipfile -e "$w" "$site"; done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec $PY -m benchmarks.gpu.check "$@"
