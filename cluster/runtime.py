"""Connecting to Ray: a given cluster address, or a local single-node Ray (the embedded default).

Token authentication stays on (Ray >= 2.60 writes ~/.ray/auth_token for a local head). A local Ray binds to
loopback only. Variables the workers need (storage options, DeepSpeed accelerator, extension cache) are passed
through the runtime env so remote tasks see what the driver sees.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import sys

log = logging.getLogger(__name__)

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
# Ray reads this once, when `ray` is first imported: "0" makes a head take 127.0.0.1 as its node address, and
# every server of the node (GCS, raylet, object manager, agents) then listens on loopback only.
_LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process (runtime_env worker_process_setup_hook). Ray Train's placement-group
    cleaner asks the State API whether the controller is alive; the State API lives in the dashboard, which a
    local Ray starts without, so every check logs "Failed to query Ray Train Controller actor state" as a
    warning. Without the dashboard that check can never succeed: its logger is set to errors only."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _loopback_only() -> None:
    """Make the local head bind loopback, whether or not `ray` was imported before this call."""
    os.environ[_LOOPBACK_VAR] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        # imported already (by a library, or an earlier import of ray.train): the value read at import is the
        # machine-address default, and services.get_node_ip_address consults this module attribute at call time
        constants.ENABLE_RAY_CLUSTER = False


def _speak_token_auth() -> None:
    """RAY_AUTH_MODE=token for this process, also when `ray` was imported before this call: Ray reads the mode
    into its config at import (an entry point that imports ray.train first would otherwise keep the import-time
    default, "disabled", and be refused by the head it just started)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        if not is_token_auth_enabled():
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()


def _token_auth_for_local_head() -> None:
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode != "token":
        # an inherited RAY_AUTH_MODE=disabled would start a head that anyone on the machine can drive
        log.warning("RAY_AUTH_MODE=%s ignored for the local Ray: token authentication stays on", mode)
    _speak_token_auth()


def is_loopback(host: str) -> bool:
    host = host.rsplit(":", 1)[0].strip("[]") if host.count(":") == 1 or host.startswith("[") else host
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to `address` (or RAY_ADDRESS); start a local Ray when neither is set. Returns the ray module."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        if os.environ.get("RAY_AUTH_MODE", "token") == "token":
            _speak_token_auth()  # a cluster's own mode applies; ours is token unless the user says otherwise
    else:
        _loopback_only()
        _token_auth_for_local_head()
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": worker_env(), "worker_process_setup_hook": "cluster.runtime.quiet_worker_logs"}
    if address:
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, **kwargs)
        node = ray.util.get_node_ip_address()
        if not is_loopback(node):  # a bug (a Ray release that reads the address another way), never a user error
            ray.shutdown()
            raise RuntimeError(f"the local Ray took the non-loopback node address {node}; refusing to run on it")
    return ray
