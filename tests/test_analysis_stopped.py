"""analysis/: trials an ASHA scheduler stopped early (status EARLY_STOPPED, lower-bound scores) are marked in the
tables, counted in the correlations, drawn hollow, and can be excluded; empty figures are skipped with a reason;
score vs sparsity dodges methods apart.

All inputs are synthetic results frames (no ticket files, no Ray)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from analysis import correlation as C
from analysis import figures as F
from analysis import report as R
from analysis import tables as T
from analysis.results_io import DAGGER, stopped_mask

TICKETS = [  # ticket_id, method, objective, sparsity, steps, mlm_loss
    ("omp50", "omp", None, 0.5, 0, 6.0),
    ("tamt50", "tamt", "mlm", 0.5, 40, 3.0),
    ("imp50", "imp", "mlm", 0.5, 40, 5.0),
    ("omp70", "omp", None, 0.7, 0, 8.0),
    ("tamt70", "tamt", "mlm", 0.7, 40, 4.0),
    ("imp70", "imp", "mlm", 0.7, 40, 7.0),
]
STOPPED = {("imp50", "rte", 0), ("imp50", "rte", 1), ("tamt70", "cola", 1), ("omp70", "rte", 0)}
N_SCORED = len(TICKETS) * 2 * 2 + 2  # 6 tickets x 2 tasks x 2 seeds + dense on 2 tasks


def make_results(exp, csv: bool = False) -> pd.DataFrame:
    """Transfer rows only (losses on the rows themselves), every ticket at 40 steps (or 0), 4 rows EARLY_STOPPED,
    one ERROR row; written as results.parquet (or .csv)."""
    rows = []
    for tid, method, obj, sp, steps, mlm in TICKETS:
        for task in ("rte", "cola"):
            for seed in (0, 1):
                st = "EARLY_STOPPED" if (tid, task, seed) in STOPPED else "TERMINATED"
                rows.append(dict(trial_id=f"tr_{tid}_{task}_{seed}", experiment="asha", stage="transfer", status=st,
                                 model="tiny", method=method, init="omp" if method == "tamt" else None,
                                 objective=obj, sparsity=sp, steps=steps, seed=seed, ticket_id=tid, task=task,
                                 mlm_loss=mlm, kd_loss=mlm / 10, best_score=90 - 5 * mlm + seed - 10 * (st != "TERMINATED"),
                                 time_total_s=10.0))  # fmt: skip
    for task in ("rte", "cola"):
        rows.append(dict(trial_id=f"tr_dense_{task}", experiment="asha", stage="transfer", status="TERMINATED",
                         model="tiny", method="dense", sparsity=0.0, steps=0, seed=0, task=task, mlm_loss=2.0,
                         kd_loss=0.0, best_score=85.0, time_total_s=10.0))  # fmt: skip
    rows.append(dict(trial_id="tr_err", experiment="asha", stage="transfer", status="ERROR", model="tiny",
                     method="omp", sparsity=0.5, ticket_id="omp50", task="rte", seed=2, error="boom"))
    df = pd.DataFrame(rows)
    exp.mkdir(parents=True, exist_ok=True)
    if csv:
        df.to_csv(exp / "results.csv", index=False)
    else:
        df.to_parquet(exp / "results.parquet", index=False)
    return df


# ---------------------------------------------------------------------------------------------------------------
# tables


def test_tidy_marks_stopped_rows_and_exclusion_drops_them(tmp_path):
    df = make_results(tmp_path / "e")
    td = T.tidy(df, similarity=False)
    assert len(td) == N_SCORED and td["stopped_early"].dtype == bool
    got = {(r.ticket_id, r.task, r.seed) for r in td.itertuples() if r.stopped_early}
    assert got == STOPPED
    avg = T.average_over_tasks(td).set_index("ticket_id")
    assert avg["n_stopped"].to_dict() == {"omp50": 0, "tamt50": 0, "imp50": 2, "omp70": 1, "tamt70": 1, "imp70": 0,
                                          "dense:tiny": 0}  # fmt: skip
    assert list(stopped_mask(avg.reset_index())) == list(avg["n_stopped"] > 0)

    ex = T.tidy(df, similarity=False, exclude_stopped=True)
    assert len(ex) == N_SCORED - len(STOPPED) and not ex["stopped_early"].any()
    assert not {(r.ticket_id, r.task, r.seed) for r in ex.itertuples()} & STOPPED
    avg_ex = T.average_over_tasks(ex).set_index("ticket_id")
    assert "imp50" not in avg_ex.index  # both rte seeds were cut short: no rte score left
    assert avg_ex.loc["tamt70", "n_seeds"] == 1 and (avg_ex["n_stopped"] == 0).all()


def test_merged_trials_keep_the_kept_trials_mark(tmp_path):
    base = dict(stage="transfer", model="tiny", method="omp", sparsity=0.5, ticket_id="t", task="rte", seed=0)
    df = pd.DataFrame([{**base, "trial_id": "a", "status": "TERMINATED", "best_score": 50.0},
                       {**base, "trial_id": "b", "status": "EARLY_STOPPED", "best_score": 60.0}])  # fmt: skip
    kept = T.tidy(df, similarity=False).iloc[0]
    assert kept["trial_id"] == "b" and kept["stopped_early"] and kept["n_trials"] == 2
    kept = T.tidy(df, similarity=False, exclude_stopped=True).iloc[0]
    assert kept["trial_id"] == "a" and not kept["stopped_early"] and kept["n_trials"] == 1


def test_correlations_count_cut_short_points(tmp_path):
    td = T.tidy(make_results(tmp_path / "e"), similarity=False)
    out = C.loss_score_correlations(td, T.average_over_tasks(td), n_boot=20)
    row = lambda task, g: out[(out["task"] == task) & (out["group"] == g) & (out["x"] == "mlm_loss")].iloc[0]  # noqa: E731
    assert row("average", "all")["n"] == 7 and row("average", "all")["n_stopped"] == 3
    assert "3 of 7 points cut short" in row("average", "all")["note"]
    assert row("average", 0.5)["n_stopped"] == 1 and "1 of 3 points cut short" in row("average", 0.5)["note"]
    assert row("rte", "all")["n_stopped"] == 2  # imp50 (both seeds), omp70 (one seed): one point per ticket
    assert row("cola", 0.5)["n_stopped"] == 0 and row("cola", 0.5)["note"] == ""
    plain = C.correlate(td, "mlm_loss", "best_score")
    assert (plain["n_stopped"] == 0).all()


# ---------------------------------------------------------------------------------------------------------------
# figures


def test_stopped_points_are_hollow_with_a_legend_entry(tmp_path):
    td = T.tidy(make_results(tmp_path / "e"), similarity=False)
    avg = T.average_over_tasks(td)
    fig = F.build_loss_score_figure(avg, "mlm_loss", "avg_score")
    assert F.hollow_points(fig) == {"sparsity 0.5": {"IMP": 1}, "sparsity 0.7": {"OMP": 1, "TAMT-MLM": 1}}
    assert F.panel_points(fig)["sparsity 0.5"] == {"TAMT-MLM": 1, "IMP": 1, "OMP": 1, "Dense": 1}  # hollow counted
    hollow = [c for ax in fig.axes for c in ax.collections if c.get_gid() == F.STOPPED_GID]
    assert hollow and all(len(c.get_facecolors()) == 0 and len(c.get_edgecolors()) for c in hollow)
    filled = [c for ax in fig.axes for c in ax.collections if c.get_gid() != F.STOPPED_GID]
    assert filled and all(len(c.get_facecolors()) for c in filled)
    assert F.HOLLOW_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]

    legend = fig.legends[0]
    imp = legend.legend_handles[[t.get_text() for t in legend.get_texts()].index("IMP")]
    assert len(imp.get_facecolors())  # the method's legend entry is filled although its 0.5 point is hollow

    sp = F.build_score_vs_sparsity(avg)
    assert F.hollow_points(sp) == {"score vs sparsity": {"IMP": 1, "OMP": 1, "TAMT-MLM": 1}}
    per_task = F.build_score_vs_sparsity(td, "best_score", facet="task")
    assert F.hollow_points(per_task) == {"task cola": {"TAMT-MLM": 1}, "task rte": {"IMP": 1, "OMP": 1}}
    clean = F.build_loss_score_figure(avg[avg["n_stopped"] == 0], "mlm_loss", "avg_score")
    assert F.hollow_points(clean) == {}
    assert F.HOLLOW_LABEL not in [t.get_text() for t in clean.legends[0].get_texts()]


def test_dodge_offsets_methods_at_one_sparsity():
    labels = ["OMP", "Dense", "TAMT-MLM", "IMP", "OMP"]
    off = F.dodge(labels, [0.0, 0.5, 0.7])
    assert off["Dense"] == 0.0
    assert [off[l] for l in ("TAMT-MLM", "IMP", "OMP")] == pytest.approx([-0.04, 0.0, 0.04])  # legend order
    assert F.dodge(labels, [0.5, 0.52])["OMP"] == pytest.approx(0.005)  # at most half the smallest gap
    assert F.dodge(["IMP"], [0.5]) == {"Dense": 0.0, "IMP": 0.0}
    assert F.dodge(labels, [0.7, 0.5, 0.0]) == off  # deterministic


def test_score_vs_sparsity_keeps_every_method_visible(tmp_path):
    avg = T.average_over_tasks(T.tidy(make_results(tmp_path / "e"), similarity=False))
    fig = F.build_score_vs_sparsity(avg)
    eb = F.errorbar_points(fig)["score vs sparsity"]
    xs = [x for lab, pts in eb.items() if lab != "Dense" for x, _ in pts if abs(x - 0.5) < 0.1]
    assert len(xs) == 3 and len(set(xs)) == 3  # three methods at 0.5, three distinct x
    ax = fig.axes[0]
    assert [float(t) for t in ax.get_xticks()] == [0.0, 0.5, 0.7]


def test_figures_with_nothing_to_show_are_skipped(tmp_path):
    avg = T.average_over_tasks(T.tidy(make_results(tmp_path / "e"), similarity=False))
    assert F.steps_skip_reason(avg) == "every ticket used the same step count (40)"
    two = avg.assign(steps=np.where(avg["sparsity"] == 0.7, 80, avg["steps"]))
    assert F.steps_skip_reason(two) == "no sparsity has tickets at two or more step counts"
    assert F.steps_skip_reason(avg.assign(steps=0)) == "no TAMT or IMP ticket with steps > 0"
    assert F.steps_skip_reason(two.assign(steps=np.where(two["ticket_id"] == "imp50", 80, two["steps"]))) is None
    assert F.sparsity_skip_reason(avg[avg["sparsity"] == 0.5]) == "every score is at one sparsity (0.5)"
    assert F.sparsity_skip_reason(avg) is None
    assert F.loss_skip_reason(avg.assign(kd_loss=np.nan), "kd_loss") == "no ticket has both kd_loss and avg_score"

    out = tmp_path / "figs"
    out.mkdir()
    (out / "steps.png").write_bytes(b"stale")
    skipped: list[str] = []
    assert F.plot_steps(avg, out, skipped=skipped) == []
    assert skipped == ["steps figure skipped: every ticket used the same step count (40)"]
    assert not (out / "steps.png").exists()  # a stale file of an earlier run is removed
    assert F.plot_score_vs_sparsity(avg[avg["sparsity"] == 0.5], out, skipped=skipped) == []
    assert len(skipped) == 2 and not (out / "score_vs_sparsity.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# report


def _md(exp, **kw) -> str:
    return R.write_report(exp, n_boot=20, similarity=False, html_too=False, **kw).read_text()


def test_report_marks_cut_short_trials(tmp_path):
    exp = tmp_path / "e"
    make_results(exp, csv=True)
    md = _md(exp)
    assert "failed:" not in md.split("## What is missing")[1]  # no section of the report broke
    head = md.split("## What ran")[0]
    assert f"**Cut-short trials included**: {len(STOPPED)} of the {N_SCORED} scored transfer trials" in head
    assert f"{len(STOPPED)} of the {N_SCORED} tidy rows" in head
    # tidy: a stopped_early column and a dagger on exactly the cut-short scores
    tidy_lines = [l for l in md.split("## Tidy results")[1].split("##")[0].splitlines() if l.startswith("| ")]
    header = [c.strip() for c in tidy_lines[0].strip("|").split("|")]
    i_score, i_st = header.index("best_score"), header.index("stopped_early")
    cells = [[c.strip() for c in l.strip("|").split("|")] for l in tidy_lines[1:]]
    assert len(cells) == N_SCORED
    assert all(c[i_score].endswith(DAGGER) == (c[i_st] == "True") for c in cells)
    assert sum(c[i_st] == "True" for c in cells) == len(STOPPED)
    # average: n_stopped column; summary cells count the cut-short tickets
    avg_part = md.split("## Average over tasks")[1].split("## Tidy results")[0]
    avg_head = [c.strip() for c in avg_part.split("\n| ", 1)[1].split("\n", 1)[0].strip("|").split("|")]
    assert "n_stopped" in avg_head and "avg_score" in avg_head
    assert f"(n=1, 1{DAGGER})" in avg_part and "(n=1)" in avg_part
    # correlations: the note counts cut-short points
    assert "3 of 7 points cut short (lower bounds)" in md
    # figures: hollow caption; steps skipped with its reason, no steps.png
    assert "Hollow markers" in md
    assert "steps figure skipped: every ticket used the same step count (40)." in md
    figs = exp / "analysis" / "figures"
    assert not (figs / "steps.png").exists() and (figs / "score_vs_sparsity.png").is_file()
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (exp / "analysis" / link).is_file(), link
    back = pd.read_csv(exp / "analysis" / "tidy.csv")
    assert back["stopped_early"].sum() == len(STOPPED)
    assert pd.read_csv(exp / "analysis" / "correlations.csv")["n_stopped"].max() > 0


def test_report_can_exclude_cut_short_trials(tmp_path):
    exp = tmp_path / "e"
    make_results(exp)
    assert R.main([str(exp), "--exclude-stopped", "--n-boot", "20", "--no-similarity"]) == 0
    md = (exp / "analysis" / "report.md").read_text()
    head = md.split("## What ran")[0]
    assert f"**Cut-short trials excluded** (`--exclude-stopped`): {len(STOPPED)} of the {N_SCORED}" in head
    assert f"{N_SCORED - len(STOPPED)} rows (ticket × task × seed)" in md
    assert DAGGER not in md and "Hollow markers" not in md and "cut short (lower bounds)" not in md
    assert "task rte missing for ticket imp50" in md
    assert len(pd.read_csv(exp / "analysis" / "tidy.csv")) == N_SCORED - len(STOPPED)
    assert pd.read_csv(exp / "analysis" / "correlations.csv")["n_stopped"].max() == 0


def test_report_without_cut_short_trials_says_so(tmp_path):
    exp = tmp_path / "e"
    df = make_results(exp)
    df.assign(status=df["status"].replace("EARLY_STOPPED", "TERMINATED")).to_parquet(exp / "results.parquet")
    md = _md(exp, exclude_stopped=True)
    assert "**Cut-short trials: none.** No scored transfer trial was stopped early by the scheduler " \
           "(`--exclude-stopped` had nothing to leave out)." in md
    body = md.split("## Columns")[0]
    assert DAGGER not in body and "n_stopped" not in body and "stopped_early" not in body


def test_run_search_report_passes_exclude_stopped(tmp_path, monkeypatch):
    import analysis.report
    import run_search

    exp = tmp_path / "e"
    make_results(exp)
    seen = {}
    monkeypatch.setattr(analysis.report, "write_report", lambda d, **kw: seen.update(kw, dir=d) or d / "r.md")
    assert run_search.main(["report", str(exp), "--exclude-stopped"]) == 0
    assert seen == {"dir": exp, "exclude_stopped": True}
    assert run_search.main(["report", str(exp)]) == 0 and seen["exclude_stopped"] is False
