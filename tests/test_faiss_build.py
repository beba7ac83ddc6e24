"""The environment holds exactly one FAISS build (index/faiss_build.py), checked the way a user runs it."""
import json
import subprocess
import sys

import pytest

from common.errors import UserError
from index import faiss_build


def test_the_installed_build_imports_and_reports_its_gpus():
    # a fresh interpreter, as `python -m index.faiss_build` runs from a shell
    out = subprocess.run([sys.executable, "-m", "index.faiss_build"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["distribution"] in ("faiss-cpu", "faiss-gpu") or info["distribution"].startswith("faiss-gpu-")
    assert isinstance(info["gpus"], int) and info["gpus"] >= 0
    if info["distribution"] == "faiss-cpu":
        assert info["gpu_code"] is False and info["gpus"] == 0
    import faiss
    assert info["faiss_version"] == faiss.__version__


def test_exactly_one_build_is_installed():
    assert len(faiss_build.installed_builds()) == 1, faiss_build.installed_builds()


@pytest.mark.parametrize("names, builds", [
    (["numpy", "faiss-cpu"], ["faiss-cpu"]),
    (["faiss_gpu", "torch"], ["faiss-gpu"]),
    (["faiss-gpu-cu12", "faiss-cpu"], ["faiss-cpu", "faiss-gpu-cu12"]),
    (["faiss-cpu", "faiss-gpu"], ["faiss-cpu", "faiss-gpu"]),
    (["numpy"], []),
])
def test_installed_builds_from_names(names, builds):
    assert faiss_build.installed_builds(names) == builds


def test_two_builds_or_none_are_refused():
    with pytest.raises(UserError, match="faiss-cpu and faiss-gpu are all installed"):
        faiss_build.check_builds(["faiss-cpu", "faiss-gpu"])
    with pytest.raises(UserError, match="no FAISS build installed"):
        faiss_build.check_builds([])
    assert faiss_build.check_builds(["faiss-gpu"]) == "faiss-gpu"
