"""Results tables: raw trial rows -> tidy (ticket, task, seed) rows -> per-ticket average over tasks.

``results.parquet`` (written by ``run_search.py``) has one row per Ray Tune trial: "find" trials produce tickets,
"evaluate" trials measure a ticket's pre-training losses, "transfer" trials fine-tune a ticket on one task.
:func:`tidy` keeps the finished transfer trials and joins onto them, by ``ticket_id``, the ticket's description
and losses from the other stages (or from the ticket's own ``ticket.json``), plus the Jaccard similarity of its
mask to the OMP mask of the same model and sparsity. :func:`average_over_tasks` averages each ticket's score over
tasks as the paper does. Every column is described in :data:`COLUMNS`.

Scores of trials the scheduler stopped early (status EARLY_STOPPED, lower bounds) are kept and marked:
``stopped_early`` per tidy row, ``n_stopped`` per average; ``exclude_stopped=True`` leaves them out instead.
Loading and cell helpers live in :mod:`analysis.results_io`, ticket lookups in :mod:`analysis.tickets`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from sparsebert.tickets.finders import method_label  # noqa: F401  (re-exported)

# re-exported: the names this module held before it was split (report, tests and users import them from here)
from .columns import COLUMNS  # noqa: F401
from .config_keys import best_by, config_columns, searched_keys, within_task_keys
from .results_io import (  # noqa: F401
    ACTIVE, ANALYSIS_DIR, DAGGER, DAGGER_NOTE, EARLY_STOPPED, FINISHED, LOSSES, RESULTS_CSV, RESULTS_PARQUET,
    TICKET_FIELDS, _col, _first_valid, _isnull, _norm_str, _stage, _status, fmt_num, load_results, mark_stopped,
    metric_columns, stopped_mask, write_frame,
)
from .tickets import (  # noqa: F401
    _read_meta, _resolve_ticket_path, _synth_id, _ticket_ids, omp_similarities, ticket_table,
)

_write = write_frame

# ---------------------------------------------------------------------------------------------------------------
# tidy


def excluded_transfers(df: pd.DataFrame) -> pd.DataFrame:
    """Transfer rows left out of :func:`tidy` (not finished/early-stopped, or no best_score), with a ``reason``."""
    st = _status(df)
    is_tr = _stage(df) == "transfer"
    score = pd.to_numeric(_col(df, "best_score"), errors="coerce")
    bad = is_tr & (~st.isin(FINISHED) | score.isna())
    out = df[bad].copy()
    out["ticket_id"] = _ticket_ids(out) if len(out) else pd.Series(dtype=object)
    out["reason"] = [
        f"status {s}" if s not in FINISHED else "no best_score" for s in st[bad]
    ]
    return out


def tidy(
    df: pd.DataFrame,
    exp_dir: str | os.PathLike | None = None,
    similarity: bool = True,
    statuses: tuple[str, ...] = FINISHED,
    exclude_stopped: bool = False,
    best: Iterable[str] = (),
) -> pd.DataFrame:
    """One row per (ticket, task, fine-tuning seed, searched values) of finished transfer trials, with ticket info
    and losses. The searched values are the ``config/...`` columns that differ between the experiment's transfer
    trials (:func:`analysis.config_keys.searched_keys`, e.g. ``config/transfer.lr`` of an lr grid): trials that
    differ only in one of them are separate rows. ``best``: config columns to pick the best value of instead
    (per ticket and task, the value with the best mean score over seeds: :func:`analysis.config_keys.best_by`).

    ``stopped_early`` marks rows whose kept trial was stopped early by the scheduler; ``exclude_stopped`` drops
    those trials before anything is joined or merged (so ``n_trials`` counts only the others).

    Ticket fields and losses missing on a transfer row are taken, by ticket_id, from "evaluate" rows (losses:
    mean over finished ones), then the row itself, then "find" rows, then the ticket's ``ticket.json``.
    ``omp_similarity`` needs the ticket files (``similarity=False`` skips the mask reads). See :data:`COLUMNS`."""
    exp = Path(exp_dir) if exp_dir is not None else (Path(df.attrs["exp_dir"]) if "exp_dir" in df.attrs else None)
    mcols = metric_columns(df)
    keys = searched_keys(df[_stage(df) == "transfer"]) if df is not None and len(df) else []
    base_cols = ["ticket_id", "label", *TICKET_FIELDS, "ticket_seed", "ticket_path", *LOSSES, "loss_source",
                 "omp_similarity", "omp_hamming", "task", "seed", *keys, *mcols, "best_score", "stopped_early",
                 "n_trials", "trial_id", "time_total_s"]  # fmt: skip
    if df is None or not len(df):
        return pd.DataFrame(columns=base_cols)
    d = df.reset_index(drop=True)
    d["ticket_id"] = _ticket_ids(d)
    d["_status"] = _status(d)
    d["_stage"] = _stage(d)
    for c in ("best_score", *LOSSES, "sparsity", "steps", "seed"):
        d[c] = pd.to_numeric(_col(d, c), errors="coerce")
    fin = d["_status"].isin(FINISHED)
    if exclude_stopped:
        statuses = tuple(s for s in statuses if s != EARLY_STOPPED)

    # per ticket information from find / evaluate rows
    find = d[(d["_stage"] == "find")]
    # rows of finished find trials first (an EARLY_STOPPED find trial's losses are of a half-trained mask)
    done = d["_status"].eq("TERMINATED")
    find = pd.concat([find[done[find.index]], find[~done[find.index]]])
    evalr = d[(d["_stage"] == "evaluate") & fin]
    tr = d[(d["_stage"] == "transfer") & d["_status"].isin(statuses) & d["best_score"].notna()].copy()
    if not len(tr):
        return pd.DataFrame(columns=base_cols)

    ev_loss = evalr.groupby("ticket_id")[list(LOSSES)].mean() if len(evalr) else pd.DataFrame(columns=LOSSES)
    find_first = find.groupby("ticket_id", sort=False).first() if len(find) else pd.DataFrame()
    ticket_cache: dict[str, dict[str, Any]] = {}

    def ticket_info(tid: str, row: pd.Series) -> dict[str, Any]:
        if tid in ticket_cache:
            return ticket_cache[tid]
        frow = find_first.loc[tid] if tid in find_first.index else pd.Series(dtype=object)
        path = _resolve_ticket_path(_first_valid([row.get("ticket_path"), frow.get("ticket_path")]), tid, exp)
        meta = _read_meta(path)
        info: dict[str, Any] = {"ticket_path": str(path) if path else None}
        for f in TICKET_FIELDS:
            info[f] = _first_valid([row.get(f), frow.get(f), meta.get(f)])
        info["ticket_seed"] = _first_valid([frow.get("seed"), meta.get("seed")])
        mmeta = meta.get("metrics") or {}
        src = "none"
        for l in LOSSES:
            cands = [
                ("evaluate", ev_loss[l].get(tid) if tid in ev_loss.index else np.nan),
                ("transfer", row.get(l)),
                ("find", frow.get(l)),
                ("ticket.json", mmeta.get(l)),
            ]
            info[l] = np.nan
            for s, v in cands:
                if not _isnull(v):
                    info[l] = float(v)
                    if src == "none":
                        src = s
                    elif s != src and s not in src.split("+"):
                        src = f"{src}+{s}"
                    break
        info["loss_source"] = src
        ticket_cache[tid] = info
        return info

    infos = [ticket_info(tid, r) for tid, (_, r) in zip(tr["ticket_id"], tr.iterrows())]
    for f in (*TICKET_FIELDS, "ticket_seed", "ticket_path", *LOSSES, "loss_source"):
        tr[f] = [i[f] for i in infos]
    for c in ("sparsity", "steps", "ticket_seed", *LOSSES):
        tr[c] = pd.to_numeric(tr[c], errors="coerce")
    tr["sparsity"] = tr["sparsity"].round(6)
    for c in ("model", "method", "init", "objective", "ticket_path"):
        tr[c] = tr[c].map(_norm_str).astype(object)
    tr.loc[tr["method"] == "dense", "sparsity"] = tr.loc[tr["method"] == "dense", "sparsity"].fillna(0.0)
    tr["label"] = [method_label(m, i, o) for m, i, o in zip(tr["method"], tr["init"], tr["objective"])]
    tr["task"] = _col(tr, "task", None).map(_norm_str).fillna("?")
    tr["seed"] = tr["seed"].fillna(-1).astype(int) if "seed" in tr else -1
    for c in ("trial_id", "time_total_s"):
        tr[c] = _col(tr, c)
    tr["stopped_early"] = tr["_status"].eq(EARLY_STOPPED)

    # several finished trials of one (ticket, task, seed, searched values), e.g. num_samples > 1: keep the best,
    # count them
    row_key = ["ticket_id", "task", "seed", *keys]
    tr = tr.sort_values("best_score", ascending=False, kind="stable")
    n_trials = tr.groupby(row_key, sort=False, dropna=False)["best_score"].transform("size")
    tr["n_trials"] = n_trials.astype(int)
    tr = tr.drop_duplicates(row_key, keep="first")
    for k in best:
        tr = best_by(tr, k)

    # similarity to the OMP ticket of the same model and sparsity
    tr["omp_similarity"] = np.nan
    tr["omp_hamming"] = np.nan
    if similarity:
        sims = omp_similarities(d, exp, tickets=tr.drop_duplicates("ticket_id"))
        if len(sims):
            tr["omp_similarity"] = tr["ticket_id"].map(sims["omp_similarity"])
            tr["omp_hamming"] = tr["ticket_id"].map(sims["omp_hamming"])

    out = tr[base_cols].sort_values(["model", "sparsity", "label", "ticket_id", "task", *keys, "seed"],
                                    na_position="last", kind="stable")  # fmt: skip
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# average


def average_over_tasks(tidy_df: pd.DataFrame, tasks: Iterable[str] | None = None) -> pd.DataFrame:
    """Per ticket: mean over tasks of (mean over fine-tuning seeds of best_score).

    A searched value that varies for one ticket on one task (an lr grid: :func:`analysis.config_keys.
    within_task_keys`) keeps its values apart (a row per ticket and value); one fixed per task (an lr set per
    task) is averaged over with the tasks. Only tickets with a score for *every* task go in; ``tasks`` defaults
    to every task that has a finished score anywhere in ``tidy_df``. ``n_tasks``/``tasks`` say what was
    averaged, ``n_stopped`` how many of the averaged (task, seed) scores were cut short by the scheduler (see
    :func:`stopped_mask`)."""
    ticket_cols = ["ticket_id", "label", *TICKET_FIELDS, "ticket_seed", "ticket_path", *LOSSES, "loss_source",
                   "omp_similarity", "omp_hamming"]  # fmt: skip
    keys = within_task_keys(tidy_df, config_columns(tidy_df)) if tidy_df is not None else []
    cols = [*ticket_cols, *keys, "avg_score", "score_std_seeds", "n_tasks", "tasks", "n_seeds", "n_stopped"]
    if tidy_df is None or not len(tidy_df):
        return pd.DataFrame(columns=cols)
    t = tidy_df[tidy_df["best_score"].notna()]
    want = sorted(set(tasks) if tasks is not None else set(t["task"].dropna()))
    if not want:
        return pd.DataFrame(columns=cols)
    t = t[t["task"].isin(want)]
    t = t.assign(_stopped=stopped_mask(t).astype(int))
    per_task = t.groupby(["ticket_id", *keys, "task"], dropna=False).agg(
        score=("best_score", "mean"), std=("best_score", "std"), n_seeds=("best_score", "size"),
        n_stopped=("_stopped", "sum"),
    ).reset_index()
    rows = []
    first = t.drop_duplicates("ticket_id").set_index("ticket_id")
    for gkey, g in per_task.groupby(["ticket_id", *keys], sort=False, dropna=False):
        tid = gkey[0] if isinstance(gkey, tuple) else gkey
        if set(g["task"]) != set(want):
            continue
        info = first.loc[tid]
        r = {c: info.get(c, np.nan) for c in ticket_cols if c != "ticket_id"}
        r["ticket_id"] = tid
        r.update({k: g[k].iloc[0] for k in keys})
        r["avg_score"] = float(g["score"].mean())
        r["score_std_seeds"] = float(g["std"].mean()) if g["std"].notna().any() else np.nan
        r["n_tasks"] = len(want)
        r["tasks"] = ",".join(want)
        r["n_seeds"] = int(g["n_seeds"].min())
        r["n_stopped"] = int(g["n_stopped"].sum())
        rows.append(r)
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)[cols]
    return out.sort_values(["model", "sparsity", "label", "ticket_id", *keys], na_position="last",
                           kind="stable").reset_index(drop=True)


def missing_tasks(tidy_df: pd.DataFrame, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """ticket_id, label, sparsity, missing (comma-separated tasks without a finished score for that ticket).

    The task set is every task in ``df``'s transfer rows (any status) or, without ``df``, in ``tidy_df``."""
    tasks: set[str] = set(tidy_df["task"].dropna()) if len(tidy_df) else set()
    if df is not None and len(df) and "task" in df.columns:
        tr = df[_stage(df) == "transfer"]
        tasks |= {t for t in tr["task"].map(_norm_str).dropna()}
    rows = []
    if len(tidy_df):
        for tid, g in tidy_df.groupby("ticket_id", sort=False):
            miss = sorted(tasks - set(g["task"]))
            if miss:
                rows.append({"ticket_id": tid, "label": g["label"].iloc[0], "sparsity": g["sparsity"].iloc[0],
                             "missing": ",".join(miss)})  # fmt: skip
    return pd.DataFrame(rows, columns=["ticket_id", "label", "sparsity", "missing"])


# ---------------------------------------------------------------------------------------------------------------
# writing


def write_tables(
    exp_dir: str | os.PathLike, df: pd.DataFrame | None = None, similarity: bool = True,
    exclude_stopped: bool = False, best: Iterable[str] = (),
) -> dict[str, Any]:
    """Write ``EXP_DIR/analysis/tidy.{parquet,csv}`` and ``average.{parquet,csv}`` (``exclude_stopped``: without
    the trials the scheduler stopped early).

    Returns {"results", "tidy", "average", "paths"} (the frames and the written files)."""
    exp_dir = Path(exp_dir)
    if df is None:
        df = load_results(exp_dir)
    td = tidy(df, exp_dir, similarity=similarity, exclude_stopped=exclude_stopped, best=best)
    avg = average_over_tasks(td)
    out = exp_dir / ANALYSIS_DIR
    paths = write_frame(td, out / "tidy") + write_frame(avg, out / "average")
    return {"results": df, "tidy": td, "average": avg, "paths": paths}
