"""Session-wide real services: one local Ray cluster, one S3-protocol server (moto) on loopback."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Ray's own variables (auth mode, loopback) are left to cluster.runtime.init_ray, as in a user's fresh process:
# setting them here would hide what an entry point does without them (tests/test_ray_runtime.py).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/stground/torch_extensions"))


def shared_path(*parts: str) -> pathlib.Path:
    """A file under ../shared; skips (with the reason) only where ../shared is absent, as in a user's clone."""
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is absent (it ships beside the project in CI only)")
    return SHARED.joinpath(*parts)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray for the whole session (starting Ray costs seconds).

    Depends on s3_server so Ray workers inherit the loopback S3 settings through the runtime env."""
    from cluster.runtime import init_ray

    ray = init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on loopback; yields its endpoint URL.

    STG_STORAGE_OPTIONS points every fsspec s3:// access (and Ray workers, via cluster.runtime) at it.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in ("STG_STORAGE_OPTIONS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["STG_STORAGE_OPTIONS"] = json.dumps(
        {"endpoint_url": endpoint, "key": "testing", "secret": "testing", "use_listings_cache": False}
    )
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh bucket on the loopback S3 server; yields its s3:// URL."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing", skip_instance_cache=True)
    name = f"test-{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    yield f"s3://{name}"


def tree_digest(root) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (what 'every byte as it was' compares)."""
    import hashlib

    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell gives an entry point: this checkout first on the path, no session Ray."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


# a user's other Ray app: `ray.init(include_dashboard=True)`, up until its stdin closes
NEIGHBOUR = ("import ray, sys; ray.init(include_dashboard=True, num_cpus=1); "
             "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()")


@contextlib.contextmanager
def neighbour_ray(env: dict | None = None):
    """A second local Ray head with a dashboard (on 8265 where free), started in its own process with the caller's
    environment (so the same Ray temp dir), as a user's other Ray app would; yields its GCS address once its
    dashboard serves."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=env or user_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd="/")
    try:
        gcs = proc.stdout.readline().strip()
        assert gcs, "the neighbouring Ray did not start"
        yield gcs
    finally:
        proc.stdin.close()  # it shuts its Ray down and exits
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
