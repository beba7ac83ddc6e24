"""Which FAISS build this environment holds: `python -m index.faiss_build` prints it as one JSON object.

faiss-cpu and faiss-gpu install the same `faiss/` package folder (the same `_swigfaiss` and `libfaiss` files; the
GPU wheel adds `_gpu_build.py`), so with both installed the build you import depends on install order, and removing
either one deletes files the other needs. The project installs exactly one of them through its `cpu` or `gpu`
extra (the Makefile picks `gpu` where `nvidia-smi` exists, `FAISS=cpu|gpu` overrides it, and it uninstalls the
other build first); this check refuses an environment holding both or neither.
"""
from __future__ import annotations

import json
from importlib import metadata

from common.cli import run
from common.errors import UserError

BUILDS = ("faiss-cpu", "faiss-gpu")
# CUDA-suffixed wheels of the GPU build (faiss-gpu-cu12, ...) write the same folder too
_GPU_PREFIX = "faiss-gpu-"


def installed_builds(names=None) -> list[str]:
    """The FAISS distributions installed (normalised names), from `names` or the environment's metadata."""
    if names is None:
        names = [d.metadata["Name"] or "" for d in metadata.distributions()]
    found = {n.lower().replace("_", "-") for n in names}
    return sorted(n for n in found if n in BUILDS or n.startswith(_GPU_PREFIX))


def check_builds(builds: list[str]) -> str:
    """The single FAISS build, or UserError naming what to do."""
    if not builds:
        raise UserError("no FAISS build installed: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA machine)")
    if len(builds) > 1:
        raise UserError(f"{' and '.join(builds)} are all installed and write the same faiss/ folder: "
                        f"pip uninstall -y {' '.join(builds)}, then pip install -e '.[cpu]' or '.[gpu]'")
    return builds[0]


def describe() -> dict:
    build = check_builds(installed_builds())
    import faiss

    # the CPU build has get_num_gpus too (it answers 0); only a GPU build has StandardGpuResources
    has_gpu_code = hasattr(faiss, "StandardGpuResources")
    return {"distribution": build, "version": metadata.version(build), "faiss_version": faiss.__version__,
            "gpu_code": has_gpu_code, "gpus": int(faiss.get_num_gpus()) if has_gpu_code else 0}


def main(argv=None) -> int:
    print(json.dumps(describe()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
