"""A local Ray (``search.tuner.init_ray`` without an address) is neither open to the network nor to token-less callers.

One module fixture starts a local Ray exactly as ``run_search.py run`` does (``init_ray(None, ...)``) in a
subprocess with its own HOME (so the token goes to <tmp>/home/.ray/auth_token, never the real ~/.ray) and its own
RAY_TMPDIR. Then:

- every listening socket of that Ray's processes (GCS, raylet, object manager, runtime-env agent, driver, workers)
  is bound to loopback, the GCS port in particular on neither 0.0.0.0 nor ``::``;
- the token file is private (0600 in a 0700 dir);
- a second driver from another process with the token hidden (an empty HOME, no RAY_AUTH_TOKEN/_PATH), or with a
  wrong token, cannot connect to ``127.0.0.1:<gcs port>`` and its task, which would write a file, never runs;
- a driver that has the token (RAY_AUTH_MODE=token, same HOME) can connect and its task writes the file: the
  refusals above are the token check, not a connection problem.

All traffic goes to 127.0.0.1: the clients run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, else Ray would rewrite
``127.0.0.1:<port>`` to the machine's outward address (where nothing of this Ray listens any more). Teardown ends
exactly the processes this module started (the fixture's process tree and the Ray processes whose command line
names its temp dir), by pid. ~15-25 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

_START = """
import json, os, sys
import ray
from search.tuner import init_ray
init_ray(None, 1)
node = ray._private.worker._global_node
info = {"gcs": ray.get_runtime_context().gcs_address, "node_ip": node.node_ip_address, "pid": os.getpid()}
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(info, f)
os.replace(tmp, sys.argv[1])
sys.stdin.read()  # until the test closes our stdin
ray.shutdown()
"""

_CLIENT = """
import sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0)
def write(path):
    with open(path, "w") as f:
        f.write("ran")
    return path

print("RAN", ray.get(write.remote(sys.argv[2]), timeout=60), flush=True)
"""


def _psutil():
    import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)
    import psutil

    return psutil


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS/RAY_AUTH_* from outside
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


class LocalRay:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rsec", dir="/tmp"))  # short: Ray's socket paths stay < 108 chars
        self.home = self.root / "home"
        self.home.mkdir()
        self.log = self.root / "driver.log"
        self.info_file = self.root / "info.json"
        self.proc: subprocess.Popen | None = None
        self.pids: dict[int, float] = {}  # pid -> create time (so a reused pid is never killed)

    def start(self, timeout: float = 120) -> dict:
        env = _base_env(self.home)
        env["RAY_TMPDIR"] = str(self.root / "t")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", _START, str(self.info_file)], env=env, cwd=REPO,
                                         stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.time() + timeout
        while not self.info_file.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"local Ray did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.2)
        self.info = json.loads(self.info_file.read_text())
        self.remember_pids()
        return self.info

    def remember_pids(self) -> set[int]:
        """The Ray processes this fixture started: the driver's tree and whatever names our temp dir."""
        psutil = _psutil()
        procs = []
        try:
            driver = psutil.Process(self.proc.pid)
            procs += [driver, *driver.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter(["cmdline"]):
            try:
                if str(self.root) in " ".join(p.info["cmdline"] or []):
                    procs += [p, *p.children(recursive=True)]
            except psutil.Error:
                pass
        for p in procs:
            try:
                self.pids[p.pid] = p.create_time()
            except psutil.Error:
                pass
        return {p.pid for p in procs}

    def stop(self) -> None:
        psutil = _psutil()
        if self.proc is not None and self.proc.poll() is None:
            self.remember_pids()
            try:
                self.proc.stdin.close()  # the driver calls ray.shutdown()
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for pid, created in sorted(self.pids.items()):  # whatever outlived ray.shutdown(): exactly ours, by pid
            try:
                if psutil.Process(pid).create_time() == created:
                    os.kill(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray():
    ray_ = LocalRay()
    try:
        ray_.start()
        yield ray_
    finally:
        ray_.stop()


def _client(gcs: str, home: Path, marker: Path, extra_env: dict[str, str] | None = None):
    env = _base_env(home)
    env["RAY_gcs_server_port_wait_time_s"] = "3"  # give up after a few tries (default 20, 1 s apart)
    # dial 127.0.0.1 as given: by default Ray rewrites a loopback address to the machine's outward one
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-c", _CLIENT, gcs, str(marker)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=90)


def test_local_ray_listens_on_loopback_only(local_ray):
    psutil = _psutil()
    host, port = local_ray.info["gcs"].rsplit(":", 1)
    assert host == "127.0.0.1" and local_ray.info["node_ip"] == "127.0.0.1", local_ray.info
    pids = local_ray.remember_pids()
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    gcs = [c for c in listening if c.laddr.port == int(port)]
    assert gcs, "nothing listens on the GCS port"
    assert not [c for c in gcs if c.laddr.ip in ("0.0.0.0", "::")], f"GCS bound on all interfaces: {gcs}"
    ours = [(c.laddr.ip, c.laddr.port, c.pid) for c in listening if c.pid in pids]
    names = {psutil.Process(p).name() for _, _, p in ours}
    assert {"gcs_server", "raylet"} <= names, ours  # the check covers the servers that matter
    open_ = [x for x in ours if x[0] not in LOOPBACK]
    assert not open_, f"Ray processes listening beyond loopback: {open_}"
    udp = [c for c in psutil.net_connections("udp") if c.pid in pids and c.laddr.ip not in LOOPBACK]
    assert not udp, udp


def test_token_file_is_private(local_ray):
    token = local_ray.home / ".ray" / "auth_token"
    assert token.is_file() and len(token.read_text().strip()) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("how", ["no_token", "wrong_token"])
def test_driver_without_the_token_is_refused(local_ray, tmp_path, how):
    """Another process, token hidden (empty HOME, no RAY_AUTH_TOKEN/_PATH) or wrong, cannot run a task."""
    home = tmp_path / "intruder-home"
    home.mkdir()
    marker = tmp_path / "pwned"
    extra = {} if how == "no_token" else {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    r = _client(local_ray.info["gcs"], home, marker, extra)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "RAN" not in r.stdout, f"a driver without the token ran a task:\n{out[-3000:]}"
    assert not marker.exists(), "the intruder's task wrote its file"
    assert "AuthenticationError" in out or "InvalidAuthToken" in out, out[-3000:]  # refused by the token check
    assert not list(home.rglob("auth_token")), "connecting must not mint a token for the intruder"


def test_driver_with_the_token_runs_a_task(local_ray, tmp_path):
    """The control: the same client with the run's token (its HOME, RAY_AUTH_MODE=token) gets through."""
    marker = tmp_path / "ok"
    r = _client(local_ray.info["gcs"], local_ray.home, marker, {"RAY_AUTH_MODE": "token"})
    assert r.returncode == 0 and "RAN" in r.stdout, (r.stdout + r.stderr)[-3000:]
    assert marker.read_text() == "ran"
