"""Results tables: raw trial rows -> tidy (ticket, task, seed) rows -> per-ticket average over tasks.

``results.parquet`` (written by ``run_search.py``) has one row per Ray Tune trial: "find" trials produce tickets,
"evaluate" trials measure a ticket's pre-training losses, "transfer" trials fine-tune a ticket on one task.
:func:`tidy` keeps the finished transfer trials and joins onto them, by ``ticket_id``, the ticket's description
and losses from the other stages (or from the ticket's own ``ticket.json``), plus the Jaccard similarity of its
mask to the OMP mask of the same model and sparsity. :func:`average_over_tasks` averages each ticket's score over
tasks as the paper does. Every column is described in :data:`COLUMNS`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from sparsebert.ticket import META_FILE, method_label, read_meta  # noqa: F401  (method_label: re-exported)

from . import masks as M

logger = logging.getLogger(__name__)

RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
ANALYSIS_DIR = "analysis"

#: statuses whose best dev score counts: finished trials and trials a scheduler (ASHA) stopped early — the best
#: score an early-stopped trial reached is a real (lower-bound) measurement, and dropping them would leave only the
#: winners of an ASHA sweep in every correlation.
FINISHED = ("TERMINATED", "EARLY_STOPPED")
ACTIVE = ("RUNNING", "PENDING", "PAUSED")

TICKET_FIELDS = ("model", "method", "init", "objective", "sparsity", "steps")
LOSSES = ("mlm_loss", "kd_loss", "kd_loss_mse")

#: name -> description of every column of the tidy and average tables (``metric/<name>``: one per metric).
COLUMNS: dict[str, str] = {
    # identity of the ticket
    "ticket_id": "ticket identifier (results' ticket_id; 'dense:<model>' for the unpruned model, "
                 "or a synthesized '<method>-<init>-<objective>-s<sparsity>-<steps>' key when missing)",
    "label": "display name of the finding method: Dense, OMP, Random, IMP, TAMT-MLM, TAMT-KD, TAMT-MLM+KD "
             "(' (random init)' appended for TAMT from a random mask)",
    "model": "source pre-trained model",
    "method": "dense | omp | random | imp | tamt",
    "init": "TAMT mask initialisation: omp | random (empty for other methods)",
    "objective": "TAMT/IMP training objective: mlm | kd | mlm_kd (empty for other methods)",
    "sparsity": "fraction of prunable weights removed (0.0 for the dense model)",
    "steps": "training steps spent finding the ticket (0 for OMP/random/dense)",
    "ticket_seed": "seed of the find trial / ticket.json that produced the ticket",
    "ticket_path": "resolved ticket directory (empty when not found on disk)",
    # pre-training quality
    "mlm_loss": "MLM loss of the ticket on held-out WikiText (lower is better)",
    "kd_loss": "KD loss (mean 1 - cos of layer outputs vs the dense teacher) on held-out data",
    "kd_loss_mse": "the reference's KD loss (full_mse): MSE of the layer outputs vs the dense teacher, mean over "
                   "layers (empty for tickets evaluated before it was measured)",
    "loss_source": "where the losses came from: evaluate (an 'evaluate' trial), transfer (the transfer row "
                   "itself), find (the 'find' trial), ticket.json (the ticket's metadata), or none",
    "omp_similarity": "mean over matrices of the Jaccard similarity of the ticket's mask to the OMP mask of the "
                      "same model and sparsity found in this experiment (1 − distance from OMP); NaN if that "
                      "OMP ticket or either mask file is absent",
    "omp_hamming": "normalized Hamming distance (differing entries / all entries) to that OMP mask",
    # downstream
    "task": "downstream task (GLUE task name or squad)",
    "seed": "fine-tuning seed of the transfer trial",
    "best_score": "the task's main dev score at the best evaluation (as reported by the trial; percent or "
                  "fraction as given)",
    "metric/<name>": "every metric the transfer trial reported at its best evaluation, e.g. metric/accuracy, "
                     "metric/f1, metric/validation_matched/accuracy",
    "n_trials": "number of finished transfer trials merged into the row (several configs of one "
                "(ticket, task, seed): the row keeps the highest best_score)",
    "trial_id": "trial id of the kept transfer trial",
    "time_total_s": "wall time of the kept transfer trial (s)",
    # average table
    "avg_score": "mean over tasks of the ticket's best_score (each task first averaged over fine-tuning seeds)",
    "score_std_seeds": "mean over tasks of the std of best_score over fine-tuning seeds (NaN with one seed)",
    "n_tasks": "number of tasks that went into avg_score (= every task with a finished score in the experiment)",
    "tasks": "comma-separated tasks averaged",
    "n_seeds": "smallest number of fine-tuning seeds of any task of the ticket",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# loading


def load_results(exp_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``EXP_DIR/results.parquet`` (else ``results.csv``). ``df.attrs["exp_dir"]`` remembers the directory."""
    exp_dir = Path(exp_dir)
    pq, csv = exp_dir / RESULTS_PARQUET, exp_dir / RESULTS_CSV
    if pq.is_file():
        df = pd.read_parquet(pq)
    elif csv.is_file():
        df = pd.read_csv(csv)
    else:
        raise FileNotFoundError(f"no results in {exp_dir}: neither {pq} nor {csv} exists")
    df.attrs["exp_dir"] = str(exp_dir)
    return df


