"""Issue 21 (one experiment, one driver; SIGTERM; custom model code; export onto a symlink): the commands of
``run_search.py`` as a user runs them. The driver-process cases run real local-executor drivers in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from helpers import run_cli, space_file, wait_for
from search import EXIT_BAD_INPUT
from search.driver import driver_lock


_run, _space = run_cli, space_file


# ---- one experiment, one driver ----------------------------------------------------------------------------------

def test_a_second_driver_on_a_held_experiment_exits_2_naming_the_holder(tmp_path, capsys):
    from search_spaces.loader import load_space
    from search_spaces.space import as_dict

    storage = tmp_path / "s"
    exp = storage / "glue_minilm-smoke"
    exp.mkdir(parents=True)
    space = load_space("glue_minilm", smoke=True)
    meta = {"space": as_dict(space), "storage": str(storage), "store_root": str(storage), "name": exp.name}
    with driver_lock(exp):  # the first driver
        assert _run("run", "glue_minilm", "--smoke", "--executor", "local", "--storage", storage) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert f"pid {os.getpid()} on {socket.gethostname()}" in err and "another driver" in err
        (exp / "space.json").write_text(json.dumps(meta, default=str))
        for argv in (("resume", exp), ("resume", exp, "--executor", "local"),
                     ("run", "glue_minilm", "--smoke", "--storage", storage, "--overwrite")):
            assert _run(*argv) == EXIT_BAD_INPUT, argv
            err = capsys.readouterr().err
            assert f"pid {os.getpid()} on {socket.gethostname()}" in err, (argv, err)
            assert len(err.strip().splitlines()) == 1
        assert (exp / "space.json").is_file()  # --overwrite removed nothing under another driver
    assert not (exp / ".driver.lock.holder").exists()


def _workers(pid: int) -> list[int]:
    """The pool workers of a local-executor driver (spawned children running multiprocessing's spawn_main)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


_wait = wait_for


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_workers_writes_the_results_and_workers_die_with_a_killed_driver(tmp_path, capsys):
    """The tester's SIGTERM: no message, no results, 2 orphaned workers still training; then a resume raced them."""
    f = _space(tmp_path, "slow", variants=[{"method": "omp"}], debug={"sleep_per_step": 1.0},
               transfer={**yaml.safe_load((REPO / "search_spaces/glue_minilm.yaml").read_text())["transfer"],
                         "task": {"grid": ["rte", "mrpc"]}})
    storage = tmp_path / "s"
    exp = storage / "slow-smoke"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "run_search.py"), "run", str(f), "--smoke", "--executor", "local",
           "--workers", "2", "--storage", str(storage)]
    a = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        _wait(lambda: list(exp.glob("*/progress.jsonl")), 240, "a trial to report")
        workers = _wait(lambda: _workers(a.pid), 30, "the workers")
        # a second driver meanwhile: refused, naming the first
        assert _run("resume", exp, "--executor", "local") == EXIT_BAD_INPUT
        assert f"pid {a.pid} on {socket.gethostname()}" in capsys.readouterr().err
        a.send_signal(signal.SIGTERM)
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    assert a.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err and "resume" in err
    _wait(lambda: not any(_alive(p) for p in workers), 20, "the workers to stop")
    df = pd.read_parquet(exp / "results.parquet")  # written on the way out
    assert len(df) >= 1 and set(df["status"]) <= {"TERMINATED", "PENDING"}

    # SIGKILL: nothing runs in the driver, yet its workers end with it (PR_SET_PDEATHSIG)
    b = subprocess.Popen([sys.executable, str(REPO / "run_search.py"), "resume", str(exp), "--executor", "local",
                          "--workers", "2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        workers = _wait(lambda: _workers(b.pid), 120, "the resumed driver's workers")
        time.sleep(2)  # past their start-up
        b.kill()
        b.wait(30)
        _wait(lambda: not any(_alive(p) for p in workers), 20, "the orphaned workers to die")
    finally:
        if b.poll() is None:
            os.killpg(b.pid, signal.SIGKILL)
    with driver_lock(exp):  # released by the kernel with the killed driver
        pass


# ---- someone else's code, someone else's directory ---------------------------------------------------------------

@pytest.fixture
def custom_code_model(tmp_path) -> tuple[Path, Path]:
    """A model directory whose config names an unknown model_type with an auto_map and a .py file that leaves a
    marker when it runs."""
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "evilbert", "hidden_size": 32, "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel", "AutoTokenizer": ["evil.EvilTok", None]}}))
    marker = tmp_path / "RAN"
    (d / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                               "from transformers import PretrainedConfig\n"
                               "class EvilConfig(PretrainedConfig):\n    model_type = 'evilbert'\n")
    return d, marker


def test_custom_model_code_is_never_run_and_is_refused_before_anything_is_created(custom_code_model, tmp_path,
                                                                                   capsys):
    from sparsebert.models.loading import load_pretraining_model, load_tokenizer, prunable_shapes
    from sparsebert.models.registry import UnsupportedModelError

    model, marker = custom_code_model
    f = _space(tmp_path, "custom", model=str(model))
    assert _run("run", f, "--storage", tmp_path / "s") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "never run" in err and str(model) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # nothing created: no space.json
    for load in (load_pretraining_model, prunable_shapes):
        with pytest.raises(UnsupportedModelError, match="never run"):
            load(str(model))
    with pytest.raises(Exception):
        load_tokenizer(str(model))
    assert not marker.exists()


def test_readme_says_remote_code_is_never_run():
    text = " ".join((REPO / "README.md").read_text().split())
    assert "trust_remote_code=False" in text and "never run" in text


def test_export_onto_a_symlink_with_overwrite_is_a_one_line_error(tmp_path, capsys):
    from search_spaces.smoke import smoke_model_dir
    from sparsebert.tickets.finders import OMPSpec
    from sparsebert.tickets.pipeline import EvalSpec, SharedText, TicketStore

    spec = OMPSpec(model=str(smoke_model_dir()), sparsity=0.5)
    TicketStore(tmp_path / "store").get_or_make(spec, EvalSpec(eval_blocks=4, head_steps=2), SharedText(),
                                                log=lambda m: None)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    link = tmp_path / "out"
    os.symlink(theirs, link)
    rc = _run("export", spec.ticket_id, "--store", tmp_path / "store", "--out", link, "--overwrite")
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1 and "symlink" in err and str(link) in err
    assert (theirs / "keep.txt").read_text() == "mine" and link.is_symlink()
