"""Issue 21, the Ray executor's faults: a damaged Tune state never blocks a resume of what is on disk, a
deterministic error is not worked through again by Tune's retries, SIGTERM to the driver is Ctrl-C, and what a
SIGKILLed driver's local Ray left running is cleaned up at the next start. Real Ray Tune runs on the smoke model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from helpers import run_cli, space_file, wait_for
from search import EXIT_INFRA

pytestmark = pytest.mark.slow


_run, _space = run_cli, space_file


def _trial_dirs(exp: Path) -> dict[str, Path]:
    """label (Dense, OMP, Random) -> the Ray trial dir of that variant (directly in the experiment)."""
    out = {}
    for d in exp.iterdir():
        if (d / "params.json").is_file():
            out[d.name.split("_")[0]] = d
    return out


# ------------------------------------------------------------------ 1. a damaged Tune state never blocks a resume

@pytest.fixture(scope="module")
def three(tmp_path_factory, ray_local) -> Path:
    """A finished Ray Tune experiment of three trials (glue_minilm smoke: dense, OMP, random)."""
    root = tmp_path_factory.mktemp("three")
    assert _run("run", _space(root, "three"), "--smoke", "--storage", root / "s") == 0
    exp = root / "s" / "three-smoke"
    assert sorted(_trial_dirs(exp)) == ["Dense", "OMP", "Random"]
    return exp


def _copy(exp: Path, where: Path) -> Path:
    new = Path(shutil.copytree(exp, where / exp.name))
    meta = json.loads((new / "space.json").read_text())
    (new / "space.json").write_text(json.dumps({**meta, "storage": str(where)}))
    return new


def test_a_cut_short_experiment_state_resumes_the_unfinished_trials_in_a_fresh_tune_run(three, tmp_path, capsys):
    """The tester's full disk: experiment_state cut short, `resume` exited 3 forever. Here: one trial finished,
    one cut off part-way (its result.json ends at its first report), one never started; no results file."""
    exp = _copy(three, tmp_path)
    dirs = _trial_dirs(exp)
    kept = dirs["Dense"]
    kept_bytes, kept_mtime = (kept / "result.json").read_bytes(), (kept / "result.json").stat().st_mtime_ns
    part = dirs["OMP"]
    (part / "result.json").write_text((part / "result.json").read_text().splitlines()[0] + "\n")
    shutil.rmtree(dirs["Random"])
    for f in ("results.parquet", "results.csv"):
        (exp / f).unlink()
    state = next(exp.glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    assert _run("resume", exp) == 0
    err = capsys.readouterr().err
    assert "is cut short" in err and "resuming without Tune's state" in err
    assert "1 finished trial(s) are kept as they are" in err and "2 trial(s) still to run" in err
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 3 and (df["status"] == "TERMINATED").all() and df["trial_id"].is_unique
    assert sorted(df["label"]) == ["Dense", "OMP", "Random"]  # every grid point once
    assert (kept / "result.json").read_bytes() == kept_bytes  # the finished trial was not run again
    assert (kept / "result.json").stat().st_mtime_ns == kept_mtime
    aside = next(exp.glob("tune-state.damaged-*"))
    assert (aside / part.name).is_dir() and (aside / state.name).is_file()  # kept for a post mortem
    assert json.loads((exp / "carried_trials.json").read_text()) == [kept.name]
    new = _trial_dirs(exp)
    assert sorted(new) == ["Dense", "OMP", "Random"] and new["Dense"] == kept and new["OMP"] != part

    # a later resume restores the fresh run's (whole) state: nothing runs, the table still has all three
    lines = {k: (d / "result.json").read_text() for k, d in new.items()}
    assert _run("resume", exp) == 0
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 3 and (df["status"] == "TERMINATED").all()
    assert {k: (d / "result.json").read_text() for k, d in new.items()} == lines


def test_a_damaged_state_with_every_trial_finished_writes_the_results_and_exits_0(three, tmp_path, capsys):
    exp = _copy(three, tmp_path)
    state = next(exp.glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[:100])
    (exp / "results.parquet").unlink()
    assert _run("resume", exp) == 0
    assert "0 trial(s) still to run" in capsys.readouterr().err
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 3 and (df["status"] == "TERMINATED").all()
    assert state.is_file()  # nothing to run: Tune's files stay as they are


def test_a_damaged_pbt_state_is_refused_with_the_reason(three, tmp_path, capsys):
    exp = _copy(three, tmp_path)
    meta = json.loads((exp / "space.json").read_text())
    meta["space"]["raw"]["tune"]["scheduler"] = {"type": "pbt", "perturbation_interval": 2,
                                                 "hyperparam_mutations": {"transfer.lr": [1e-4, 2e-4]}}
    meta["space"]["raw"]["checkpoint_every"] = 1  # what the loader asks of a PBT space
    (exp / "space.json").write_text(json.dumps(meta))
    state = next(exp.glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[:100])
    assert _run("resume", exp) == EXIT_INFRA
    err = capsys.readouterr().err
    assert "PBT population cannot be resumed without Tune's state" in err


def test_a_sampled_space_without_its_searcher_state_reruns_only_the_started_unfinished_trials(three, tmp_path):
    """A sampled (non-grid) space: the searcher's state is lost with Tune's; the unfinished trials that had started
    run again with their recorded configs (cheap, exact), the ones never suggested are not run, and both are said."""
    from search.rerun import plan
    from search_spaces.loader import validate

    exp = _copy(three, tmp_path)
    meta = json.loads((exp / "space.json").read_text())
    meta["space"]["raw"]["transfer"]["lr"] = {"loguniform": [1e-4, 1e-3]}
    space = validate(Path(meta["space"]["path"]), meta["space"]["raw"])
    dirs = _trial_dirs(exp)
    (dirs["OMP"] / "result.json").write_text((dirs["OMP"] / "result.json").read_text().splitlines()[0] + "\n")
    shutil.rmtree(dirs["Random"])
    p = plan(space, exp, Path(meta["store_root"]))
    assert p.refused is None and p.finished == [dirs["Dense"].name] and p.unfinished == [dirs["OMP"].name]
    assert p.configs == [json.loads((dirs["OMP"] / "params.json").read_text())]
    assert "searcher's state is lost" in p.notes[0] and "transfer.lr: loguniform" in p.notes[0]
    assert "1 of the space's 3 trials had not been suggested yet" in p.notes[1]


# ------------------------------------------------------------- 2. a deterministic error is not worked through again

def test_a_ticket_error_is_retried_by_tune_without_redoing_the_ticket_work(ray_local, tmp_path, capsys):
    """The tester's smoke-model ticket in a MiniLM id: `TicketError ...` retried 3 times, each retry making the
    ticket again. Here a TAMT trial raises a TicketError at its mask-training step 2 (debug.fail_with); Tune's
    FailureConfig (max_failures 2) retries it, and every retry stops at once: one attempt made the ticket."""
    space = yaml.safe_load((REPO / "search_spaces/tamt_asha.yaml").read_text())
    space["ticket"].update(lr=1e-2, reset_every=5)
    space["tune"].update(scheduler="fifo", max_failures=2)
    space["debug"] = {"fail_at_step": 2, "fail_with": "TicketError"}
    f = tmp_path / "tamt.yaml"
    f.write_text(yaml.safe_dump(space))
    assert _run("run", f, "--smoke", "--storage", tmp_path / "s") == 1
    exp = tmp_path / "s" / "tamt-smoke"
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 1 and df["status"].tolist() == ["ERROR"]
    assert "TicketError" in df["error"][0] and "not retried" in df["error"][0]
    trial = Path(df["trial_dir"][0])
    log = (trial / "log.txt").read_text()
    assert log.count("runtime:") == 1  # one attempt started the ticket's mask training; the retries did nothing
    assert log.count("step 1/4") == 1
    assert "Failure # 3" in (trial / "error.txt").read_text()  # Tune did retry (cheaply): 3 failures
    assert (trial / "deterministic_error.json").is_file()
    capsys.readouterr()
    # a resume is a new driver: the record is cleared, the trial tried once more (the cause may have been fixed);
    # it goes on from its step-2 checkpoint, past the step that failed
    assert _run("resume", exp) == 0
    assert "tried once more" in capsys.readouterr().out
    assert (trial / "log.txt").read_text().count("runtime:") == 2
    assert pd.read_parquet(exp / "results.parquet")["status"].tolist() == ["TERMINATED"]


# ---------------------------------------------------------------------- 3. SIGTERM to a Ray-executor driver

def _ray_procs(ray_tmp: str) -> dict[int, str]:
    """pid -> title of the live processes of the local Ray whose temp dir is ``ray_tmp``."""
    from search.ray_leftovers import leftovers

    return leftovers(ray_tmp)


def _wait(cond, timeout: float, what: str):
    return wait_for(cond, timeout, what, every=0.5)


def _driver(ray_tmp: str, *argv):
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "run_search.py"), *map(str, argv), "--cpus", "1"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.fixture
def ray_tmp():
    """A Ray temp dir of the test's own (short: Ray's socket paths must stay < 108 chars), removed afterwards."""
    import tempfile

    d = tempfile.mkdtemp(prefix="rf", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_sigterm_to_a_ray_driver_stops_tune_gracefully_writes_the_results_and_exits_143(tmp_path, ray_tmp):
    """The tester's SIGTERM was handled for the local executor only. A real Ray driver (subprocess, smoke model,
    two trials one at a time): SIGTERM once the first trial reports."""
    import os
    import signal

    f = _space(tmp_path, "term", variants=[{"method": "omp"}, {"method": "random", "seed": 0}],
               debug={"sleep_per_step": 1.0})
    exp = tmp_path / "s" / "term-smoke"
    proc = _driver(ray_tmp, "run", f, "--smoke", "--storage", tmp_path / "s")
    try:
        _wait(lambda: [p for p in exp.glob("*/result.json") if p.stat().st_size], 240, "a trial to report")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM)" in err and f"run_search.py resume {exp}" in err
    df = pd.read_parquet(exp / "results.parquet")  # written on the way out
    # the trial in flight was stopped part-way (the results read it as EARLY_STOPPED, as after Ctrl-C); the other
    # never started
    assert len(df) == 2 and "PENDING" in set(df["status"]) and "ERROR" not in set(df["status"])
    state = max(exp.glob("experiment_state-*.json"))
    json.loads(state.read_text())  # Tune saved its whole state: a resume goes on from it
    # the driver's own local Ray went with it (ray.shutdown at a normal exit)
    _wait(lambda: not _ray_procs(ray_tmp), 30, "the driver's Ray processes to end")


# ------------------------------------------------- 4. what a SIGKILLed driver's local Ray left is stopped at the next start

def test_the_agents_a_sigkilled_ray_driver_left_running_are_stopped_at_the_next_start(tmp_path, ray_tmp):
    """The tester's DashboardAgent and RuntimeEnvAgent alive >= 90 s after a SIGKILLed driver (measured here: alive
    at 60 s, gone by 90 s). The driver alone is killed, as a user's `kill -9 PID` does; the next start (a resume)
    stops what its session left before it starts its own Ray."""
    import os
    import signal
    import time

    f = _space(tmp_path, "kill", variants=[{"method": "omp"}, {"method": "random", "seed": 0}],
               debug={"sleep_per_step": 1.0})
    exp = tmp_path / "s" / "kill-smoke"
    a = _driver(ray_tmp, "run", f, "--smoke", "--storage", tmp_path / "s")
    try:
        _wait(lambda: [p for p in exp.glob("*/result.json") if p.stat().st_size], 240, "a trial to report")
        sessions = list(Path(ray_tmp, "ray").glob("session_2*"))
        assert len(sessions) == 1 and (Path(ray_tmp) / "ray/sparsebert-drivers" / f"{a.pid}.json").is_file()
        a.kill()  # the driver alone
        a.communicate(timeout=30)
        t_kill = time.time()
        time.sleep(5)
        left = _ray_procs(str(sessions[0]))
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(left.values()), left
        b = _driver(ray_tmp, "resume", exp)
        out, err = b.communicate(timeout=400)
    finally:
        for p in (a, locals().get("b")):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert b.returncode == 0, err[-3000:]
    assert f"left running by a killed driver (pid {a.pid})" in err and "ray::DashboardAgent" in err
    assert not any(os.path.exists(f"/proc/{p}") and _ray_procs(str(sessions[0])).get(p) for p in left)
    assert time.time() - t_kill < 300
    assert not _ray_procs(ray_tmp)  # the resumed driver's own Ray ended with it, and its record with it
    assert not list((Path(ray_tmp) / "ray/sparsebert-drivers").glob("*.json"))
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 2 and (df["status"] == "TERMINATED").all()
