"""The local executor (search/local.py): a grid space run by worker processes without Ray, the same results files,
resume, shards, exclusions, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import run_search
from conftest import REPO
from search.trial_list import excluded, expand, parse_exclude, schedule, shard, trials
from search_spaces.loader import load_space


def _run(*argv) -> int:
    return run_search.main(list(argv))


def test_expand_is_the_cartesian_product_of_the_grids():
    t = {"a": {"grid": [1, 2]}, "b": {"c": {"grid": ["x", "y", "z"]}, "d": 5}, "e": 0}
    out = expand(t, num_samples=2)
    assert len(out) == 12
    assert {(c["a"], c["b"]["c"]) for c in out} == {(a, c) for a in (1, 2) for c in "xyz"}
    assert all(c["b"]["d"] == 5 and c["e"] == 0 for c in out)


def test_shards_split_whole_tickets_and_cover_every_trial(tmp_path):
    ts = trials(load_space("paper_small"), tmp_path)
    assert len(ts) == 13 * 6 * 3  # tickets x tasks x seeds
    parts = [shard(ts, k, 3) for k in (1, 2, 3)]
    assert sorted(t.index for p in parts for t in p) == list(range(len(ts)))
    for a in range(3):
        for b in range(a + 1, 3):
            assert not {t.ticket_id for t in parts[a]} & {t.ticket_id for t in parts[b]}
    order = schedule(ts)
    assert order[0].config["transfer"]["task"] == "sst2"  # the costliest first
    assert len({t.ticket_id for t in order[:13]}) == 13  # tickets interleaved: every ticket starts early
    rules = parse_exclude(["transfer.task=sst2,transfer.seed=2"])
    left = [t for t in ts if excluded(t, rules)]
    assert len(left) == 13 and {t.config["transfer"]["seed"] for t in left} == {2}
    assert [t for t in ts if excluded(t, parse_exclude(["ticket.method=imp"]))]  # ticket = ticket + variant


def test_smoke_space_runs_without_ray_then_resume_runs_only_what_is_left(tmp_path):
    """A subprocess, so that the absence of Ray is real: `ray` is never imported by the driver."""
    code = (
        "import sys, run_search\n"
        f"rc = run_search.main(['run', 'paper_small', '--smoke', '--executor', 'local', '--workers', '2',"
        f" '--storage', {str(tmp_path)!r}, '--exclude', 'transfer.seed=3'])\n"
        "assert 'ray' not in sys.modules, 'the local executor imported ray'\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "7 excluded" in p.stdout
    exp = tmp_path / "paper_small-smoke"
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 14 and df["trial_id"].is_unique
    done = df[df["status"] == "TERMINATED"]
    assert len(done) == 7 and (df[df["status"] == "PENDING"]["seed"] == 3).all()  # --smoke keeps seeds 1 and 3
    assert done["best_score"].notna().all() and done["kd_loss"].notna().all() and done["ticket_id"].notna().all()
    assert set(done["device"]) == {"cpu"}
    first = {t: (exp / t / "result.json").stat().st_mtime_ns for t in done["trial_id"]}
    for t in done["trial_id"]:
        assert json.loads((exp / t / "result.json").read_text())["status"] == "TERMINATED"
        assert (exp / t / "progress.jsonl").read_text().count("\n") >= 2

    assert _run("resume", str(exp), "--executor", "local", "--workers", "2") == 0
    df = pd.read_parquet(exp / "results.parquet")
    assert (df["status"] == "TERMINATED").all() and len(df) == 14
    assert {t: (exp / t / "result.json").stat().st_mtime_ns for t in first} == first  # not run twice
    # the analysis reads the local executor's results like Tune's
    assert _run("report", str(exp)) == 0
    assert (exp / "analysis" / "report.md").is_file()


def test_a_failing_trial_is_retried_then_reported_and_the_rest_finish(tmp_path):
    import yaml

    space = yaml.safe_load((REPO / "search_spaces/glue_minilm.yaml").read_text())
    space["debug"] = {"fail_at_step": 2}  # every attempt fails at step 2
    space["tune"]["max_failures"] = 1
    f = tmp_path / "failing.yaml"
    f.write_text(yaml.safe_dump(space))
    assert _run("run", str(f), "--smoke", "--executor", "local", "--workers", "2", "--storage", str(tmp_path)) == 1
    df = pd.read_parquet(tmp_path / "failing-smoke" / "results.parquet")
    assert (df["status"] == "ERROR").all() and df["error"].str.contains("InjectedFailure").all()
    res = json.loads(next((tmp_path / "failing-smoke").glob("*/result.json")).read_text())
    assert res["attempts"] == 2 and "injected failure at step 2" in res["error"]["message"]


@pytest.mark.parametrize("space, message", [("demo", "tune.scheduler: asha needs Ray Tune"),
                                            ("proxy_search", "needs Ray Tune")])
def test_what_needs_tune_is_refused_before_anything_is_written(space, message, tmp_path, capsys):
    assert _run("run", space, "--smoke", "--executor", "local", "--storage", str(tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_shard_and_exclude_are_local_only(tmp_path, capsys):
    assert _run("run", "glue_minilm", "--smoke", "--storage", str(tmp_path), "--shard", "1/2") == 2
    assert "--shard and --exclude need --executor local" in capsys.readouterr().err
    assert _run("run", "glue_minilm", "--smoke", "--executor", "local", "--storage", str(tmp_path / "x"),
                "--shard", "3/2") == 2
    assert "need 1 <= K <= N" in capsys.readouterr().err
