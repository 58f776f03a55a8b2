"""A real two-node Ray cluster on one machine: trials spread over both nodes, and a node lost mid-trial.

Two network namespaces joined by a veth pair stand in for two hosts (see ../shared/NOTES.md: loopback alone does not
work, because Ray maps 127.0.0.1 to the machine's outward address). The head node (and the driver,
``run_search.py run ... --address``) live in one namespace, a worker node in the other; both see the same
filesystem, which is the experiments' shared storage.

Nothing here touches the machine's own addresses or other Ray clusters on it: every Ray process of the cluster
runs inside one of the test's own namespaces, and teardown kills exactly the processes in those namespaces
(``ip netns pids``). ``ray stop`` is deliberately never used: it kills *every* Ray process on the machine (it
matches process names, not namespaces or temp dirs), including other people's clusters.

Auth: RAY_AUTH_MODE=token. Both nodes and the driver get RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH pointing at
one token file the fixture writes (256 random bits, the format of ``ray get-auth-token --generate``). Ray 2.60 reads
the token from RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token; each node has its own HOME, so the
shared file is the only token there is. Token mode is what run_search.py's docstring tells multi-node users to run
(a cluster listens on a network), and it works across the namespaces, so the test exercises it rather than
``disabled``; ``test_cluster_requires_token`` checks that a driver with another token, or none, is turned away.

Needs root and ``ip netns`` (skipped otherwise, failed in CI where it must run). ~1.5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PY = Path(sys.executable)
RAY = PY.with_name("ray")
PORT = 6379
# Faster node-death detection than the default (~15-30 s): the GCS health-checks each raylet every second and
# declares a node dead after 5 failed checks. Generous enough for a loaded 2-core machine.
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                 "health_check_timeout_ms": 2000, "health_check_failure_threshold": 5}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _netns_usable() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (network namespaces)"
    try:
        r = _ip("netns", "list", check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns` unusable: {e}"
    if r.returncode != 0:
        return f"`ip netns list` failed: {r.stderr.strip()}"
    return None


class TwoNodeCluster:
    """Head node in namespace ``head_ns`` (10.x.y.1), worker node in ``work_ns`` (10.x.y.2), 1 CPU each."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"  # unique per run; veth names must be <= 15 chars
        self.head_ns, self.work_ns = f"sbh{tag}", f"sbw{tag}"
        self.head_veth, self.work_veth = f"sbvh{tag}", f"sbvw{tag}"
        net = f"10.231.{os.getpid() % 250}"  # private; lives only inside the two namespaces
        self.head_ip, self.work_ip = f"{net}.1", f"{net}.2"
        self.address = f"{self.head_ip}:{PORT}"
        # short: Ray's unix socket paths under the temp dir must stay < 108 characters
        self.root = Path(tempfile.mkdtemp(prefix="sbrc", dir="/tmp"))
        self.token_file = self.root / "auth_token"
        self.made_ns: list[str] = []

    # ------------------------------------------------------------------ env and processes
    def temp_dir(self, ns: str) -> Path:
        return self.root / ("h" if ns == self.head_ns else "w")

    def env(self, ns: str, token: str | None = "file") -> dict[str, str]:
        """The environment of a process in ``ns``: its own HOME; ``token`` "file" (the cluster's token file),
        "wrong" (RAY_AUTH_TOKEN set to another token) or None (RAY_AUTH_MODE=disabled: sends no token)."""
        from sparsebert.text.embedded import cache_root

        home = self.root / f"home-{'h' if ns == self.head_ns else 'w'}"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS etc. from outside
        env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   SPARSEBERT_CACHE=str(cache_root()),  # the prepared data/model cache, whatever HOME is
                   PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        if token == "file":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        elif token == "wrong":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        else:
            env.update(RAY_AUTH_MODE="disabled")
        return env

    def run(self, ns: str, cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *map(str, cmd)], env=kw.pop("env", self.env(ns)),
                              cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, ns: str, cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as f:
            return subprocess.Popen(["ip", "netns", "exec", ns, *map(str, cmd)], env=self.env(ns), cwd=REPO,
                                    stdout=f, stderr=subprocess.STDOUT)

    def pids(self, ns: str) -> list[int]:
        r = _ip("netns", "pids", ns, check=False)
        return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []

    def kill_ns(self, ns: str, sig: int = signal.SIGKILL, timeout: float = 20) -> None:
        """Kill every process in namespace ``ns`` (the ones this cluster started there) and wait until gone."""
        deadline = time.time() + timeout
        while True:
            pids = self.pids(ns)
            if not pids:
                return
            if time.time() > deadline:
                raise RuntimeError(f"processes left in {ns}: {pids}")
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        for ns in (self.head_ns, self.work_ns):
            _ip("netns", "add", ns)
            self.made_ns.append(ns)
        _ip("link", "add", self.head_veth, "type", "veth", "peer", "name", self.work_veth)
        for ns, dev, ip in ((self.head_ns, self.head_veth, self.head_ip), (self.work_ns, self.work_veth, self.work_ip)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
        r = self.run(self.head_ns, [RAY, "start", "--head", f"--node-ip-address={self.head_ip}", f"--port={PORT}",
                                    "--include-dashboard=false", f"--temp-dir={self.temp_dir(self.head_ns)}",
                                    f"--system-config={json.dumps(SYSTEM_CONFIG)}", *common])
        assert r.returncode == 0, f"ray start --head failed:\n{r.stdout}\n{r.stderr}"
        r = self.run(self.work_ns, [RAY, "start", f"--address={self.address}", f"--node-ip-address={self.work_ip}",
                                    f"--temp-dir={self.temp_dir(self.work_ns)}", *common])
        assert r.returncode == 0, f"ray start (worker) failed:\n{r.stdout}\n{r.stderr}"
        self.wait_nodes(2)

    def alive_nodes(self, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print('NODES', json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))"
                % self.address)
        return self.run(self.head_ns, [PY, "-c", code], timeout=timeout, env=env or self.env(self.head_ns))

    def wait_nodes(self, n: int, timeout: float = 60) -> list[str]:
        deadline, ips = time.time() + timeout, []
        while time.time() < deadline:
            r = self.alive_nodes()
            line = [x for x in r.stdout.splitlines() if x.startswith("NODES ")]
            ips = json.loads(line[-1][6:]) if line else []
            if len(ips) >= n:
                return ips
            time.sleep(1)
        raise AssertionError(f"cluster has nodes {ips}, wanted {n}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def teardown(self) -> None:
        errors = []
        for ns in self.made_ns:
            try:
                self.kill_ns(ns)
            except Exception as e:  # keep going: the namespaces must go regardless
                errors.append(str(e))
        for ns in self.made_ns:
            _ip("netns", "delete", ns, check=False)  # deleting a namespace destroys the veth end inside it
        _ip("link", "delete", self.head_veth, check=False)  # if it was never moved into a namespace
        shutil.rmtree(self.root, ignore_errors=True)
        left = set(_ip("netns", "list", check=False).stdout.split()) & set(self.made_ns)
        assert not errors and not left, f"cluster teardown incomplete: {errors} namespaces left: {left}"


@pytest.fixture(scope="module")
def cluster():
    why = _netns_usable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"multi-node test cannot run in CI: {why}")
        pytest.skip(why)
    def on_sigterm(signum, frame):  # e.g. a CI timeout: unwind so the finalizer below still runs
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, on_sigterm)
    c = TwoNodeCluster()
    try:
        c.start()
        yield c
    finally:
        try:
            c.teardown()
        finally:
            signal.signal(signal.SIGTERM, old)


