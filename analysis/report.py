"""``EXP_DIR/analysis/report.md`` (+ a self-contained ``report.html``) for an experiment, finished or not.

    python -m analysis.report EXP_DIR [--n-boot 1000] [--seed 0] [--no-similarity]

What ran (counts per stage/status/method/sparsity/task, wall time), the average and tidy tables, the loss/score
correlations, the figures (relative links), mask similarities when ticket files exist, the failed trials with
their errors, and what is missing. Missing columns, NaNs, running sweeps and absent files are reported, never
fatal.
"""

from __future__ import annotations

import argparse
import html
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import correlation as C
from . import figures as F
from . import masks as M
from . import tables as T

logger = logging.getLogger(__name__)

EXPECTED_COLUMNS = ["trial_id", "experiment", "stage", "status", "error", "model", "method", "init", "objective",
                    "sparsity", "steps", "seed", "ticket_id", "ticket_path", "mlm_loss", "kd_loss", "task", "score",
                    "best_score", "time_total_s", "training_iteration"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# a tiny document model rendered to Markdown and HTML


@dataclass
class Doc:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, df: pd.DataFrame, max_rows: int | None = None, index: bool = False) -> None:
        if df is None or not len(df):
            self.p("_(empty)_")
            return
        d = df.reset_index() if index else df
        more = 0
        if max_rows is not None and len(d) > max_rows:
            more = len(d) - max_rows
            d = d.head(max_rows)
        self.blocks.append(("table", d))
        if more:
            self.p(f"_… {more} more rows (see the CSV)._")

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # ---- rendering
    @staticmethod
    def _cells(d: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
        head = [str(c) for c in d.columns]
        rows = [[T.fmt_num(v) for v in r] for r in d.itertuples(index=False, name=None)]
        return head, rows

    def markdown(self) -> str:
        out: list[str] = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1])
            elif kind == "p":
                out.append(x)
            elif kind == "ul":
                out.append("\n".join(f"- {i}" for i in x))
            elif kind == "code":
                out.append("```\n" + x.replace("```", "'''") + "\n```")
            elif kind == "img":
                out.append(f"![{x[1]}]({x[0]})")
            elif kind == "table":
                head, rows = self._cells(x)
                esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
                out.append("\n".join(lines))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{e(title)}</title><style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
            "th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:6px;overflow-x:auto}</style>"
            "</head><body>",
        ]
        for kind, x in self.blocks:
            if kind == "h":
                out.append(f"<h{x[0]}>{e(x[1])}</h{x[0]}>")
            elif kind == "p":
                out.append(f"<p>{_inline_html(x)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in x) + "</ul>")
            elif kind == "code":
                out.append(f"<pre>{e(x)}</pre>")
            elif kind == "img":
                out.append(f"<p><a href='{e(x[0])}'><img src='{e(x[0])}' alt='{e(x[1])}'></a></p>")
            elif kind == "table":
                head, rows = self._cells(x)
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")  # fmt: skip
        out.append("</body></html>")
        return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then render the little inline Markdown the report uses: **bold**, _italic_, `code`, [a](b)."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    s = re.sub(r"\[(.+?)\]\((.+?)\)", r"<a href='\2'>\1</a>", s)
    s = re.sub(r"(^|\s)_(.+?)_($|\s)", r"\1<i>\2</i>\3", s)
    return s


# ---------------------------------------------------------------------------------------------------------------
# sections


def _counts(df: pd.DataFrame, rows: str, cols: str) -> pd.DataFrame:
    if rows not in df.columns or cols not in df.columns:
        return pd.DataFrame()
    d = df[[rows, cols]].astype(object).fillna("—").astype(str)
    return pd.crosstab(d[rows], d[cols]).reset_index()


def _status_series(df: pd.DataFrame) -> pd.Series:
    return T._status(df)


def _short_error(v: Any, n_lines: int = 4, n_chars: int = 600) -> str:
    s = T._norm_str(v) or ""
    lines = [l for l in s.strip().splitlines() if l.strip()]
    s = "\n".join(lines[-n_lines:])
    return s if len(s) <= n_chars else "…" + s[-n_chars:]


def _unique_labels(t: pd.DataFrame) -> list[str]:
    """Method labels made unique by appending, where labels repeat, the first field that tells them apart."""
    labs = t["label"].astype(str).tolist()
    recs = [r for _, r in t.iterrows()]
    extras = (lambda r: f"{T.fmt_num(r.get('steps'))}st", lambda r: f"seed{T.fmt_num(r.get('ticket_seed'))}",
              lambda r: str(r["ticket_id"])[:8])  # fmt: skip
    for extra in extras:
        groups: dict[str, list[int]] = {}
        for i, l in enumerate(labs):
            groups.setdefault(l, []).append(i)
        for l, idx in groups.items():
            vals = [extra(recs[i]) for i in idx]
            if len(idx) > 1 and len(set(vals)) > 1:
                for i, v in zip(idx, vals):
                    labs[i] = f"{l} {v}"
    if len(set(labs)) < len(labs):  # still ambiguous: number them
        seen: dict[str, int] = {}
        for i, l in enumerate(labs):
            seen[l] = seen.get(l, 0) + 1
            labs[i] = f"{l} #{seen[l]}"
    return labs


def _similarity_section(doc: Doc, df: pd.DataFrame, exp_dir: Path, fig_dir: Path, max_tickets: int,
                        missing: list[str]) -> list[Path]:  # fmt: skip
    out_paths: list[Path] = []
    tick = T.ticket_table(df, exp_dir)
    have = tick[tick["ticket_path"].notna() & (tick["method"] != "dense")] if len(tick) else tick
    if not len(have):
        doc.p("No ticket files found (nothing to compare).")
        return out_paths
    longs = []
    for (model, sp), g in have.groupby(["model", "sparsity"], dropna=False, sort=True):
        if len(g) < 2:
            continue
        g = g.sort_values(["label", "steps", "ticket_seed"], key=None, na_position="last")
        if len(g) > max_tickets:
            missing.append(f"mask similarity at sparsity {T.fmt_num(sp)}: only the first {max_tickets} of "
                           f"{len(g)} tickets compared")  # fmt: skip
            g = g.head(max_tickets)
        labels = _unique_labels(g)
        try:
            long = M.pairwise(dict(zip(labels, g["ticket_path"])))
        except (M.MaskMismatchError, OSError) as e:
            missing.append(f"mask similarity at sparsity {T.fmt_num(sp)} failed: {e}")
            continue
        mat = M.to_matrix(long, "similarity", labels)
        name = f"mask_similarity_s{T.fmt_num(sp)}"
        paths = F.plot_similarity_heatmap(mat, fig_dir, name, title=f"Jaccard similarity, sparsity {T.fmt_num(sp)}")
        out_paths += paths
        doc.h(3, f"{model} at sparsity {T.fmt_num(sp)}")
        doc.table(mat.round(4), index=True)
        doc.img(f"figures/{paths[0].name}", f"mask similarity at sparsity {T.fmt_num(sp)}")
        long = long.assign(model=model, sparsity=sp)
        longs.append(long)
    if longs:
        all_long = pd.concat(longs, ignore_index=True)
        all_long.to_csv(exp_dir / T.ANALYSIS_DIR / "mask_similarity.csv", index=False)
        doc.p("Long form (all pairs, with normalized Hamming distance): `mask_similarity.csv`.")
    else:
        doc.p("No sparsity has two tickets with files to compare.")
    return out_paths


def _missing_items(df: pd.DataFrame, td: pd.DataFrame, avg: pd.DataFrame, exp_dir: Path) -> list[str]:
    items: list[str] = []
    absent = [c for c in EXPECTED_COLUMNS if c not in df.columns]
    if absent:
        items.append(f"results lack columns: {', '.join(absent)}")
    st = _status_series(df)
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
    bad_find = find[~_status_series(find).isin(T.FINISHED)]
    if len(bad_find):
        items.append(f"{len(bad_find)} find trial(s) did not finish: their tickets are missing")
    return items


# ---------------------------------------------------------------------------------------------------------------
# report


def write_report(
    exp_dir: str | Path, n_boot: int = 1000, seed: int = 0, similarity: bool = True, max_tickets: int = 20,
    html_too: bool = True, tidy_rows: int = 40,
) -> Path:
    """Write ``EXP_DIR/analysis/report.md`` (and ``report.html``), the tables, correlations and figures."""
    exp_dir = Path(exp_dir)
    out = exp_dir / T.ANALYSIS_DIR
    fig_dir = out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc()
    df = T.load_results(exp_dir)
    exps = T._col(df, "experiment", None).map(T._norm_str).dropna()
    name = ", ".join(dict.fromkeys(exps)) if len(exps) else exp_dir.name
    doc.h(1, f"Experiment report: {name}")
    doc.p(f"Directory `{exp_dir}`; {len(df)} trials; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    notes: list[str] = []  # problems met while building the report itself

    def guarded(what: str, fn, default=None):
        try:
            return fn()
        except Exception as e:  # a report must not die on one bad section
            logger.exception("report section %s failed", what)
            notes.append(f"{what} failed: {type(e).__name__}: {e}")
            return default

    # ---- what ran
    doc.h(2, "What ran")
    d = df.assign(_stage=T._stage(df), _status=_status_series(df))
    doc.p("Trials per stage and status:")
    doc.table(_counts(d, "_stage", "_status").rename(columns={"_stage": "stage"}))
    if "time_total_s" in df.columns:
        wt = d.assign(t=pd.to_numeric(d["time_total_s"], errors="coerce")).groupby("_stage")["t"].sum()
        doc.p("Wall time (sum of trial time_total_s): " + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in wt.items())
              + f"; total {wt.sum() / 3600:.2f} h.")  # fmt: skip
    if {"method", "sparsity"} <= set(df.columns):
        doc.p("Trials per method and sparsity (all stages):")
        doc.table(_counts(d, "method", "sparsity"))
    if "task" in df.columns:
        doc.p("Transfer trials per task and status:")
        doc.table(_counts(d[d["_stage"] == "transfer"], "task", "_status"))

    # ---- tables
    res = guarded("tables", lambda: T.write_tables(exp_dir, df, similarity=similarity), {})
    td = res.get("tidy", pd.DataFrame(columns=["ticket_id", "task", "best_score"]))
    avg = res.get("average", pd.DataFrame(columns=["ticket_id", "avg_score"]))

    doc.h(2, "Average over tasks")
    if len(avg):
        doc.p(f"Mean best_score over {avg['n_tasks'].iloc[0]} task(s) ({avg['tasks'].iloc[0]}), each first "
              "averaged over fine-tuning seeds; only tickets with every task. File: `average.csv`.")  # fmt: skip
        cols = [c for c in ("label", "sparsity", "steps", "mlm_loss", "kd_loss", "kd_loss_mse", "omp_similarity",
                            "avg_score",
                            "score_std_seeds", "n_tasks", "n_seeds", "ticket_id") if c in avg.columns]  # fmt: skip
        doc.table(avg[cols])
        summ = F.sparsity_summary(avg, "avg_score")
        if len(summ):
            doc.p("Per method and sparsity (mean ± std over tickets):")
            wide = summ.assign(cell=[f"{m:.2f} ± {s:.2f} (n={n})" if np.isfinite(s) else f"{m:.2f} (n={n})"
                                     for m, s, n in zip(summ["mean"], summ["std"], summ["n"])])  # fmt: skip
            doc.table(wide.pivot(index="label", columns="sparsity", values="cell").reset_index())
    else:
        doc.p("No ticket has a finished score for every task yet.")

    doc.h(2, "Tidy results")
    if len(td):
        doc.p(f"{len(td)} rows (ticket × task × seed) of finished transfer trials; first {min(tidy_rows, len(td))}"
              " shown. File: `tidy.csv`.")  # fmt: skip
        cols = [c for c in ("label", "sparsity", "steps", "task", "seed", "best_score", "mlm_loss", "kd_loss",
                            "kd_loss_mse",
                            "omp_similarity", "loss_source", "n_trials", "ticket_id") if c in td.columns]  # fmt: skip
        doc.table(td[cols], max_rows=tidy_rows)
    else:
        doc.p("No finished transfer trials.")

    # ---- correlations
    doc.h(2, "Pre-training loss vs downstream score")
    corr = guarded("correlations", lambda: C.loss_score_correlations(td, avg, n_boot=n_boot, seed=seed),
                   pd.DataFrame())  # fmt: skip
    if corr is not None and len(corr):
        corr.to_csv(out / "correlations.csv", index=False)
        doc.p(f"Pearson / Spearman / Kendall (scipy), p-values, and {int(100 * 0.95)} % percentile bootstrap CIs "
              f"({n_boot} seeded resamples of (ticket, score) pairs, seed {seed}); per task, seeds are averaged "
              "per ticket first. Groups with n < 3 are NaN. File: `correlations.csv`.")  # fmt: skip
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
    else:
        doc.p("Nothing to correlate yet.")

    # ---- figures
    doc.h(2, "Figures")
    figs: list[Path] = []

    def main_figs():
        paths = []
        if len(avg):
            paths += F.plot_loss_score(avg, fig_dir, "avg_score")
            paths += F.plot_score_vs_sparsity(avg, fig_dir, "avg_score")
            paths += F.plot_steps(avg, fig_dir, "avg_score")
        if len(td):
            paths += F.plot_score_vs_sparsity(td, fig_dir, "best_score", facet="task", name="score_vs_sparsity_tasks")
            if not len(avg):  # no average yet: the main figure for the task with the most tickets
                task = td.groupby("task")["ticket_id"].nunique().idxmax()
                paths += F.plot_loss_score(td[td["task"] == task], fig_dir, "best_score", prefix=f"{task}_")
                paths += F.plot_steps(td[td["task"] == task], fig_dir, "best_score", name=f"{task}_steps")
        return paths

    figs += guarded("figures", main_figs, []) or []
    pngs = [p for p in figs if p.suffix == ".png"]
    if pngs:
        for p in pngs:
            doc.h(3, p.stem.replace("_", " "))
            doc.img(f"figures/{p.name}", p.stem)
            doc.p(f"[PNG](figures/{p.name}) · [SVG](figures/{p.with_suffix('.svg').name})")
    else:
        doc.p("No figures (no finished scores).")

    # ---- masks
    doc.h(2, "Mask similarity")
    missing = guarded("missing-items", lambda: _missing_items(df, td, avg, exp_dir), []) or []
    if similarity:
        guarded("mask similarity", lambda: _similarity_section(doc, df, exp_dir, fig_dir, max_tickets, missing))
    else:
        doc.p("Skipped (--no-similarity).")
    if len(td) and td["omp_similarity"].notna().any():
        doc.p("Distance from the OMP mask per ticket (1 − Jaccard similarity, and normalized Hamming):")
        tk = td.drop_duplicates("ticket_id")
        tk = tk[tk["omp_similarity"].notna()]
        doc.table(tk.assign(omp_distance=1 - tk["omp_similarity"])[
            ["label", "sparsity", "steps", "omp_similarity", "omp_distance", "omp_hamming", "ticket_id"]])

    # ---- failures
    doc.h(2, "Failed and unfinished trials")
    st = d["_status"]
    failed = d[st.isin(["ERROR"]) | T._col(d, "error", None).map(T._norm_str).notna()]
    if len(failed):
        doc.p(f"{len(failed)} trial(s) failed:")
        cols = [c for c in ("trial_id", "_stage", "method", "sparsity", "task", "seed", "ticket_id", "_status")
                if c in failed.columns]  # fmt: skip
        doc.table(failed[cols].rename(columns={"_stage": "stage", "_status": "status"}))
        for _, r in failed.iterrows():
            what = " ".join(f"{k}={T.fmt_num(r.get(k))}" for k in ("stage", "method", "sparsity", "task", "seed")
                            if k in failed.columns and T.fmt_num(r.get(k)))  # fmt: skip
            doc.p(f"**{T.fmt_num(r.get('trial_id')) or '?'}** ({what}):")
            doc.code(_short_error(r.get("error")) or "(no error message recorded)")
    else:
        doc.p("No failed trials.")
    other = d[~st.isin([*T.FINISHED, "ERROR"])]
    if len(other):
        doc.p(f"{len(other)} trial(s) not finished (running, pending, early-stopped or unknown):")
        cols = [c for c in ("trial_id", "_stage", "method", "sparsity", "task", "seed", "_status",
                            "training_iteration") if c in other.columns]  # fmt: skip
        doc.table(other[cols].rename(columns={"_stage": "stage", "_status": "status"}), max_rows=100)
    ex = T.excluded_transfers(df)
    ex_done = ex[T._status(ex).isin(T.FINISHED)] if len(ex) else ex
    if len(ex_done):
        doc.p(f"{len(ex_done)} finished transfer trial(s) reported no best_score and were left out of the scores.")

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("exp_dir", type=Path)
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for correlation CIs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-similarity", action="store_true", help="do not read mask files")
    ap.add_argument("--max-tickets", type=int, default=20, help="tickets per sparsity in the similarity heatmap")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        p = write_report(a.exp_dir, n_boot=a.n_boot, seed=a.seed, similarity=not a.no_similarity,
                         max_tickets=a.max_tickets)  # fmt: skip
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
