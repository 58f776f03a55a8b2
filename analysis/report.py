"""``EXP_DIR/analysis/report.md`` (+ a self-contained ``report.html``) for an experiment, finished or not.

    python -m analysis.report EXP_DIR [--n-boot 1000] [--seed 0] [--no-similarity] [--exclude-stopped]

What ran (counts per stage/status/method/sparsity/task, wall time), whether trials the scheduler stopped early are
included (marked as lower bounds) or excluded, the average and tidy tables, the loss/score correlations, the
figures (relative links; empty ones skipped with the reason), mask similarities when ticket files exist, the
failed trials with their errors, and what is missing. Missing columns, NaNs, running sweeps and absent files are
reported, never fatal. Sections: :mod:`analysis.report_sections`, :mod:`analysis.report_masks`; the document
model: :mod:`analysis.document`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import correlation as C
from . import report_sections as S
from . import tables as T
from .config_keys import UnknownKey, resolve_key
from .document import Doc, _inline_html  # noqa: F401  (re-exported)
from .report_masks import similarity_section, unique_labels as _unique_labels  # noqa: F401

logger = logging.getLogger(__name__)

EXPECTED_COLUMNS = ["trial_id", "experiment", "stage", "status", "error", "model", "method", "init", "objective",
                    "sparsity", "steps", "seed", "ticket_id", "ticket_path", "mlm_loss", "kd_loss", "task", "score",
                    "best_score", "time_total_s", "training_iteration"]  # fmt: skip


def missing_items(df: pd.DataFrame, td: pd.DataFrame, avg: pd.DataFrame, exp_dir: Path) -> list[str]:
    """The "What is missing" list: absent columns, running trials, missing tasks, losses, files, OMP tickets."""
    items: list[str] = []
    absent = [c for c in EXPECTED_COLUMNS if c not in df.columns]
    if absent:
        items.append(f"results lack columns: {', '.join(absent)}")
    st = T._status(df)
    active = st[st.isin(T.ACTIVE)]
    if len(active):
        parts = ", ".join(f"{n} {s}" for s, n in active.value_counts().items())
        items.append(f"sweep still running: {parts} trial(s)")
    stage = T._stage(df)
    tr = df[stage == "transfer"]
    tasks_all = sorted({t for t in T._col(tr, "task", None).map(T._norm_str).dropna()})
    tasks_done = sorted(set(td["task"])) if len(td) else []
    for t in tasks_all:
        if t not in tasks_done:
            items.append(f"task {t}: no finished transfer trial")
    for _, r in T.missing_tasks(td, df).iterrows():
        for t in r["missing"].split(","):
            items.append(f"task {t} missing for ticket {r['ticket_id']} ({r['label']}, sparsity "
                         f"{T.fmt_num(r['sparsity'])})")  # fmt: skip
    if len(td) and not len(avg):
        items.append("no ticket has a finished score for every task: the average table is empty")
    if len(td):
        tk = td.drop_duplicates("ticket_id")
        if not (tk["method"] == "dense").any():
            items.append("no dense model scores: no dense star in the figures")
        for l in T.LOSSES:
            nol = tk[tk[l].isna()]
            if len(nol):
                items.append(f"{l} unknown for {len(nol)} ticket(s): {', '.join(map(str, nol['ticket_id'][:8]))}"
                             f"{' …' if len(nol) > 8 else ''}")  # fmt: skip
        pruned = tk[tk["method"] != "dense"]
        nofile = pruned[pruned["ticket_path"].isna()]
        if len(nofile):
            items.append(f"ticket files not found for {len(nofile)} ticket(s) (omp_similarity NaN): "
                         f"{', '.join(map(str, nofile['ticket_id'][:8]))}{' …' if len(nofile) > 8 else ''}")
        tick = T.ticket_table(df, exp_dir)
        omp = tick[(tick["method"] == "omp") & tick["ticket_path"].notna()]
        for (model, sp), g in pruned.groupby(["model", "sparsity"], dropna=False):
            if not ((omp["model"] == model) & np.isclose(omp["sparsity"].astype(float), float(sp))).any():
                items.append(f"no OMP ticket (with files) for {model} at sparsity {T.fmt_num(sp)}, so "
                             f"omp_similarity is NaN for {len(g)} ticket(s)")  # fmt: skip
    elif not len(tr):
        items.append("no transfer trials yet")
    find = df[stage == "find"]
    bad_find = find[~T._status(find).isin(T.FINISHED)]
    if len(bad_find):
        items.append(f"{len(bad_find)} find trial(s) did not finish: their tickets are missing")
    return items


_missing_items = missing_items


def write_report(
    exp_dir: str | Path, n_boot: int = 1000, seed: int = 0, similarity: bool = True, max_tickets: int = 20,
    html_too: bool = True, tidy_rows: int = 40, exclude_stopped: bool = False, best_by: Sequence[str] = (),
    group_by: Sequence[str] = (),
) -> Path:
    """Write ``EXP_DIR/analysis/report.md`` (and ``report.html``), the tables, correlations and figures.

    ``exclude_stopped``: leave out the transfer trials the scheduler stopped early (by default they are kept and
    marked as lower bounds); the report says at the top which, and how many. ``best_by``: searched keys
    (``transfer.lr`` or ``config/transfer.lr``) reduced to their best value per ticket and task; ``group_by``: a
    section of scores per value of each key. An unknown key is a ValueError (one line) before anything is written."""
    exp_dir = Path(exp_dir)
    out = exp_dir / T.ANALYSIS_DIR
    fig_dir = out / "figures"
    df = T.load_results(exp_dir)
    best_by = [resolve_key(df, k) for k in best_by]
    group_by = [resolve_key(df, k) for k in group_by]
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc()
    exps = T._col(df, "experiment", None).map(T._norm_str).dropna()
    name = ", ".join(dict.fromkeys(exps)) if len(exps) else exp_dir.name
    doc.h(1, f"Experiment report: {name}")
    doc.p(f"Directory `{exp_dir}`; {len(df)} trials; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    for w in df.attrs.get("results_warnings", []):  # fallbacks and mismatches first: what the numbers below miss
        doc.p(f"**Warning:** {w}")
    notes: list[str] = []  # problems met while building the report itself

    def guarded(what: str, fn: Callable[[], Any], default: Any = None) -> Any:
        try:
            return fn()
        except Exception as e:  # a report must not die on one bad section
            logger.exception("report section %s failed", what)
            notes.append(f"{what} failed: {type(e).__name__}: {e}")
            return default

    res = guarded("tables", lambda: T.write_tables(exp_dir, df, similarity=similarity,
                                                   exclude_stopped=exclude_stopped, best=best_by), {})  # fmt: skip
    td = res.get("tidy", pd.DataFrame(columns=["ticket_id", "task", "best_score"]))
    avg = res.get("average", pd.DataFrame(columns=["ticket_id", "avg_score"]))
    doc.p(S.stopped_statement(df, td, exclude_stopped))
    S.best_by_note(doc, best_by)

    d = df.assign(_stage=T._stage(df), _status=T._status(df))
    S.what_ran(doc, df, d)
    S.average_section(doc, avg)
    S.tidy_section(doc, td, tidy_rows)
    for key in group_by:
        S.by_key_section(doc, td, key)
    corr = guarded("correlations", lambda: C.loss_score_correlations(td, avg, n_boot=n_boot, seed=seed),
                   pd.DataFrame())  # fmt: skip
    S.correlation_section(doc, corr, n_boot, seed, out)
    S.figures_section(doc, td, avg, fig_dir, guarded)

    # ---- masks
    doc.h(2, "Mask similarity")
    missing = guarded("missing-items", lambda: missing_items(df, td, avg, exp_dir), []) or []
    if similarity:
        guarded("mask similarity", lambda: similarity_section(doc, df, exp_dir, fig_dir, max_tickets, missing))
    else:
        doc.p("Skipped (--no-similarity).")
    if len(td) and td["omp_similarity"].notna().any():
        doc.p("Distance from the OMP mask per ticket (1 − Jaccard similarity, and normalized Hamming):")
        tk = td.drop_duplicates("ticket_id")
        tk = tk[tk["omp_similarity"].notna()]
        doc.table(tk.assign(omp_distance=1 - tk["omp_similarity"])[
            ["label", "sparsity", "steps", "omp_similarity", "omp_distance", "omp_hamming", "ticket_id"]])

    S.failures_section(doc, df, d)

    # ---- missing
    doc.h(2, "What is missing")
    doc.ul(missing + notes)
    if not missing and not notes:
        doc.p("Nothing: every ticket has every task, every loss and every file.")

    doc.h(2, "Columns")
    doc.table(pd.DataFrame({"column": list(T.COLUMNS), "description": list(T.COLUMNS.values())}))

    md = out / "report.md"
    md.write_text(doc.markdown(), encoding="utf-8")
    if html_too:
        (out / "report.html").write_text(doc.html(f"Report: {name}"), encoding="utf-8")
    return md


def add_key_options(ap: argparse.ArgumentParser) -> None:
    """``--best-by KEY`` / ``--group-by KEY`` (both repeatable): also ``run_search.py report``'s."""
    ap.add_argument("--best-by", action="append", default=None, metavar="KEY",
                    help="a searched config key (e.g. config/transfer.lr or transfer.lr): per ticket and task, keep "
                         "only the trials of its value with the best mean score over seeds (default: every value "
                         "is its own row); repeatable")
    ap.add_argument("--group-by", action="append", default=None, metavar="KEY",
                    help="a searched config key: add a section of scores per value of KEY (per ticket and task, "
                         "and per task over tickets with the best value marked); repeatable")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("exp_dir", type=Path)
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for correlation CIs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-similarity", action="store_true", help="do not read mask files")
    ap.add_argument("--max-tickets", type=int, default=20, help="tickets per sparsity in the similarity heatmap")
    ap.add_argument("--exclude-stopped", action="store_true",
                    help="leave out transfer trials the scheduler (ASHA) stopped early (default: keep and mark them)")
    add_key_options(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        p = write_report(a.exp_dir, n_boot=a.n_boot, seed=a.seed, similarity=not a.no_similarity,
                         max_tickets=a.max_tickets, exclude_stopped=a.exclude_stopped, best_by=a.best_by or (),
                         group_by=a.group_by or ())  # fmt: skip
    except (FileNotFoundError, UnknownKey) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
