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


def pin_own_cluster() -> None:
    """Runs in every Ray worker process of our jobs (runtime_env worker_process_setup_hook). A Ray client or
    State API client created without an address (Ray Train's placement-group cleaner and state actor are two)
    otherwise picks "the current cluster" by scanning the machine's processes for GCS servers, which finds every
    other user's Ray too: RAY_ADDRESS is set to this worker's own cluster (docs/cluster.md "Neighbours")."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def tasks_ahead(ray, num_cpus: float = 1) -> int:
    """How many tasks a driver keeps submitted ahead of what it has read back: twice what the cluster's CPUs run at
    once, so workers never wait on the driver while the object store holds a window of results, not all of them."""
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1) / num_cpus))


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


# Ray Train's state actor asks the State API every 30 s whether each run's controller lives; a local Ray serves no
# State API (below), so the question can never be answered there: the check is switched off for a local Ray.
_NO_STATE_API_ENV = {"RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0"}


def serves_state_api() -> bool:
    """False for the local Ray init_ray started (it runs without a dashboard, which is what serves Ray's State
    API); True for a given cluster, whose head normally runs one."""
    return not _started_local


_started_local = False


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to `address` (or RAY_ADDRESS); start a new local Ray when neither is set, whatever other Ray the
    machine holds or records. Returns the ray module."""
    global _started_local
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
    env = worker_env()
    if address:
        runtime_env = {"env_vars": env, "worker_process_setup_hook": "cluster.runtime.pin_own_cluster"}
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
        return ray
    # "local": a new cluster even where a `ray start` head is recorded on this machine (a user's own, or a dead
    # one's stale record), never joining it. No dashboard (it costs ~1 GB and a dozen processes); its record in
    # the GCS would still name the default port 8265, where another Ray's dashboard may answer for its own
    # cluster, so the record names port 0, where no server can listen, and a State API call fails at once.
    os.environ.update(_NO_STATE_API_ENV)
    env.update(_NO_STATE_API_ENV)
    runtime_env = {"env_vars": env, "worker_process_setup_hook": "cluster.runtime.pin_own_cluster"}
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, dashboard_port=0,
             runtime_env=runtime_env, **kwargs)
    _started_local = True
    node = ray.util.get_node_ip_address()
    if not is_loopback(node):  # a bug (a Ray release that reads the address another way), never a user error
        ray.shutdown()
        raise RuntimeError(f"the local Ray took the non-loopback node address {node}; refusing to run on it")
    return ray
