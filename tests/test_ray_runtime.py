"""The embedded local Ray, started the way a user starts it (a fresh process, no test-set Ray variables):
every server it opens listens on loopback, and token authentication is on even when the caller's environment
says RAY_AUTH_MODE=disabled."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import ROOT, neighbour_ray, user_env

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
    # the shell's Ray temp dir stays (where this machine keeps its Ray records); every other Ray variable goes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_TMPDIR"}
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



# --- neighbours: the clients inside a job resolve to the job's own cluster -------------------------------------------

ASK = r"""
import json, sys
from cluster.runtime import init_ray
ray = init_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class Asker:
    def ask(self, actor_id):
        from ray._private import services
        from ray.util.state import get_actor
        from ray.util.state.exception import RayStateApiException
        out = {}
        try:  # what any Ray client given no address takes for "the current cluster"
            out["bootstrap"] = services.canonicalize_bootstrap_address_or_die(None)
        except Exception as e:
            out["bootstrap"] = repr(e)
        try:  # Ray Train's placement-group cleaner asks this of its controller every second
            out["actor"] = "alive" if get_actor(actor_id, timeout=10) else "no such actor"
        except RayStateApiException:
            out["actor"] = "no State API"
        except Exception as e:
            out["actor"] = repr(e)
        return out

asker = Asker.remote()
print("READY", flush=True)
sys.stdin.readline()  # the neighbour is up
out = ray.get(asker.ask.remote(asker._actor_id.hex()))
print(json.dumps({"own": ray.get_runtime_context().gcs_address, **out}))
"""


def test_clients_inside_a_job_ask_its_own_cluster_beside_a_neighbour_with_a_dashboard(tmp_path):
    """The root of issue 29's killed runs: inside a job, a State API or Ray client given no address found "the
    current cluster" by scanning the machine's processes (several Rays: an error) and the API server from its
    cluster's record, which for a Ray without dashboard names 8265 where another Ray's dashboard answers for its
    own cluster ("no such actor": Ray Train then removed the run's placement group)."""
    env = user_env()
    job = subprocess.Popen([sys.executable, "-c", ASK], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "READY", job.stderr.read()[-3000:]
        with neighbour_ray(env) as neighbour:
            out, err = job.communicate("\n", timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-3000:]
    out = json.loads(out.strip().splitlines()[-1])
    assert out["own"] != neighbour
    assert out["bootstrap"] == out["own"], out
    # our local Ray serves no State API: the call fails at once; the neighbour's answer is never taken
    assert out["actor"] in ("alive", "no State API"), out


# --- the local default is local, whatever the machine records ---------------------------------------------------------

LOCAL = r"""
import json, sys
from cluster.runtime import init_ray
ray = init_ray(num_cpus=1) if sys.argv[1] == "num_cpus" else init_ray()
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}))
"""

JOBS = "import ray, sys; ray.init(address=sys.argv[1]); from ray._private.state import jobs; print(len(jobs()))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_tmp():
    """A Ray temp dir of this test's own (short: Ray's socket paths must fit 107 bytes)."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _record(ray_tmp: str) -> str:
    return os.path.join(ray_tmp, "ray", "ray_current_cluster")


def test_local_default_ignores_a_stale_record_of_a_dead_head(ray_tmp, tmp_path):
    """A `ray start` head that died without `ray stop` leaves its address recorded; the local default starts its
    own Ray (it used to fail: "When connecting to an existing cluster, num_cpus ... must not be provided")."""
    dead = f"127.0.0.1:{_free_port()}"
    os.makedirs(os.path.dirname(_record(ray_tmp)))
    with open(_record(ray_tmp), "w") as f:
        f.write(dead)
    r = subprocess.run([sys.executable, "-c", LOCAL, "num_cpus"], cwd=tmp_path, env=user_env(RAY_TMPDIR=ray_tmp),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["gcs"] != dead
    with open(_record(ray_tmp)) as f:
        assert f.read() == dead  # the record is left as it was


def test_local_default_starts_its_own_beside_a_live_recorded_head(ray_tmp, tmp_path):
    """A user's own `ray start --head` for another project: the local default neither joins it (without
    num_cpus it used to, silently) nor fails on it; the other cluster sees no job of ours."""
    import psutil

    env = user_env(RAY_TMPDIR=ray_tmp)
    loopback = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the head and its check's driver on loopback only
    port = _free_port()
    # its other listening ports free ones too: Ray's fixed defaults (client server 10001, agent 52365) may be held by
    # a third Ray on the machine (another test session's)
    head_log = open(tmp_path / "head.log", "w+")
    head = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head",
                             f"--port={port}", f"--ray-client-server-port={_free_port()}",
                             f"--dashboard-agent-listen-port={_free_port()}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", "--include-dashboard=false", "--block"],
                            env=loopback, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not os.path.exists(_record(ray_tmp)) and head.poll() is None:
            time.sleep(0.2)
        head_log.seek(0)
        assert head.poll() is None, "the foreign head did not start: " + head_log.read()[-3000:]
        with open(_record(ray_tmp)) as f:
            foreign = f.read().strip()
        assert foreign.endswith(f":{port}")
        r = subprocess.run([sys.executable, "-c", LOCAL, "default"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout.strip().splitlines()[-1])["gcs"] != foreign
        with open(_record(ray_tmp)) as f:
            assert f.read().strip() == foreign
        # the only job the foreign cluster ever saw is this check's own
        jobs = subprocess.run([sys.executable, "-c", JOBS, foreign], cwd=tmp_path, env=loopback, capture_output=True,
                              text=True, timeout=300)
        assert jobs.returncode == 0, jobs.stderr[-3000:]
        assert jobs.stdout.strip().splitlines()[-1] == "1"
    finally:
        family = psutil.Process(head.pid).children(recursive=True) if head.poll() is None else []
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes; never `ray stop` (it
        try:                              # stops every Ray of this user on the machine)
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        head_log.close()
