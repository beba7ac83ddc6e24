"""common.heap: with the allocator setting the index drivers make, a freed large array leaves the process."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import sys
import numpy as np
from common.heap import return_large_frees

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("RssAnon:"))

if sys.argv[1] == "set":
    assert return_large_frees()
base, small = anon(), []
for _ in range(6):  # a driver's pattern: a shard-sized array made and freed, small objects kept between
    big = np.ones(2 << 20)  # 16 MB
    small.append(np.ones(1000))
    del big
print(anon() - base)
"""


def _held(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_freed_shard_sized_arrays_leave_the_process():
    with_setting, default = _held("set"), _held("default")
    assert with_setting < 2.0, with_setting
    assert default - with_setting > 8.0, (default, with_setting)  # the setting is what makes the difference
