"""Issue 15: the results of an experiment are never lost or replaced by less (atomic writes, a full disk, a damaged
Tune state), `report` reads around a damaged copy, `resume` continues a moved experiment where it is now and
refuses a directory others can write (Tune's restore unpickles what is there). No Ray is started here: the local
executor makes the experiment, the Ray path is checked up to the restore call."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import run_search
from search import EXIT_BAD_INPUT, EXIT_INFRA

NAME = "glue_minilm-smoke"


def _run(*argv) -> int:
    return run_search.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A real (local-executor) experiment: dense and OMP finished, random left pending (excluded)."""
    storage = tmp_path_factory.mktemp("store")
    assert _run("run", "glue_minilm", "--smoke", "--executor", "local", "--workers", "2", "--storage", storage,
                "--exclude", "ticket.method=random") == 0
    exp = storage / NAME
    df = pd.read_parquet(exp / "results.parquet")
    assert sorted(df["status"]) == ["PENDING", "TERMINATED", "TERMINATED"]
    return exp


def _copy(base: Path, where: Path) -> Path:
    """A copy of the experiment in ``where`` whose space.json says it was made there."""
    where.mkdir(parents=True, exist_ok=True)
    exp = Path(shutil.copytree(base, where / NAME))
    meta = json.loads((exp / "space.json").read_text())
    (exp / "space.json").write_text(json.dumps({**meta, "storage": str(where)}))
    return exp


def _bytes(exp: Path) -> dict[str, bytes]:
    return {f: (exp / f).read_bytes() for f in ("results.parquet", "results.csv") if (exp / f).is_file()}


# ------------------------------------------------------------------------------ 1. results are never lost

def _grid(statuses: dict[str, str]):
    """A result grid as search.results reads it: trial id -> TERMINATED | ERROR | PENDING."""
    from search.local import LocalResult

    out = []
    for tid, st in statuses.items():
        m = {"trial_id": tid, "stage": "transfer", "score": 0.5, "step": 4, "total_steps": 4}
        if st != "PENDING":
            m["training_iteration"] = 2
        err = KeyError("store") if st == "ERROR" else None
        out.append(LocalResult(m, {"transfer": {"task": "polarity"}}, err, f"/x/{tid}", None))
    return out


def test_results_are_written_atomically_and_a_full_disk_names_the_file(tmp_path, monkeypatch):
    from search.results import ResultsWriteError, write_results

    write_results(_grid({"a": "TERMINATED", "b": "TERMINATED"}), tmp_path, "e")
    before = _bytes(tmp_path)
    assert pd.read_csv(tmp_path / "results.csv")["trial_id"].tolist() == ["a", "b"]

    def full(self, f, *a, **k):  # half a file, then the disk is full
        f.write(b"PAR1 half a parquet")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(ResultsWriteError) as ei:
        write_results(_grid({"a": "TERMINATED", "b": "TERMINATED", "c": "TERMINATED"}), tmp_path, "e")
    assert ei.value.errno == errno.ENOSPC
    assert "no space left on device" in str(ei.value) and str(tmp_path / "results.parquet") in str(ei.value)
    assert _bytes(tmp_path) == before  # neither file touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.parquet"]  # no temp file left


def test_a_table_with_fewer_finished_trials_never_replaces_the_results(tmp_path, capsys):
    """The tester's second resume: a damaged Tune state gave one bogus trial (KeyError: 'store')."""
    from search.results import summarize, write_results

    write_results(_grid({"a": "TERMINATED", "b": "TERMINATED", "c": "PENDING"}), tmp_path, "e")
    before = _bytes(tmp_path)
    df = write_results(_grid({"zz": "ERROR"}), tmp_path, "e")
    err = capsys.readouterr().err
    assert _bytes(tmp_path) == before
    assert "kept results.parquet" in err and "results.partial.parquet" in err
    part = pd.read_parquet(tmp_path / "results.partial.parquet")
    assert part["trial_id"].tolist() == ["zz"] and "KeyError" in part["error"][0]
    assert len(pd.read_csv(tmp_path / "results.partial.csv")) == 1
    assert summarize(df, tmp_path, 1.0) == EXIT_INFRA
    assert "results.partial.parquet" in capsys.readouterr().out
    # the same number finished but one of them lost is no replacement either
    write_results(_grid({"a": "TERMINATED", "x": "TERMINATED"}), tmp_path, "e")
    assert _bytes(tmp_path) == before
    # more finished (every old one included) replaces it
    write_results(_grid({"a": "TERMINATED", "b": "TERMINATED", "c": "TERMINATED"}), tmp_path, "e")
    assert (pd.read_parquet(tmp_path / "results.parquet")["status"] == "TERMINATED").sum() == 3


