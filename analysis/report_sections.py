"""The report's sections, each written into a :class:`~analysis.document.Doc`: what ran, the cut-short statement,
the average and tidy tables, the correlations, the figures and the failed trials.

Scores of trials the scheduler (ASHA) stopped early are lower bounds: the tables mark them with
:data:`~analysis.results_io.DAGGER` (and a footnote), the correlation notes count them, the figures draw them hollow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import correlation as C
from . import figures as F
from .document import Doc
from .results_io import (
    DAGGER, DAGGER_NOTE, EARLY_STOPPED, FINISHED, _col, _norm_str, _stage, _status, fmt_num, mark_stopped,
    stopped_mask,
)
from .config_keys import by_key, config_columns, short
from .tables import excluded_transfers

HOLLOW_CAPTION = ("Hollow markers: scores of trials the scheduler (ASHA) stopped before their last step, lower "
                  "bounds (for a mean: at least one score averaged is one).")  # fmt: skip
DODGE_CAPTION = "In score vs sparsity, methods at one sparsity are offset slightly along x so none hides another."


def counts(df: pd.DataFrame, rows: str, cols: str) -> pd.DataFrame:
    if rows not in df.columns or cols not in df.columns:
        return pd.DataFrame()
    d = df[[rows, cols]].astype(object).fillna("—").astype(str)
    return pd.crosstab(d[rows], d[cols]).reset_index()


def short_error(v: Any, n_lines: int = 4, n_chars: int = 600) -> str:
    s = _norm_str(v) or ""
    lines = [l for l in s.strip().splitlines() if l.strip()]
    s = "\n".join(lines[-n_lines:])
    return s if len(s) <= n_chars else "…" + s[-n_chars:]


def stopped_counts(df: pd.DataFrame) -> tuple[int, int]:
    """(scored transfer trials stopped early by the scheduler, scored transfer trials): finished, with a
    best_score."""
    tr = df[_stage(df) == "transfer"]
    st = _status(tr)
    scored = st.isin(FINISHED) & pd.to_numeric(_col(tr, "best_score"), errors="coerce").notna()
    return int((scored & st.eq(EARLY_STOPPED)).sum()), int(scored.sum())


def stopped_statement(df: pd.DataFrame, td: pd.DataFrame, exclude_stopped: bool) -> str:
    """The sentence at the top of the report: were cut-short trials included or excluded, and how many."""
    n_cut, n_scored = stopped_counts(df)
    if not n_cut:
        return ("**Cut-short trials: none.** No scored transfer trial was stopped early by the scheduler"
                + (" (`--exclude-stopped` had nothing to leave out)." if exclude_stopped else "."))
    what = (f"{n_cut} of the {n_scored} scored transfer trials were stopped early by the scheduler (ASHA) before "
            "their last step")  # fmt: skip
    if exclude_stopped:
        return (f"**Cut-short trials excluded** (`--exclude-stopped`): {what}; they are left out of every table, "
                "correlation and figure below.")  # fmt: skip
    k = int(stopped_mask(td).sum()) if len(td) else 0
    return (f"**Cut-short trials included**: {what}, so their scores are lower bounds; {k} of the {len(td)} tidy "
            f"rows keep such a score. They are marked {DAGGER} in the tables (`stopped_early` / `n_stopped` in the "
            "files), counted in the correlation notes and drawn hollow in the figures; `--exclude-stopped` leaves "
            "them out.")  # fmt: skip


def what_ran(doc: Doc, df: pd.DataFrame, d: pd.DataFrame) -> None:
    """Counts per stage/status, method/sparsity and task/status, and wall time (``d``: df with _stage, _status)."""
    doc.h(2, "What ran")
    doc.p("Trials per stage and status:")
    doc.table(counts(d, "_stage", "_status").rename(columns={"_stage": "stage"}))
    if "time_total_s" in df.columns:
        wt = d.assign(t=pd.to_numeric(d["time_total_s"], errors="coerce")).groupby("_stage")["t"].sum()
        doc.p("Wall time (sum of trial time_total_s): " + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in wt.items())
              + f"; total {wt.sum() / 3600:.2f} h.")  # fmt: skip
    if {"method", "sparsity"} <= set(df.columns):
        doc.p("Trials per method and sparsity (all stages):")
        doc.table(counts(d, "method", "sparsity"))
    if "task" in df.columns:
        doc.p("Transfer trials per task and status:")
        doc.table(counts(d[d["_stage"] == "transfer"], "task", "_status"))


def summary_cells(summ: pd.DataFrame) -> list[str]:
    """"mean ± std (n=N)" per row of :func:`analysis.figures.sparsity_summary`, ", k†" added when k rows were cut
    short."""
    out = []
    for m, s, n, k in zip(summ["mean"], summ["std"], summ["n"], summ["n_stopped"]):
        cell = f"{m:.2f} ± {s:.2f}" if np.isfinite(s) else f"{m:.2f}"
        out.append(f"{cell} (n={n}{f', {int(k)}{DAGGER}' if k else ''})")
    return out


def average_section(doc: Doc, avg: pd.DataFrame) -> None:
    doc.h(2, "Average over tasks")
    if not len(avg):
        doc.p("No ticket has a finished score for every task yet.")
        return
    doc.p(f"Mean best_score over {avg['n_tasks'].iloc[0]} task(s) ({avg['tasks'].iloc[0]}), each first "
          "averaged over fine-tuning seeds; only tickets with every task. File: `average.csv`.")  # fmt: skip
    stopped = stopped_mask(avg)
    keys = config_columns(avg)  # searched values kept apart (e.g. an lr grid): a row per ticket and value
    cols = [c for c in ("label", "sparsity", "steps", *keys, "mlm_loss", "kd_loss", "kd_loss_mse", "omp_similarity",
                        "avg_score", "score_std_seeds", "n_tasks", "n_seeds", "n_stopped", "ticket_id")
            if c in avg.columns and (c != "n_stopped" or stopped.any())]  # fmt: skip
    doc.table(avg[cols].assign(avg_score=mark_stopped(avg["avg_score"], stopped)).rename(columns=short))
    if stopped.any():
        doc.p(f"_{DAGGER} the average includes n_stopped score(s) of trials stopped early by the scheduler (ASHA) "
              "before their last step: a lower bound._")  # fmt: skip
    summ = F.sparsity_summary(avg, "avg_score")
    if len(summ):
        doc.p("Per method and sparsity (mean ± std over tickets):")
        wide = summ.assign(cell=summary_cells(summ))
        doc.table(wide.pivot(index="label", columns="sparsity", values="cell").reset_index())
        if summ["n_stopped"].gt(0).any():
            doc.p(f"_(n=N, k{DAGGER}): k of the N tickets' averages include a score of a trial stopped early by "
                  "the scheduler (ASHA): a lower bound._")  # fmt: skip


def tidy_section(doc: Doc, td: pd.DataFrame, tidy_rows: int) -> None:
    doc.h(2, "Tidy results")
    if not len(td):
        doc.p("No finished transfer trials.")
        return
    keys = config_columns(td)  # the searched values that tell trials apart (e.g. transfer.lr)
    doc.p(f"{len(td)} rows (ticket × task × seed{' × searched values' if keys else ''}) of finished transfer "
          f"trials; first {min(tidy_rows, len(td))} shown. File: `tidy.csv`.")  # fmt: skip
    stopped = stopped_mask(td)
    if keys:
        doc.p("Searched values that differ between the trials (a row per value): "
              + ", ".join(f"`{short(k)}`" for k in keys) + ".")
    cols = [c for c in ("label", "sparsity", "steps", "task", "seed", *keys, "best_score", "stopped_early",
                        "mlm_loss", "kd_loss", "kd_loss_mse", "omp_similarity", "loss_source", "n_trials",
                        "ticket_id") if c in td.columns and (c != "stopped_early" or stopped.any())]  # fmt: skip
    doc.table(td[cols].assign(best_score=mark_stopped(td["best_score"], stopped)).rename(columns=short),
              max_rows=tidy_rows)
    if stopped.any():
        doc.p(f"_{DAGGER_NOTE} {int(stopped.sum())} of the {len(td)} rows._")


def correlation_section(doc: Doc, corr: pd.DataFrame | None, n_boot: int, seed: int, out: Path) -> None:
    doc.h(2, "Pre-training loss vs downstream score")
    if corr is None or not len(corr):
        doc.p("Nothing to correlate yet.")
        return
    corr.to_csv(out / "correlations.csv", index=False)
    doc.p(f"Pearson / Spearman / Kendall (scipy), p-values, and {int(100 * 0.95)} % percentile bootstrap CIs "
          f"({n_boot} seeded resamples of (ticket, score) pairs, seed {seed}); per task, seeds are averaged "
          "per ticket first. Groups with n < 3 are NaN. File: `correlations.csv`.")  # fmt: skip
    n_st = pd.to_numeric(corr.get("n_stopped", pd.Series(0, index=corr.index)), errors="coerce").fillna(0)
    if n_st.gt(0).any():
        doc.p("Some points are cut short: the note says how many of a correlation's n points include a score of a "
              "trial stopped early by the scheduler (a lower bound; `n_stopped` in the file).")  # fmt: skip
    else:
        doc.p("No point of any correlation includes a score of a trial stopped early by the scheduler.")
    show = corr.copy()
    for c in C.COEFS:
        show[c] = [f"{v:.3f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(v) else ""
                   for v, lo, hi in zip(show[c], show[f"{c}_ci_low"], show[f"{c}_ci_high"])]  # fmt: skip
    keep = ["task", "x", "group", "n", "pearson", "pearson_p", "spearman", "spearman_p", "kendall", "kendall_p",
            "note"]  # fmt: skip
    for task in ["average"] + sorted(t for t in show["task"].unique() if t != "average"):
        sub = show[show["task"] == task]
        if len(sub):
            doc.h(3, "Average over tasks" if task == "average" else f"Task {task}")
            doc.table(sub[keep].rename(columns={"x": "loss", "group": "sparsity"}))


def figures_section(doc: Doc, td: pd.DataFrame, avg: pd.DataFrame, fig_dir: Path,
                    guarded: Callable[..., Any]) -> list[Path]:  # fmt: skip
    """The main figures (skipped ones explained), linked as PNG with an SVG link; returns the files written."""
    doc.h(2, "Figures")
    skipped: list[str] = []

    def main_figs() -> list[Path]:
        paths: list[Path] = []
        if len(avg):
            paths += F.plot_loss_score(avg, fig_dir, "avg_score", skipped=skipped)
            paths += F.plot_score_vs_sparsity(avg, fig_dir, "avg_score", skipped=skipped)
            paths += F.plot_steps(avg, fig_dir, "avg_score", skipped=skipped)
        if len(td):
            paths += F.plot_score_vs_sparsity(td, fig_dir, "best_score", facet="task", name="score_vs_sparsity_tasks",
                                              skipped=skipped)  # fmt: skip
            if not len(avg):  # no average yet: the main figure for the task with the most tickets
                task = td.groupby("task")["ticket_id"].nunique().idxmax()
                one = td[td["task"] == task]
                paths += F.plot_loss_score(one, fig_dir, "best_score", prefix=f"{task}_", skipped=skipped)
                paths += F.plot_steps(one, fig_dir, "best_score", name=f"{task}_steps", skipped=skipped)
        return paths

    figs = guarded("figures", main_figs, []) or []
    pngs = [p for p in figs if p.suffix == ".png"]
    for s in skipped:
        doc.p(f"{s}.")
    if pngs:
        caption = [HOLLOW_CAPTION] if len(td) and stopped_mask(td).any() else []
        if any(p.stem.startswith("score_vs_sparsity") for p in pngs):
            caption.append(DODGE_CAPTION)
        if caption:
            doc.p(" ".join(caption))
        for p in pngs:
            doc.h(3, p.stem.replace("_", " "))
            doc.img(f"figures/{p.name}", p.stem)
            doc.p(f"[PNG](figures/{p.name}) · [SVG](figures/{p.with_suffix('.svg').name})")
    else:
        doc.p("No figures (no finished scores)." if not skipped else "No other figures.")
    return figs


def failures_section(doc: Doc, df: pd.DataFrame, d: pd.DataFrame) -> None:
    """Failed trials with their errors, unfinished trials, finished transfers without a score."""
    doc.h(2, "Failed and unfinished trials")
    st = d["_status"]
    failed = d[st.isin(["ERROR"]) | _col(d, "error", None).map(_norm_str).notna()]
    if len(failed):
        doc.p(f"{len(failed)} trial(s) failed:")
        cols = [c for c in ("trial_id", "_stage", "method", "sparsity", "task", "seed", "ticket_id", "_status")
                if c in failed.columns]  # fmt: skip
        doc.table(failed[cols].rename(columns={"_stage": "stage", "_status": "status"}))
        for _, r in failed.iterrows():
            what = " ".join(f"{k}={fmt_num(r.get(k))}" for k in ("stage", "method", "sparsity", "task", "seed")
                            if k in failed.columns and fmt_num(r.get(k)))  # fmt: skip
            doc.p(f"**{fmt_num(r.get('trial_id')) or '?'}** ({what}):")
            doc.code(short_error(r.get("error")) or "(no error message recorded)")
    else:
        doc.p("No failed trials.")
    other = d[~st.isin([*FINISHED, "ERROR"])]
    if len(other):
        doc.p(f"{len(other)} trial(s) not finished (running, pending or unknown):")
        cols = [c for c in ("trial_id", "_stage", "method", "sparsity", "task", "seed", "_status",
                            "training_iteration") if c in other.columns]  # fmt: skip
        doc.table(other[cols].rename(columns={"_stage": "stage", "_status": "status"}), max_rows=100)
    ex = excluded_transfers(df)
    ex_done = ex[_status(ex).isin(FINISHED)] if len(ex) else ex
    if len(ex_done):
        doc.p(f"{len(ex_done)} finished transfer trial(s) reported no best_score and were left out of the scores.")


def best_by_note(doc: Doc, keys: list[str]) -> None:
    """The sentence saying which searched values were reduced to their best (``--best-by``)."""
    if keys:
        doc.p("**Best value picked** (`--best-by`): per ticket and task, only the trials of the value of "
              + ", ".join(f"`{short(k)}`" for k in keys) + " with the highest mean best_score over fine-tuning "
              "seeds are kept in every table, correlation and figure below.")  # fmt: skip


def by_key_section(doc: Doc, td: pd.DataFrame, key: str) -> None:
    """``--group-by KEY``: best_score per value of KEY, per ticket and task (mean ± std over seeds) and per task
    (mean over tickets, the best value marked)."""
    doc.h(2, f"Scores by {short(key)}")
    per_ticket, per_task = by_key(td, key)
    if not len(per_ticket):
        doc.p("No finished transfer trials.")
        return
    cell = [f"{m:.4g} ± {s:.2g} (n={n})" if np.isfinite(s) else f"{m:.4g} (n={n})"
            for m, s, n in zip(per_ticket["mean"], per_ticket["std"], per_ticket["n"])]  # fmt: skip
    wide = per_ticket.assign(cell=cell, sparsity=per_ticket["sparsity"].map(fmt_num)).pivot_table(
        index=["task", "label", "sparsity"], columns=key, values="cell", aggfunc="first", sort=False)
    doc.p(f"best_score per value of `{short(key)}` (columns): mean ± std over fine-tuning seeds (n seeds).")
    doc.table(wide.reset_index().rename(columns=lambda c: fmt_num(c) if not isinstance(c, str) else c))
    doc.p(f"Per task: the mean over tickets of those means; **best** = the value of `{short(key)}` with the "
          "highest (the rule \"best mean dev score over the tickets swept\").")
    doc.table(per_task.assign(mean=[fmt_num(v) for v in per_task["mean"]],
                              best=["**best**" if b else "" for b in per_task["best"]]).rename(columns=short))