def _col(df: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    if name in df.columns:
        return df[name]
    return pd.Series([default] * len(df), index=df.index, dtype=object if default is None else None)


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if isinstance(c, str) and c.startswith("metric/")]


def _isnull(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _norm_str(v: Any) -> Any:
    if _isnull(v):
        return None
    s = str(v).strip()
    return None if s == "" or s.lower() in ("none", "nan", "null") else s


def _status(df: pd.DataFrame) -> pd.Series:
    return _col(df, "status", "TERMINATED").fillna("UNKNOWN").astype(str).str.upper()


def _stage(df: pd.DataFrame) -> pd.Series:
    return _col(df, "stage", "transfer").fillna("transfer").astype(str).str.lower()


# ---------------------------------------------------------------------------------------------------------------
# tickets


def _resolve_ticket_path(path: Any, ticket_id: Any, exp_dir: Path | None) -> Path | None:
    cands: list[Path] = []
    p = _norm_str(path)
    if p:
        cands.append(Path(p))
        if exp_dir is not None and not Path(p).is_absolute():
            cands.append(exp_dir / p)
    tid = _norm_str(ticket_id)
    if tid and exp_dir is not None:
        cands.append(exp_dir / "tickets" / tid)
    for c in cands:
        if (c / M.MASK_FILE).is_file():
            return c
    return None


def _read_meta(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    f = path / META_FILE
    try:
        return read_meta(path)
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("cannot read %s: %s", f, e)
        return {}


def _synth_id(row: pd.Series) -> str:
    method = _norm_str(row.get("method")) or "unknown"
    if method == "dense":
        return f"dense:{_norm_str(row.get('model')) or 'model'}"
    sp = row.get("sparsity")
    sp = f"{float(sp):g}" if not _isnull(sp) else "?"
    return f"{method}-{_norm_str(row.get('init')) or ''}-{_norm_str(row.get('objective')) or ''}-s{sp}-" \
           f"{'' if _isnull(row.get('steps')) else int(row.get('steps'))}"  # fmt: skip


def _ticket_ids(df: pd.DataFrame) -> pd.Series:
    tid = _col(df, "ticket_id", None).map(_norm_str)
    missing = tid.isna()
    if missing.any():
        tid = tid.astype(object)
        tid[missing] = [_synth_id(r) for _, r in df[missing].iterrows()]
    return tid


def _first_valid(values: Iterable[Any]) -> Any:
    for v in values:
        if not _isnull(v):
            return v
    return np.nan


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
) -> pd.DataFrame:
    """One row per (ticket, task, fine-tuning seed) of finished transfer trials, with ticket info and losses.

    Ticket fields and losses missing on a transfer row are taken, by ticket_id, from "evaluate" rows (losses:
    mean over finished ones), then the row itself, then "find" rows, then the ticket's ``ticket.json``.
    ``omp_similarity`` needs the ticket files (``similarity=False`` skips the mask reads). See :data:`COLUMNS`."""
    exp = Path(exp_dir) if exp_dir is not None else (Path(df.attrs["exp_dir"]) if "exp_dir" in df.attrs else None)
    mcols = metric_columns(df)
    base_cols = ["ticket_id", "label", *TICKET_FIELDS, "ticket_seed", "ticket_path", *LOSSES, "loss_source",
                 "omp_similarity", "omp_hamming", "task", "seed", *mcols, "best_score", "n_trials", "trial_id",
                 "time_total_s"]  # fmt: skip
    if df is None or not len(df):
        return pd.DataFrame(columns=base_cols)
    d = df.reset_index(drop=True)
    d["ticket_id"] = _ticket_ids(d)
    d["_status"] = _status(d)
    d["_stage"] = _stage(d)
    for c in ("best_score", *LOSSES, "sparsity", "steps", "seed"):
        d[c] = pd.to_numeric(_col(d, c), errors="coerce")
    fin = d["_status"].isin(FINISHED)

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

    # several finished trials of one (ticket, task, seed): keep the best, count them
    tr = tr.sort_values("best_score", ascending=False, kind="stable")
    n_trials = tr.groupby(["ticket_id", "task", "seed"], sort=False)["best_score"].transform("size")
    tr["n_trials"] = n_trials.astype(int)
    tr = tr.drop_duplicates(["ticket_id", "task", "seed"], keep="first")

    # similarity to the OMP ticket of the same model and sparsity
    tr["omp_similarity"] = np.nan
    tr["omp_hamming"] = np.nan
    if similarity:
        sims = omp_similarities(d, exp, tickets=tr.drop_duplicates("ticket_id"))
        if len(sims):
            tr["omp_similarity"] = tr["ticket_id"].map(sims["omp_similarity"])
            tr["omp_hamming"] = tr["ticket_id"].map(sims["omp_hamming"])

    out = tr[base_cols].sort_values(["model", "sparsity", "label", "ticket_id", "task", "seed"],
                                    na_position="last", kind="stable")  # fmt: skip
    return out.reset_index(drop=True)


def ticket_table(df: pd.DataFrame, exp_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per ticket known to the experiment (any stage): ticket_id, label, fields, ticket_path."""
    exp = Path(exp_dir) if exp_dir is not None else (Path(df.attrs["exp_dir"]) if "exp_dir" in df.attrs else None)
    if df is None or not len(df):
        return pd.DataFrame(columns=["ticket_id", "label", *TICKET_FIELDS, "ticket_seed", "ticket_path"])
    d = df.copy()
    d["ticket_id"] = _ticket_ids(d)
    d["_stage"] = _stage(d)
    d = d.sort_values("_stage", key=lambda s: s.map({"find": 0, "evaluate": 1}).fillna(2), kind="stable")
    rows = []
    for tid, g in d.groupby("ticket_id", sort=False):
        path = _resolve_ticket_path(_first_valid(_col(g, "ticket_path")), tid, exp)
        meta = _read_meta(path)
        r: dict[str, Any] = {"ticket_id": tid}
        for f in TICKET_FIELDS:
            r[f] = _first_valid([*_col(g, f).tolist(), meta.get(f)])
        find = g[g["_stage"] == "find"]
        r["ticket_seed"] = _first_valid([*_col(find, "seed").tolist(), meta.get("seed")])
        r["ticket_path"] = str(path) if path else None
        if _norm_str(r["method"]) == "dense" and _isnull(r["sparsity"]):
            r["sparsity"] = 0.0
        r["label"] = method_label(r["method"], r["init"], r["objective"])
        rows.append(r)
    t = pd.DataFrame(rows)
    t["sparsity"] = pd.to_numeric(t["sparsity"], errors="coerce").round(6)
    t["steps"] = pd.to_numeric(t["steps"], errors="coerce")
    return t


def omp_similarities(
    df: pd.DataFrame, exp_dir: str | os.PathLike | None = None, tickets: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Index ticket_id -> omp_similarity, omp_distance, omp_hamming, omp_ticket_id for every ticket with a mask
    file and an OMP ticket (same model, same sparsity) in ``df``. Others are absent from the result."""
    allt = ticket_table(df, exp_dir)
    if tickets is None:
        tickets = allt
    omp = allt[(allt["method"] == "omp") & allt["ticket_path"].notna()]
    rows = []
    for _, t in tickets.iterrows():
        if _isnull(t.get("ticket_path")) or _norm_str(t.get("method")) == "dense":
            continue
        cand = omp[(omp["model"] == t.get("model")) & np.isclose(omp["sparsity"].astype(float),
                                                                   float(t.get("sparsity", np.nan)))]  # fmt: skip
        if not len(cand):
            continue
        o = cand.iloc[0]
        try:
            r = M.distance_from_omp(t["ticket_path"], o["ticket_path"])
        except (M.MaskMismatchError, OSError) as e:
            logger.warning("cannot compare %s with OMP %s: %s", t["ticket_id"], o["ticket_id"], e)
            continue
        rows.append({"ticket_id": t["ticket_id"], **r, "omp_ticket_id": o["ticket_id"]})
    cols = ["omp_similarity", "omp_distance", "omp_hamming", "omp_ticket_id"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows).drop_duplicates("ticket_id").set_index("ticket_id")[cols]


# ---------------------------------------------------------------------------------------------------------------
# average


def average_over_tasks(tidy_df: pd.DataFrame, tasks: Iterable[str] | None = None) -> pd.DataFrame:
    """Per ticket: mean over tasks of (mean over fine-tuning seeds of best_score).

    Only tickets with a score for *every* task go in; ``tasks`` defaults to every task that has a finished
    score anywhere in ``tidy_df``. ``n_tasks``/``tasks`` say what was averaged."""
    ticket_cols = ["ticket_id", "label", *TICKET_FIELDS, "ticket_seed", "ticket_path", *LOSSES, "loss_source",
                   "omp_similarity", "omp_hamming"]  # fmt: skip
    cols = [*ticket_cols, "avg_score", "score_std_seeds", "n_tasks", "tasks", "n_seeds"]
    if tidy_df is None or not len(tidy_df):
        return pd.DataFrame(columns=cols)
    t = tidy_df[tidy_df["best_score"].notna()]
    want = sorted(set(tasks) if tasks is not None else set(t["task"].dropna()))
    if not want:
        return pd.DataFrame(columns=cols)
    t = t[t["task"].isin(want)]
    per_task = t.groupby(["ticket_id", "task"]).agg(
        score=("best_score", "mean"), std=("best_score", "std"), n_seeds=("best_score", "size")
    ).reset_index()
    rows = []
    first = t.drop_duplicates("ticket_id").set_index("ticket_id")
    for tid, g in per_task.groupby("ticket_id", sort=False):
        if set(g["task"]) != set(want):
            continue
        info = first.loc[tid]
        r = {c: info.get(c, np.nan) for c in ticket_cols if c != "ticket_id"}
        r["ticket_id"] = tid
        r["avg_score"] = float(g["score"].mean())
        r["score_std_seeds"] = float(g["std"].mean()) if g["std"].notna().any() else np.nan
        r["n_tasks"] = len(want)
        r["tasks"] = ",".join(want)
        r["n_seeds"] = int(g["n_seeds"].min())
        rows.append(r)
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)[cols]
    return out.sort_values(["model", "sparsity", "label", "ticket_id"], na_position="last").reset_index(drop=True)


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


def _write(df: pd.DataFrame, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    pq, csv = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    out = df.copy()
    for c in out.columns:  # parquet needs one type per object column
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: None if _isnull(v) else (v if isinstance(v, str) else str(v)))
    out.to_parquet(pq, index=False)
    out.to_csv(csv, index=False)
    return [pq, csv]


def write_tables(
    exp_dir: str | os.PathLike, df: pd.DataFrame | None = None, similarity: bool = True
) -> dict[str, Any]:
    """Write ``EXP_DIR/analysis/tidy.{parquet,csv}`` and ``average.{parquet,csv}``.

    Returns {"results", "tidy", "average", "paths"} (the frames and the written files)."""
    exp_dir = Path(exp_dir)
    if df is None:
        df = load_results(exp_dir)
    td = tidy(df, exp_dir, similarity=similarity)
    avg = average_over_tasks(td)
    out = exp_dir / ANALYSIS_DIR
    paths = _write(td, out / "tidy") + _write(avg, out / "average")
    return {"results": df, "tidy": td, "average": avg, "paths": paths}


def fmt_num(v: Any, digits: int = 4) -> str:
    """Compact display of a table cell (used by the report)."""
    if _isnull(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isfinite(f) and f == int(f) and abs(f) < 1e12:
            return str(int(f))
        return f"{f:.{digits}g}"
    return str(v)
