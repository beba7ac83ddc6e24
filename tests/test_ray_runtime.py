"""The embedded local Ray, started the way a user starts it (a fresh process, no test-set Ray variables):
every server it opens listens on loopback, and token authentication is on even when the caller's environment
says RAY_AUTH_MODE=disabled."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAD = r"""
import json, os, subprocess, sys
if sys.argv[1] == "imported":
    import ray  # a library imported ray before the entry point asked for a local Ray
import psutil
from cluster.runtime import init_ray
ray = init_ray(num_cpus=1)
ray.get(ray.remote(lambda: os.getpid()).remote())   # a worker process is up too
def listening(p):
    try:  # a short-lived Ray helper can exit between the listing and the read
        return [c.laddr.ip for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError):
        return []
me = psutil.Process()
listen = sorted({ip for p in [me] + me.children(recursive=True) for ip in listening(p)})
gcs = ray.get_runtime_context().gcs_address
clients = {}
for name, mode in (("disabled", "disabled"), ("token", "token")) if sys.argv[1] == "fresh" else ():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = mode
    code = "import ray, sys; ray.init(address=sys.argv[1]); print('CONNECTED')"
    r = subprocess.run([sys.executable, "-c", code, gcs], env=env, capture_output=True, text=True, timeout=120)
    clients[name] = "CONNECTED" in r.stdout
print(json.dumps({"gcs": gcs, "node": ray.util.get_node_ip_address(), "listen": listen, "clients": clients}))
ray.shutdown()
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _user_env(auth: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if auth is not None:
        env["RAY_AUTH_MODE"] = auth  # inherited from somewhere: must not switch authentication off
    env["PYTHONPATH"] = str(ROOT)
    return env


# fresh: nothing imported ray; imported: a library did (cluster.pretrain imports ray.train before Ray starts),
# with the auth variable inherited as disabled or not set at all (Ray's import-time default is then "disabled")
@pytest.mark.parametrize("ray_imported,auth", [("fresh", "disabled"), ("imported", "disabled"), ("imported", None)])
def test_local_ray_binds_loopback_and_keeps_token_auth(ray_imported, auth, tmp_path):
    r = subprocess.run([sys.executable, "-c", HEAD, ray_imported], cwd=tmp_path, env=_user_env(auth),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["gcs"].rsplit(":", 1)[0] == "127.0.0.1" and out["node"] == "127.0.0.1"
    assert out["listen"], "no listening socket found: the check would pass vacuously"
    assert all(_loopback(ip) for ip in out["listen"]), out["listen"]  # GCS, raylet, object manager, agents
    assert ("token authentication stays on" in r.stderr) == (auth == "disabled")
    if ray_imported == "fresh":
        # the head refuses a client without the token and takes one with it (so the refusal is the auth check)
        assert out["clients"] == {"disabled": False, "token": True}


def test_is_loopback():
    from cluster.runtime import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.1:6379") and is_loopback("localhost")
    assert not is_loopback("192.0.2.2") and not is_loopback("10.0.0.1:6379")
