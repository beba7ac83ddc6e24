#!/usr/bin/env bash
# The extra wheels benchmarks/gpu/check.py needs on a bare GPU machine (torch, torchvision, numpy, timm and
# huggingface_hub there; no package index): open_clip_torch and its pure-Python dependencies ftfy and wcwidth at
# constraints.txt's pins, and regex (compiled) for CPython 3.10-3.13 on x86_64 Linux. Run on a machine with PyPI;
# prints what it fetched and the total, which must stay under 64 MiB (docs/gpu_check.md).
#   bash benchmarks/gpu/wheels.sh [DIR]        # default DIR: .whl (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-.whl}
PIP=${PIP:-$( [ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip" )}
pin() { grep -i "^$1==" constraints.txt | head -1; }
mkdir -p "$DIR"
$PIP download -q --no-deps -d "$DIR" "$(pin open_clip_torch)" "$(pin ftfy)" "$(pin wcwidth)"
for v in 3.10 3.11 3.12 3.13; do
  plat=(--only-binary=:all: --python-version "$v" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux_2_28_x86_64)
  # the pinned regex where it supports this Python, else the newest release that does
  $PIP download -q --no-deps "${plat[@]}" -d "$DIR" "$(pin regex)" 2>/dev/null ||
    $PIP download -q --no-deps "${plat[@]}" -d "$DIR" regex
done
ls -l "$DIR"/*.whl | awk '{print $5, $9}'
total=$(cat "$DIR"/*.whl | wc -c)
echo "total_bytes $total ($(( total / 1048576 )) MiB; limit 64 MiB)"
[ "$total" -le $((64 * 1048576)) ]
