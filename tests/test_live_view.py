"""The compact live view of a Ray Tune run (search/live_view.py): progress, phases, ETA, one row per trial; the
trials' log lines in their own files, not on the console."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from search.live_view import LiveView


@dataclass
class FakeTrial:
    trial_id: str
    status: str
    last_result: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"T_{self.trial_id}"


def _trials():
    return [
        FakeTrial("a", "TERMINATED", {"training_iteration": 4, "stage": "transfer", "step": 60, "total_steps": 60,
                                      "score": 0.8}),
        FakeTrial("b", "TERMINATED", {"training_iteration": 1, "stage": "transfer", "step": 15, "total_steps": 60,
                                      "score": 0.5}),  # cut by ASHA
        FakeTrial("c", "ERROR", {}),
        FakeTrial("d", "RUNNING", {"training_iteration": 2, "stage": "find", "step": 20, "total_steps": 40,
                                   "score": None}),
        FakeTrial("e", "RUNNING", {}),
        FakeTrial("f", "PENDING", {}),
    ]


def test_header_counts_ended_kinds_and_extrapolates_eta():
    view = LiveView("score", "max", stream=io.StringIO())
    view.t0 -= 100  # 100 s elapsed
    h = view.header(_trials())
    assert h.startswith("== 3/6 trials ended (1 finished, 1 stopped early, 1 failed), 2 running, 1 pending")
    # fraction done = (3 ended + 0.5 + 0 + 0) / 6 -> ETA = 100 * (1 - f) / f = 71 s
    assert "ETA ~71 s" in h


def test_rows_label_phases_and_mark_what_ended_once():
    out = io.StringIO()
    view = LiveView("score", "max", stream=out)
    trials = _trials()
    for t in trials:
        if t.last_result.get("score") is not None:
            view.on_trial_result(0, trials, t, t.last_result)
    view.print(trials)
    text = out.getvalue()
    assert "T_d" in text and "find" in text and "20/40" in text
    assert "T_e" in text and "finding its ticket or starting" in text
    assert "STOPPED EARLY" in text and "FAILED" in text and "fine-tune" in text
    assert "T_f" not in text  # pending trials are counted, not listed
    out.truncate(0), out.seek(0)
    view.print(trials)  # the ended trials were shown once
    assert "STOPPED EARLY" not in out.getvalue() and "T_d" in out.getvalue()


def test_best_follows_the_mode():
    view = LiveView("kd_loss", "min", stream=io.StringIO())
    t = FakeTrial("x", "RUNNING")
    for v in (0.3, 0.1, 0.2):
        view.on_trial_result(0, [t], t, {"kd_loss": v})
    assert view.best["x"] == 0.1


@pytest.mark.slow
def test_a_tune_run_shows_the_live_view_and_keeps_trial_logs_in_files(ray_local, tmp_path, capfd):
    import run_search

    assert run_search.main(["run", "glue_minilm", "--smoke", "--storage", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    assert "trials ended" in out and "fine-tune" in out
    assert "| fine-tune]" not in out + err  # trial log lines are not on the console
    logs = list((tmp_path / "glue_minilm-smoke").glob("*/log.txt"))
    assert len(logs) == 3
    assert all("| fine-tune] step" in Path(p).read_text() for p in logs)
