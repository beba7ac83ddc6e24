"""Connecting to Ray: a given cluster address, or a local single-node Ray (the embedded default).

Token authentication stays on (Ray >= 2.60 writes ~/.ray/auth_token for a local head). A local Ray binds to
loopback only. Variables the workers need (storage options, DeepSpeed accelerator, extension cache) are passed
through the runtime env so remote tasks see what the driver sees.
"""
from __future__ import annotations

import os

FORWARDED_ENV = (
    "STG_STORAGE_OPTIONS",
    "DS_ACCELERATOR",
    "TORCH_EXTENSIONS_DIR",
    "RAY_AUTH_MODE",
    "OMP_NUM_THREADS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to `address` (or RAY_ADDRESS); start a local Ray when neither is set. Returns the ray module."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": worker_env()}
    if address:
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
    else:
        # A single-node Ray must not advertise the machine's external interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, **kwargs)
    return ray
