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

import run_search
from conftest import REPO
from search import EXIT_INFRA

pytestmark = pytest.mark.slow


def _run(*argv) -> int:
    return run_search.main([str(a) for a in argv])


def _space(tmp_path: Path, name: str, **over) -> Path:
    space = yaml.safe_load((REPO / "search_spaces/glue_minilm.yaml").read_text())
    space.update(over)
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(space))
    return f


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
