"""Correlation of pre-training loss with downstream score (the paper's proxy analysis).

Point estimates and p-values are scipy's (``pearsonr``, ``spearmanr``, ``kendalltau`` tau-b, two-sided).
Confidence intervals are **percentile bootstrap intervals from a seeded numpy resampling** of (x, y) pairs
(``numpy.random.default_rng(seed)``; the same resampled index sets serve all three coefficients). We do not use
``scipy.stats.bootstrap`` because with the handful of points per sparsity typical here many resamples are
degenerate (constant x or y, correlation undefined); scipy then returns NaN intervals, while we drop those
resamples and report how many were used (``n_boot_used``). Groups with n < 3 (or constant x or y) are reported
with NaN statistics and their n.

``n_stopped`` counts the points whose score is (or, for a per-ticket mean, includes) one of a trial the scheduler
stopped early, a lower bound; the ``note`` then says "k of n points cut short".
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .results_io import stopped_mask

MIN_N = 3
COEFS = ("pearson", "spearman", "kendall")

RESULT_COLUMNS = [
    "x", "y", "by", "group", "n",
    "pearson", "pearson_p", "pearson_ci_low", "pearson_ci_high",
    "spearman", "spearman_p", "spearman_ci_low", "spearman_ci_high",
    "kendall", "kendall_p", "kendall_ci_low", "kendall_ci_high",
    "n_boot_used", "note", "n_stopped",
]  # fmt: skip


def _point(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = stats.pearsonr(x, y)
        s = stats.spearmanr(x, y)
        k = stats.kendalltau(x, y)
    return {
        "pearson": float(p.statistic), "pearson_p": float(p.pvalue),
        "spearman": float(s.statistic), "spearman_p": float(s.pvalue),
        "kendall": float(k.statistic), "kendall_p": float(k.pvalue),
    }  # fmt: skip


def _rows_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of two (B, n) arrays; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    r[~(den > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap CIs of Pearson, Spearman, Kendall by seeded resampling of (x, y) pairs."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    out: dict[str, Any] = {f"{c}_ci_{e}": np.nan for c in COEFS for e in ("low", "high")}
    out["n_boot_used"] = 0
    if n < MIN_N or n_boot <= 0:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb, yb = x[idx], y[idx]
    ok = (np.ptp(xb, axis=1) > 0) & (np.ptp(yb, axis=1) > 0)
    xb, yb = xb[ok], yb[ok]
    out["n_boot_used"] = int(ok.sum())
    if not len(xb):
        return out
    boots = {
        "pearson": _rows_pearson(xb, yb),
        "spearman": _rows_pearson(stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boots["kendall"] = np.array([stats.kendalltau(a, b).statistic for a, b in zip(xb, yb)], float)
    alpha = (1.0 - ci) / 2.0
    for c, v in boots.items():
        v = v[np.isfinite(v)]
        if len(v):
            out[f"{c}_ci_low"], out[f"{c}_ci_high"] = (float(q) for q in np.quantile(v, [alpha, 1.0 - alpha]))
    return out


def _one(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    n = len(x)
    row: dict[str, Any] = {c: np.nan for c in RESULT_COLUMNS[5:-1]}
    row["n"] = n
    row["n_boot_used"] = 0
    row["note"] = ""
    if n < MIN_N:
        row["note"] = f"n={n} < {MIN_N}"
        return row
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        row["note"] = "constant x or y"
        return row
    row.update(_point(x, y))
    row.update(bootstrap(x, y, n_boot=n_boot, seed=seed, ci=ci))
    return row


def _stopped_note(flags: pd.Series, note: str = "") -> dict[str, Any]:
    """``n_stopped`` and the note extended with "k of n points cut short" (unchanged when none was)."""
    k, n = int(flags.sum()), len(flags)
    if not k:
        return {"n_stopped": 0}
    extra = f"{k} of {n} points cut short (lower bounds)"
    return {"n_stopped": k, "note": f"{note}; {extra}" if note else extra}


def correlate(
    df: pd.DataFrame,
    x: str,
    y: str,
    by: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    stopped: str | None = None,
) -> pd.DataFrame:
    """Pearson/Spearman/Kendall of ``df[x]`` vs ``df[y]``, overall (group "all") and within each ``by`` group.

    Rows with NaN in x or y are dropped first. Returns one row per group with columns :data:`RESULT_COLUMNS`;
    a missing x/y/by column gives NaN rows with a note instead of an error. ``stopped``: a boolean column marking
    cut-short points, counted into ``n_stopped`` (0 without it)."""
    rows: list[dict[str, Any]] = []
    base = {"x": x, "y": y, "by": by}
    missing = [c for c in (x, y) if c not in df.columns]
    if missing:
        r = _one(np.array([]), np.array([]), n_boot, seed, ci)
        r["note"] = f"missing column(s) {missing}"
        return pd.DataFrame([{**base, "group": "all", **r, "n_stopped": 0}], columns=RESULT_COLUMNS)
    d = df[[x, y] + ([by] if by is not None and by in df.columns else [])].copy()
    d["_stopped"] = df[stopped].eq(True) if stopped is not None and stopped in df.columns else False
    d[x] = pd.to_numeric(d[x], errors="coerce")
    d[y] = pd.to_numeric(d[y], errors="coerce")
    d = d[np.isfinite(d[x].to_numpy(float)) & np.isfinite(d[y].to_numpy(float))]
    r = _one(d[x].to_numpy(float), d[y].to_numpy(float), n_boot, seed, ci)
    rows.append({**base, "group": "all", **r, **_stopped_note(d["_stopped"], r["note"])})
    if by is not None:
        if by not in df.columns:
            rows.append({**base, "group": None, **_one(np.array([]), np.array([]), 0, seed, ci),
                         "note": f"missing column {by!r}", "n_stopped": 0})  # fmt: skip
        else:
            for g, sub in d.groupby(by, sort=True, dropna=True):
                r = _one(sub[x].to_numpy(float), sub[y].to_numpy(float), n_boot, seed, ci)
                rows.append({**base, "group": g, **r, **_stopped_note(sub["_stopped"], r["note"])})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


#: the losses :func:`loss_score_correlations` always correlates, and those it adds when their column exists
LOSSES = ("mlm_loss", "kd_loss")
OPTIONAL_LOSSES = ("kd_loss_mse",)


def loss_score_correlations(
    tidy: pd.DataFrame,
    avg: pd.DataFrame | None = None,
    losses: tuple[str, ...] | None = None,
    score: str = "best_score",
    avg_score: str = "avg_score",
    by: str = "sparsity",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """The paper's analysis: each loss vs downstream score, overall and per sparsity, per task and for the average.

    Per task, seeds are first averaged per (ticket, task) so a ticket counts once (cut short when any of its
    seeds' trials was, see :func:`analysis.results_io.stopped_mask`). Returns the rows of :func:`correlate` with a
    leading ``task`` column ("average" for the over-task average).

    ``losses`` None: :data:`LOSSES` (mlm_loss, kd_loss: always, a missing column gives a "missing" row) plus each
    of :data:`OPTIONAL_LOSSES` (kd_loss_mse, the reference's full_mse KD loss) that ``tidy`` or ``avg`` holds values
    of (a column of NaN only -- results from before it was measured -- is left out)."""
    if losses is None:
        have = {c for df in (tidy, avg) if df is not None for c in df.columns if df[c].notna().any()}
        losses = (*LOSSES, *(c for c in OPTIONAL_LOSSES if c in have))
    parts = []
    if tidy is not None and len(tidy) and "task" in tidy.columns and score in tidy.columns:
        key = "ticket_id" if "ticket_id" in tidy.columns else None
        for task, sub in tidy.assign(_stopped=stopped_mask(tidy)).groupby("task", sort=True):
            if key is not None:
                cols = [c for c in (*losses, by) if c in sub.columns]
                agg = {c: "first" for c in cols}
                agg[score] = "mean"
                agg["_stopped"] = "any"
                sub = sub.groupby(key, dropna=False).agg(agg).reset_index()
            for loss in losses:
                r = correlate(sub, loss, score, by=by, n_boot=n_boot, seed=seed, ci=ci, stopped="_stopped")
                r.insert(0, "task", task)
                parts.append(r)
    if avg is not None and len(avg) and avg_score in avg.columns:
        avg = avg.assign(_stopped=stopped_mask(avg))
        for loss in losses:
            r = correlate(avg, loss, avg_score, by=by, n_boot=n_boot, seed=seed, ci=ci, stopped="_stopped")
            r.insert(0, "task", "average")
            parts.append(r)
    if not parts:
        return pd.DataFrame(columns=["task", *RESULT_COLUMNS])
    return pd.concat(parts, ignore_index=True)