# ---------------------------------------------------------------------------------------------------- helpers


def write_space(path: Path, ticket: dict, variants: list | None = None, debug: dict | None = None) -> Path:
    """A small transfer space in demo.yaml's shape (``--smoke`` shrinks model/steps/data further)."""
    space = {
        "description": "multi-node test",
        "stage": "transfer",
        "model": "embedded-minilm",
        "ticket": {"text": {"source": "embedded", "block_size": 32}, "steps": 4, "batch_size": 4, **ticket},
        "transfer": {"task": "polarity", "lr": 1.0e-4, "batch_size": 8, "max_steps": 4, "eval_every": 2},
        "tune": {"metric": "score", "mode": "max", "scheduler": {"type": "fifo"}, "searcher": "grid",
                 "max_failures": 2},
        "resources": {"cpu": 1},
        "checkpoint_every": 1,
    }
    if variants:
        space["variants"] = variants
    if debug:
        space["debug"] = debug
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run_search_cmd(space: Path, storage: Path, address: str) -> list:
    return [PY, REPO / "run_search.py", "run", space, "--smoke", "--storage", storage, "--address", address]


def read_results(storage: Path, name: str):
    import pandas as pd

    return pd.read_parquet(storage / name / "results.parquet")


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("token", ["wrong", None])
def test_cluster_requires_token(cluster, token):
    """Token auth is on: a driver with another token, or none, cannot join (one with the cluster's token can:
    the fixture checked that both nodes are up through such a driver)."""
    env = cluster.env(cluster.head_ns, token=token)
    env["RAY_gcs_server_port_wait_time_s"] = "3"  # give up after 3 tries (default 20, 1 s apart)
    r = cluster.alive_nodes(env=env, timeout=60)
    assert "NODES" not in r.stdout, f"a driver without the cluster's token joined it:\n{r.stdout}"
    assert r.returncode != 0
    assert "token" in (r.stdout + r.stderr).lower(), r.stderr[-3000:]


