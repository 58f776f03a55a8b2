"""Reading ``results.parquet`` / writing analysis tables, and the cell helpers every analysis module shares.

Statuses come from :mod:`search.results`: TERMINATED (ran to its last step), EARLY_STOPPED (a scheduler such as
ASHA stopped it before its last step, so its best score is a lower bound), ERROR, PENDING, and Ray's RUNNING /
PAUSED for a sweep read while it runs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
ANALYSIS_DIR = "analysis"

EARLY_STOPPED = "EARLY_STOPPED"
#: statuses whose best dev score counts: finished trials and trials a scheduler (ASHA) stopped early — the best
#: score an early-stopped trial reached is a real (lower-bound) measurement, and dropping them would leave only the
#: winners of an ASHA sweep in every correlation. ``exclude_stopped`` keeps TERMINATED only.
FINISHED = ("TERMINATED", EARLY_STOPPED)
ACTIVE = ("RUNNING", "PENDING", "PAUSED")

TICKET_FIELDS = ("model", "method", "init", "objective", "sparsity", "steps")
LOSSES = ("mlm_loss", "kd_loss", "kd_loss_mse")

#: the marker of a score that is (or an aggregate that includes) a cut-short trial's, and its footnote
DAGGER = "†"
DAGGER_NOTE = f"{DAGGER} stopped early by the scheduler (ASHA) before its last step: the score is a lower bound."


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


def write_frame(df: pd.DataFrame, stem: Path) -> list[Path]:
    """Write ``stem.parquet`` and ``stem.csv`` (object columns as strings or None); returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    pq, csv = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    out = df.copy()
    for c in out.columns:  # parquet needs one type per object column
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: None if _isnull(v) else (v if isinstance(v, str) else str(v)))
    out.to_parquet(pq, index=False)
    out.to_csv(csv, index=False)
    return [pq, csv]


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


def _first_valid(values: Iterable[Any]) -> Any:
    for v in values:
        if not _isnull(v):
            return v
    return np.nan


def stopped_mask(df: pd.DataFrame) -> pd.Series:
    """Boolean per row: the score is (or includes) one of a trial stopped early by the scheduler.

    Read from ``stopped_early`` (tidy rows), else ``n_stopped > 0`` (averages), else ``status`` (raw results);
    all False when the frame has none of them."""
    if "stopped_early" in df.columns:
        return df["stopped_early"].astype(object).map(lambda v: False if _isnull(v) else bool(v)).astype(bool)
    if "n_stopped" in df.columns:
        return pd.to_numeric(df["n_stopped"], errors="coerce").fillna(0).gt(0)
    if "status" in df.columns:
        return _status(df).eq(EARLY_STOPPED)
    return pd.Series(False, index=df.index, dtype=bool)


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


def mark_stopped(values: Iterable[Any], stopped: Iterable[bool]) -> list[str]:
    """Display strings of ``values`` (:func:`fmt_num`) with :data:`DAGGER` appended where ``stopped``."""
    return [fmt_num(v) + (DAGGER if s and fmt_num(v) else "") for v, s in zip(values, stopped)]