def test_a_full_disk_at_the_end_of_a_resume_exits_3_naming_the_file(base, tmp_path, monkeypatch, capsys):
    exp = _copy(base, tmp_path)
    before = _bytes(exp)

    def full(self, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    rc = _run("resume", exp, "--executor", "local", "--exclude", "ticket.method=random")  # nothing left to run
    err = capsys.readouterr().err
    assert rc == EXIT_INFRA
    assert "no space left on device" in err and str(exp / "results.parquet") in err
    assert _bytes(exp) == before


@pytest.mark.parametrize("damage, named", [
    (lambda e: (e / "tuner.pkl").write_bytes(b""), "tuner.pkl is empty"),
    (lambda e: (e / "tuner.pkl").write_bytes(pickle.dumps({"param_space": {"store": "/s"}})[:-7]),
     "tuner.pkl is cut short"),
    (lambda e: ((e / "tuner.pkl").write_bytes(pickle.dumps({})),
                (e / "experiment_state-2025-01-01_00-00-00.json").write_text('{"trial_data": [["x"')),
     "experiment_state-2025-01-01_00-00-00.json is cut short"),
])
def test_resume_of_a_damaged_tune_state_names_it_and_keeps_what_finished(base, tmp_path, capsys, damage, named):
    """The tester's first resume after a full disk: `error: EOFError: Ran out of input`, nothing said about why."""
    exp = _copy(base, tmp_path)
    damage(exp)
    before = _bytes(exp)
    assert _run("resume", exp) == EXIT_INFRA  # the Ray executor; stops before Ray starts
    err = capsys.readouterr().err
    assert named in err and "Tune state is damaged" in err
    assert "results.parquet (3 trials, 2 finished) is kept unchanged" in err
    assert _bytes(exp) == before


# ---------------------------------------------------------------------- 2. report on damaged results files

def _half(f: Path, mid_line: bool = True) -> None:
    data = f.read_bytes()
    cut = len(data) // 2
    if not mid_line:
        cut = data.rindex(b"\n", 0, cut) + 1
    elif data[cut - 1:cut] == b"\n":
        cut -= 1
    f.write_bytes(data[:cut])


def test_report_on_half_a_parquet_uses_the_csv_with_a_warning(base, tmp_path, capsys):
    exp = _copy(base, tmp_path)
    _half(exp / "results.parquet")
    assert _run("report", exp) == 0
    err = capsys.readouterr().err
    assert f"warning: {exp / 'results.parquet'} is damaged" in err and "using results.csv" in err
    assert "3 trials" in (exp / "analysis" / "report.md").read_text()


@pytest.mark.parametrize("what", ["half", "empty"])
def test_report_on_a_damaged_csv_alone_exits_2_naming_it(base, tmp_path, capsys, what):
    exp = _copy(base, tmp_path)
    (exp / "results.parquet").unlink()
    if what == "half":
        _half(exp / "results.csv")
    else:
        (exp / "results.csv").write_bytes(b"")
    assert _run("report", exp) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: no intact results")
    assert "results.csv is " + ("cut short" if what == "half" else "empty") in err
    assert not (exp / "analysis" / "report.md").exists()


def test_report_with_both_copies_damaged_exits_2_naming_both(base, tmp_path, capsys):
    exp = _copy(base, tmp_path)
    _half(exp / "results.parquet")
    _half(exp / "results.csv")
    assert _run("report", exp) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.parquet is unreadable" in err and "results.csv is cut short" in err


def test_load_results_skips_a_csv_shorter_than_the_parquet(base, tmp_path):
    from analysis.results_io import load_results

    exp = _copy(base, tmp_path)
    full = pd.read_parquet(exp / "results.parquet")
    _half(exp / "results.csv", mid_line=False)  # whole lines: only the row count tells
    warned = []
    df = load_results(exp, warn=warned.append)
    assert len(df) == len(full) and df.attrs["results_file"] == str(exp / "results.parquet")
    assert len(warned) == 1 and str(exp / "results.csv") in warned[0] and "cut short" in warned[0]
    (exp / "results.parquet").unlink()  # the short CSV alone: only the trial directories tell (issue 21)
    assert len(load_results(exp, warn=warned.append)) < len(full) and len(warned) == 2
    assert "have no row" in warned[1] and str(exp / "results.csv") in warned[1]


def test_report_cross_checks_the_rows_against_the_trial_dirs_and_warns_at_the_top(base, tmp_path, capsys):
    """The tester's half parquet plus a CSV cut at a row boundary: "4 trials", "No failed trials" (there were 7),
    the warning on stderr only."""
    exp = _copy(base, tmp_path)
    _half(exp / "results.parquet")
    lines = (exp / "results.csv").read_text().splitlines(keepends=True)
    (exp / "results.csv").write_text("".join(lines[:2]))  # the header and one row: whole lines, nothing looks cut
    assert _run("report", exp) == 0
    err = capsys.readouterr().err
    assert "have no row" in err
    md = (exp / "analysis" / "report.md").read_text()
    top = md.split("\n## ", 1)[0]  # before the first section
    assert "results.parquet is damaged" in top and "using results.csv" in top
    assert "1 rows, but 1 of the 2 trial directories" in top and "have no row" in top


# ---------------------------------------------------------------------------------- 3. a moved experiment

def test_a_moved_experiment_resumes_where_it_is_now(base, tmp_path, capsys):
    old = _copy(base, tmp_path / "old")
    new = tmp_path / "new" / "renamed"
    new.parent.mkdir()
    shutil.move(old, new)
    assert _run("resume", new, "--executor", "local", "--workers", "1") == 0
    assert f"{new} was created as {old}" in capsys.readouterr().out
    df = pd.read_parquet(new / "results.parquet")
    assert (df["status"] == "TERMINATED").all() and len(df) == 3
    assert set(df["experiment"]) == {"renamed"}
    assert all(Path(d).parent == new and Path(d).is_dir() for d in df["trial_dir"])
    assert not old.exists()
    # the original (still there: the fixture's) was not touched either
    assert sorted(pd.read_parquet(base / "results.parquet")["status"]) == ["PENDING", "TERMINATED", "TERMINATED"]


def test_a_moved_ray_experiment_is_restored_from_where_it_is_now(base, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    import ray.tune

    import search.tuner as tuner

    orig = _copy(base, tmp_path / "orig")
    new = Path(shutil.copytree(orig, tmp_path / "moved" / NAME))  # space.json names orig, which still exists
    (new / "tuner.pkl").write_bytes(pickle.dumps({}))
    (new / "experiment_state-2025-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    asked = []

    def restore(path, **kw):
        asked.append(path)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ray.tune.Tuner, "restore", restore)
    monkeypatch.setattr(tuner, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(tuner, "shared_inputs", lambda space: None)
    monkeypatch.setattr(tuner, "trainable", lambda space, shared: "trainable")
    assert _run("resume", new) == EXIT_INFRA
    assert asked == [str(new)]
    assert "RuntimeError: stop here" in capsys.readouterr().err
    tuner._write_partial(str(new.parent), new.name, new, None)  # Ctrl-C's partial results: the same place
    assert asked[-1] == str(new)


# ----------------------------------------------------------------------------- 4. the trust boundary

@pytest.mark.parametrize("target, mode", [(".", 0o777), (".", 0o775), ("tuner.pkl", 0o666), ("space.json", 0o664)])
def test_resume_refuses_a_directory_others_can_write(base, tmp_path, capsys, target, mode):
    exp = _copy(base, tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (exp / "tuner.pkl").write_bytes(pickle.dumps(Evil()))
    (exp / "tuner.pkl").chmod(0o644)
    (exp / target).chmod(mode)
    before = _bytes(exp)
    rc = _run("resume", exp)
    err = capsys.readouterr().err
    assert not marker.exists(), "the crafted tuner.pkl ran"
    assert rc == EXIT_BAD_INPUT
    path = exp if target == "." else exp / target
    assert f"refusing to resume {exp}: {path} is writable by" in err and "chmod -R go-w" in err
    assert not marker.exists() and _bytes(exp) == before
    (exp / target).chmod(0o755 if target == "." else 0o644)  # trusted again: refused no more (stops at the Tune
    # state check here, no Ray: the crafted tuner.pkl is a complete pickle, but the experiment has no state list)
    assert _run("resume", exp) == EXIT_INFRA and not marker.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("target", [".", "space.json"])
def test_resume_refuses_a_directory_owned_by_another_user(base, tmp_path, capsys, target):
    exp = _copy(base, tmp_path)
    os.chown(exp / target, 65534, -1)
    assert _run("resume", exp, "--executor", "local") == EXIT_BAD_INPUT
    path = exp if target == "." else exp / target
    assert f"{path} is owned by uid 65534, not by you" in capsys.readouterr().err
    assert sorted(p.name for p in exp.iterdir() if p.is_dir()) == sorted(p.name for p in base.iterdir() if p.is_dir())


# ------------------------------------------------------------------- 4. a full disk under a Ray experiment (issue 21)

@pytest.fixture(scope="module")
def ray_exp(tmp_path_factory, ray_local) -> Path:
    """A finished Ray Tune experiment (the glue_minilm smoke space, its OMP variant: one trial)."""
    import yaml

    from conftest import REPO

    space = yaml.safe_load((REPO / "search_spaces/glue_minilm.yaml").read_text())
    space["variants"] = [{"method": "omp"}]
    root = tmp_path_factory.mktemp("ray")
    (root / "one.yaml").write_text(yaml.safe_dump(space))
    assert _run("run", root / "one.yaml", "--smoke", "--storage", root / "s") == 0
    return root / "s" / "one-smoke"


@contextlib.contextmanager
def _small_disk(where: Path, mb: int):
    where.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(d: Path) -> None:
    """Fill the disk of ``d`` to the last byte."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def test_a_ray_resume_on_a_full_disk_names_enospc_and_keeps_tuner_pkl_whole(ray_exp, tmp_path, capsys):
    """The tester's resume of a finished run on a full disk: exit 3, results kept, tuner.pkl whole (a real full
    tmpfs; in this Ray version the restore does not rewrite tuner.pkl, FileGuard below covers a rewrite that is
    cut short)."""
    mb = _size(ray_exp) // (1 << 20) + 8
    with _small_disk(tmp_path / "disk", mb) as disk:
        exp = _copy(ray_exp, disk)
        pkl = (exp / "tuner.pkl").read_bytes()
        before = _bytes(exp)
        _fill(disk)
        rc = _run("resume", exp)
        err = capsys.readouterr().err
        assert rc == EXIT_INFRA, err
        assert "ENOSPC" in err or "no space left on device" in err.lower()
        assert (exp / "tuner.pkl").read_bytes() == pkl  # never replaced by an empty file
        assert _bytes(exp) == before


def test_a_damaged_tune_state_never_hides_the_finished_trials_of_a_ray_experiment(ray_exp, tmp_path, capsys):
    """After a full disk: experiment_state cut short and no results written; then tuner.pkl empty."""
    exp = _copy(ray_exp, tmp_path)
    done = pd.read_parquet(exp / "results.parquet")
    for f in ("results.parquet", "results.csv"):
        (exp / f).unlink()
    state = next(exp.glob("experiment_state-*.json"))
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])
    assert _run("resume", exp) == 0  # issue 21 (faults2): every trial finished, so nothing is left to run
    err = capsys.readouterr().err
    assert "is cut short" in err and "1 trial directories (1 finished)" in err
    got = pd.read_parquet(exp / "results.parquet")  # written from the trial's own directory
    assert got["trial_id"].tolist() == done["trial_id"].tolist() and (got["status"] == "TERMINATED").all()
    assert got["best_score"].tolist() == pytest.approx(done["best_score"].tolist())
    # tuner.pkl empty, the trials' state whole: rebuilt from the space, and the resume goes on
    state.write_bytes(whole)
    (exp / "tuner.pkl").write_bytes(b"")
    assert _run("resume", exp) == 0
    assert "rebuilding it from the space" in capsys.readouterr().err
    assert (exp / "tuner.pkl").stat().st_size > 0


def test_a_file_guard_puts_back_a_tuner_pkl_cut_short_while_guarded(tmp_path):
    from search.resume_checks import FileGuard

    pkl = tmp_path / "tuner.pkl"
    good = pickle.dumps({"param_space": {"store": "/s"}, "pad": "x" * 5000})
    pkl.write_bytes(good)
    with FileGuard(pkl):
        pkl.write_bytes(b"")  # Tune's rewrite on a full disk: opened (truncated), nothing written
    assert pkl.read_bytes() == good
    with FileGuard(pkl):
        pkl.write_bytes(good[:-10])  # cut short
    assert pkl.read_bytes() == good
    newer = pickle.dumps({"param_space": {"store": "/t"}})
    with FileGuard(pkl):
        pkl.write_bytes(newer)  # a whole new one is kept
    assert pkl.read_bytes() == newer


def test_a_detached_guard_needs_no_space_to_put_back_a_cut_tuner_pkl_and_a_crash_leaves_it_recoverable(tmp_path):
    """Measured in a clean-clone CI run: Ray's rewrite of tuner.pkl on a full disk left it cut, and putting the good
    bytes back by writing failed for lack of space. A detached guard renames the good file aside before Tune runs,
    so both the rewrite and the way back need no free space."""
    from search.resume_checks import FileGuard

    pkl = tmp_path / "tuner.pkl"
    good = pickle.dumps({"param_space": {"store": "/s"}, "pad": "x" * 5000})
    pkl.write_bytes(good)
    g = FileGuard(pkl)
    g.detach()
    assert not pkl.exists() and (tmp_path / ".tuner.pkl.kept").read_bytes() == good
    with open(pkl, "wb"):  # Tune's rewrite on a full disk: a new file, nothing written
        pass
    assert g.restore() and pkl.read_bytes() == good and not (tmp_path / ".tuner.pkl.kept").exists()
    g = FileGuard(pkl)
    g.detach()
    newer = pickle.dumps({"param_space": {"store": "/t"}})
    pkl.write_bytes(newer)  # a whole rewrite is kept, the aside copy dropped
    assert not g.restore() and pkl.read_bytes() == newer and not (tmp_path / ".tuner.pkl.kept").exists()
    g = FileGuard(pkl)
    g.detach()  # ... and the driver is killed here: no tuner.pkl, the good copy aside
    assert not pkl.exists()
    assert FileGuard.recover(pkl) and pkl.read_bytes() == newer


def test_a_trial_an_interrupted_driver_left_unfinished_is_paused_not_stopped_by_the_scheduler(tmp_path):
    """Both trials stopped at step 2 of 4, and after a graceful stop Tune's live trials all read TERMINATED (measured
    with a real SIGINT): the saved state, which a resume starts from, tells them apart. ASHA's stop is saved as
    TERMINATED (EARLY_STOPPED in the results), the interrupted trial as RUNNING (PAUSED: resume continues it)."""
    from types import SimpleNamespace

    from search.local import LocalResult
    from search.results import results_frame

    cfg = {"stage": "transfer", "ticket": {"method": "omp"}, "transfer": {"task": "polarity"}}
    runs = [("asha", 2, "TERMINATED"), ("cut", 2, "RUNNING"), ("done", 4, "TERMINATED")]
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": [[json.dumps({"trial_id": n, "status": s}), "{}"] for n, _, s in runs]}))
    results = [LocalResult({"trial_id": n, "training_iteration": 1, "stage": "transfer", "step": step,
                            "total_steps": 4}, cfg, None, str(tmp_path / n), None) for n, step, _ in runs]

    class Grid(list):  # what fit() returns after a first Ctrl-C: every live trial TERMINATED
        _experiment_analysis = SimpleNamespace(trials=[SimpleNamespace(path=str(tmp_path / n), config=cfg,
                                                                       status="TERMINATED") for n, _, _ in runs])

    df = results_frame(Grid(results), "x").set_index("trial_id")
    assert df.loc["asha", "status"] == "EARLY_STOPPED"
    assert df.loc["cut", "status"] == "PAUSED"
    assert df.loc["done", "status"] == "TERMINATED"