def test_trials_spread_over_both_nodes(cluster, tmp_path):
    space = write_space(tmp_path / "spread.yaml", {"sparsity": {"grid": [0.5, 0.7]}},
                        variants=[{"method": "omp"}, {"method": "random", "seed": 0}])
    storage = tmp_path / "storage"
    r = cluster.run(cluster.head_ns, run_search_cmd(space, storage, cluster.address), timeout=240)
    out = r.stdout[-4000:] + r.stderr[-4000:]
    assert r.returncode == 0, f"run_search exited {r.returncode}:\n{out}"
    df = read_results(storage, "spread-smoke")
    assert len(df) == 4, out
    assert set(df["status"]) == {"TERMINATED"}, df[["trial_id", "status", "error"]].to_string()
    assert df["trial_id"].is_unique
    assert (df["training_iteration"] == 2).all()  # smoke: 4 steps, a report every 2
    assert set(df["node_ip"]) == {cluster.head_ip, cluster.work_ip}, df[["trial_id", "node_ip"]].to_string()


def _worker_checkpoint(cluster, name: str, storage: Path) -> dict | None:
    """The first result a trial on the worker node reported with a checkpoint that is on the shared storage.

    The driver (JsonLoggerCallback) writes each trial's result.json into its staging dir under the head's temp dir
    as results arrive (it reaches the storage dir only at sync time); the checkpoint itself is uploaded by the
    trial to <storage>/<name>/<trial dir>/checkpoint_*."""
    for rj in cluster.temp_dir(cluster.head_ns).glob(f"session_*/artifacts/*/{name}/driver_artifacts/*/result.json"):
        for line in rj.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            ck = row.get("checkpoint_dir_name")
            if row.get("node_ip") == cluster.work_ip and ck and (storage / name / rj.parent.name / ck).is_dir():
                return {**row, "trial_dir": rj.parent.name}
    return None


def test_worker_node_lost_mid_trial(cluster, tmp_path):
    """Kill every process of the worker node (a host lost) after one of its trials checkpointed: the run still
    finishes, every trial TERMINATED, and the interrupted trial resumed from its checkpoint on the head node.

    Runs last: the worker node stays dead afterwards."""
    name = "lose-smoke"
    # 2 trials, one per node. --smoke keeps 4 steps with a report (and checkpoint) every 2; sleep_per_step makes a
    # step take seconds so the worker's trial is still running after its first checkpoint (fail_at_step is only
    # there because fault_injector ignores sleep_per_step without it: it never fires).
    space = write_space(tmp_path / "lose.yaml", {"sparsity": {"grid": [0.5, 0.7]}, "method": "omp"},
                        debug={"fail_at_step": 10**9, "sleep_per_step": 5})
    storage = tmp_path / "storage"
    log = tmp_path / "driver.log"
    driver = cluster.popen(cluster.head_ns, run_search_cmd(space, storage, cluster.address), log)
    try:
        deadline, hit = time.time() + 150, None
        while time.time() < deadline and driver.poll() is None:
            hit = _worker_checkpoint(cluster, name, storage)
            if hit:
                break
            time.sleep(0.5)
        assert hit, f"no trial on the worker node checkpointed (driver rc={driver.poll()}):\n{_tail(log)}"
        assert hit["training_iteration"] == 1 and hit["step"] == 2, hit
        cluster.kill_ns(cluster.work_ns)  # the worker host is gone: raylet, its trial's process, everything
        rc = driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    out = _tail(log)
    assert rc == 0, f"run_search exited {rc} after the worker node was lost:\n{out}"
    df = read_results(storage, name)
    assert len(df) == 2, out
    assert set(df["status"]) == {"TERMINATED"}, df[["trial_id", "status", "error"]].to_string()
    lost = df[df["trial_id"] == hit["trial_id"]].iloc[0]
    assert lost["node_ip"] == cluster.head_ip, "the interrupted trial should have finished on the head node"
    assert "metric/resumed_at" in df, f"run_search recorded no resumed_at: {list(df.columns)}"
    assert lost["metric/resumed_at"] == hit["step"], "it should have resumed from its checkpoint, not restarted"
    assert lost["step"] == lost["total_steps"] == 4 and lost["training_iteration"] == 2
    # its history (synced to the storage at the end): iteration 1 on the worker, iteration 2 on the head
    rows = [json.loads(x) for x in (storage / name / hit["trial_dir"] / "result.json").read_text().splitlines()]
    seen = [(x["training_iteration"], x["node_ip"], x.get("resumed_at")) for x in rows]
    assert seen[0] == (1, cluster.work_ip, 0) and seen[-1] == (2, cluster.head_ip, 2), seen
    assert [x[0] for x in seen] == sorted(x[0] for x in seen), f"iterations restarted: {seen}"
    other = df[df["trial_id"] != hit["trial_id"]].iloc[0]
    assert other["metric/resumed_at"] == 0 and other["node_ip"] == cluster.head_ip
