"""What a killed driver's local Ray left running, cleaned up at the next start (Linux: reads ``/proc``; no Ray
import here).

A local Ray (:func:`search.tuner.init_ray` without ``--address``) is started by the driver: GCS, raylet, dashboard,
log monitor, and the raylet's ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``. A normal exit (and Ctrl-C or
SIGTERM, which end normally) stops them all with ``ray.shutdown``. A SIGKILLed driver cannot: measured on the
2-core test machine (Ray 2.60, driver killed alone), the GCS, raylet and workers ended within 5 s, but the
DashboardAgent and RuntimeEnvAgent (reparented to init, their command lines just their titles) were alive 60 s
later and gone by 90 s.

* :func:`register`: a driver records itself (pid, its start time, the session dir) in
  ``<Ray temp dir>/sparsebert-drivers/<pid>.json`` once its Ray is up; the record goes at a normal exit.
* :func:`clean`: at the next start, for every record whose driver is gone, the processes of this user tied to
  that session (its dir in their command line, or a file in it open: the agents keep their logs there) are
  killed and the record removed. A live driver's session, a ``ray start`` cluster and other users' processes are
  never touched: only sessions a driver of ours recorded.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
from pathlib import Path

REGISTRY = "sparsebert-drivers"


def ray_temp_dir() -> Path:
    """Ray's default temp dir (``ray._common.utils.get_default_ray_temp_dir``): ``$RAY_TMPDIR``, else ``$TMPDIR``
    (Linux), else ``/tmp``; then ``ray``."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


def _start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot, /proc/<pid>/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # state, ppid, ...: the command name may hold spaces
    return int(fields[19]) if len(fields) > 19 and fields[0] not in ("Z", "X") else None


def register(session_dir: str | os.PathLike) -> Path | None:
    """Record this driver and its Ray session (see the module docstring); None where /proc is missing."""
    start = _start_time(os.getpid())
    if start is None:
        return None
    reg = Path(session_dir).parent / REGISTRY
    try:
        reg.mkdir(mode=0o700, exist_ok=True)
        rec = reg / f"{os.getpid()}.json"
        rec.write_text(json.dumps({"pid": os.getpid(), "start": start, "session_dir": str(session_dir)}))
    except OSError:
        return None
    atexit.register(lambda: rec.unlink(missing_ok=True))
    return rec


def _tied(pid: int, session: str) -> bool:
    """Whether process ``pid`` names ``session`` in its command line or holds a file in it open."""
    try:
        if session in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session + "/"):
                    return True
            except OSError:
                pass
    except OSError:  # gone, or not ours (no access to its fds)
        pass
    return False


def _title(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = cmd[0].decode(errors="replace").strip()
    if first.startswith("ray::"):
        return first
    script = next((c.decode(errors="replace") for c in cmd[1:] if c.endswith(b".py")), first)
    return Path(script).name


def leftovers(session: str) -> dict[int, str]:
    """pid -> title of this user's live processes tied to ``session`` (this process excluded)."""
    uid, me, out = os.getuid(), os.getpid(), {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            if os.stat(f"/proc/{d}").st_uid != uid:
                continue
        except OSError:
            continue
        pid = int(d)
        if _start_time(pid) is not None and _tied(pid, session):
            out[pid] = _title(pid)
    return out


def clean(log=lambda msg: print(msg, file=sys.stderr), grace_s: float = 3.0) -> dict[int, str]:
    """Kill what the recorded sessions of dead drivers left running (SIGTERM, SIGKILL after ``grace_s``) and drop
    their records. Returns pid -> title of the processes killed (each session said in ``log``)."""
    reg = ray_temp_dir() / REGISTRY
    if not reg.is_dir() or not Path("/proc").is_dir():
        return {}
    killed: dict[int, str] = {}
    for rec in sorted(reg.glob("*.json")):
        try:
            info = json.loads(rec.read_text())
            pid, start, session = int(info["pid"]), int(info["start"]), str(info["session_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            rec.unlink(missing_ok=True)
            continue
        if _start_time(pid) == start:  # that driver is alive: its Ray is in use
            continue
        procs = leftovers(session)
        for p in procs:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_start_time(p) is not None for p in procs):
            time.sleep(0.1)
        for p in procs:
            if _start_time(p) is not None:
                _signal(p, signal.SIGKILL)
        if procs:
            log(f"note: stopped {len(procs)} process(es) left running by a killed driver (pid {pid}) of the local "
                f"Ray session {session}: " + ", ".join(f"{t} (pid {p})" for p, t in sorted(procs.items())))
        killed.update(procs)
        rec.unlink(missing_ok=True)
    return killed


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass
