"""The search system end to end: every shipped space under --smoke, bad input, retries, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import run_search
from conftest import REPO
from search_spaces.loader import SpaceError, list_spaces, load_space

pytestmark = pytest.mark.slow


def _write(tmp_path: Path, name: str, space: dict) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(space))
    return p


def _demo(**changes) -> dict:
    d = yaml.safe_load((REPO / "search_spaces/demo.yaml").read_text())
    d.update(changes)
    return d


@pytest.mark.parametrize("space", [p.stem for p in list_spaces()])
def test_every_space_runs_under_smoke(space, ray_local, tmp_path):
    code = run_search.main(["run", space, "--smoke", "--storage", str(tmp_path)])
    assert code == 0
    exp = tmp_path / f"{space}-smoke"
    df = pd.read_parquet(exp / "results.parquet")
    n = run_search_grid(space)
    if load_space(space, smoke=True).raw.get("proxy") is not None:  # stage 1 (all) + stage 2 (the selected)
        n += int((pd.read_csv(exp / "proxy_selection.csv")["selected"] == "yes").sum())
    assert len(df) == n and df["trial_id"].is_unique
    assert set(df["status"]) <= {"TERMINATED", "EARLY_STOPPED"}
    assert df["ticket_id"].notna().all() and df["kd_loss"].notna().all()
    for path in df["ticket_path"].dropna().unique():
        assert (Path(path) / "mask.safetensors").is_file()
    if load_space(space, smoke=True).stage == "transfer":
        tr = df[df["stage"] == "transfer"]
        assert len(tr) and tr["best_score"].notna().all() and tr["task"].eq("polarity").all()


def run_search_grid(space: str) -> int:
    from search_spaces.loader import grid_size

    return grid_size(load_space(space, smoke=True))


def test_tickets_are_content_addressed_across_experiments(ray_local, tmp_path):
    assert run_search.main(["run", "demo", "--smoke", "--storage", str(tmp_path), "--name", "a"]) == 0
    assert run_search.main(["run", "demo", "--smoke", "--storage", str(tmp_path), "--name", "b"]) == 0
    a = pd.read_parquet(tmp_path / "a/results.parquet")
    b = pd.read_parquet(tmp_path / "b/results.parquet")
    assert a["ticket_made"].sum() == a["ticket_id"].nunique()  # each ticket made once in the first experiment
    assert b["ticket_made"].sum() == 0  # ... and never again in the second one sharing the storage
    assert set(a["ticket_id"]) == set(b["ticket_id"])


BAD = [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"variants": [{"method": "magic"}]}, "variants[0].method: 'magic' is not a valid Method"),
    ({"ticket": {"sparsity": 1.5}}, "ticket.sparsity: sparsity must be in [0, 1)"),
    ({"transfer": {"task": "nosuch"}}, "transfer: unknown task"),
    ({"transfer": {"task": "rte", "data_dir": "/no/such/dir"}}, "transfer.data_dir: /no/such/dir does not exist"),
    ({"ticket": {"text": {"source": "/no/such/corpus.txt"}}}, "text.source: /no/such/corpus.txt does not exist"),
    ({"tune": {"scheduler": {"type": "hyperband"}}}, "tune.scheduler.type"),
    ({"ticket": {"sparsity": {"uniform": [0.9, 0.1]}}}, "ticket.sparsity: uniform needs [low, high]"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_input_fails_before_any_compute_naming_file_and_key(change, message, tmp_path, capsys):
    space = _write(tmp_path, "bad", _demo(**change))
    storage = tmp_path / "storage"
    code = run_search.main(["run", str(space), "--storage", str(storage)])
    err = capsys.readouterr().err
    assert code == run_search.EXIT_BAD_INPUT
    assert err.startswith("error: bad.yaml: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not storage.exists()  # nothing written


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    p = tmp_path / "broken.yaml"
    p.write_text("stage: transfer\nticket: {sparsity: [0.5\n")
    assert run_search.main(["run", str(p), "--storage", str(tmp_path / "s")]) == run_search.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "broken.yaml: line" in err and "malformed YAML" in err
    with pytest.raises(SpaceError):
        load_space(p)


def _small(tmp_path, **debug) -> Path:
    space = _demo(variants=[{"method": "omp"}, {"method": "random"}], checkpoint_every=1)
    space["ticket"]["sparsity"] = 0.5
    space["tune"]["scheduler"] = "fifo"
    if debug:
        space["debug"] = debug
    return _write(tmp_path, "small", space)


def test_a_failing_trial_is_retried_from_its_checkpoint_and_the_sweep_goes_on(ray_local, tmp_path):
    marker = tmp_path / "fired"
    space = _small(tmp_path, fail_at_step=3, once_marker=str(marker))
    assert run_search.main(["run", str(space), "--smoke", "--storage", str(tmp_path / "s")]) == 0
    df = pd.read_parquet(tmp_path / "s/small-smoke/results.parquet")
    assert marker.exists() and set(df["status"]) == {"TERMINATED"}
    assert (df["metric/resumed_at"] == 2).sum() == 1  # the failed trial resumed from its step-2 checkpoint
    # a trial that always fails: the sweep finishes the others and the summary names the error
    space = _small(tmp_path, fail_at_step=3)
    assert run_search.main(["run", str(space), "--smoke", "--storage", str(tmp_path / "t")]) == 1
    df = pd.read_parquet(tmp_path / "t/small-smoke/results.parquet")
    assert (df["status"] == "ERROR").all() and df["error"].str.contains("injected failure at step 3").all()


def _kill_session(ray_tmp: str) -> None:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(ray_tmp in part for part in (p.info["cmdline"] or [])):
                p.kill()
        except psutil.Error:
            pass


def _terminated_trials(exp: Path) -> list[str]:
    """Trial dirs Tune's own experiment snapshot records as TERMINATED (what a resume keeps as finished)."""
    states = sorted(exp.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being rewritten
        return []
    trials = [json.loads(t[0]) for t in data["trial_data"]]
    return [t["relative_logdir"] for t in trials if t.get("status") == "TERMINATED"]


def test_driver_sigkill_then_resume_keeps_finished_trials(tmp_path):
    space = _demo(variants=[{"method": "omp"}, {"method": "random"}], checkpoint_every=1)
    space["ticket"]["sparsity"] = {"grid": [0.5, 0.6]}
    space["tune"] = {"metric": "score", "mode": "max", "scheduler": "fifo", "max_concurrent": 1}
    space["debug"] = {"sleep_per_step": 0.5}
    path = _write(tmp_path, "killme", space)
    storage = tmp_path / "s"
    exp = storage / "killme-smoke"
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, str(REPO / "run_search.py"), "run", str(path), "--smoke", "--storage", str(storage),
           "--cpus", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    finished = []
    while time.time() < deadline and not finished:
        time.sleep(1)
        finished = _terminated_trials(exp)
    assert finished, "no trial finished before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver ...
    proc.wait()
    _kill_session(ray_tmp)  # ... and its Ray daemons, which outlive it by design (not `ray stop`: it would kill
    # every Ray on the machine, this test process's own included)
    before = {d: len((exp / d / "result.json").read_text().splitlines()) for d in finished}
    out = subprocess.run([sys.executable, str(REPO / "run_search.py"), "resume", str(exp), "--cpus", "1"],
                         env=env, capture_output=True, text=True, timeout=400)
    _kill_session(ray_tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 4 and df["trial_id"].is_unique and set(df["status"]) == {"TERMINATED"}
    for name, n_lines in before.items():  # finished trials were not re-run
        assert len((exp / name / "result.json").read_text().splitlines()) == n_lines
