"""Reading ``results.parquet`` / writing analysis tables, and the cell helpers every analysis module shares.

Statuses come from :mod:`search.results`: TERMINATED (ran to its last step), EARLY_STOPPED (a scheduler such as
ASHA stopped it before its last step, so its best score is a lower bound), ERROR, PENDING, PAUSED (an interrupted
driver left it part-way: not the scheduler's decision; resume continues it), and Ray's RUNNING for a sweep read while
it runs.
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

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


class ResultsDamaged(ValueError):
    """Neither ``results.parquet`` nor ``results.csv`` of an experiment is intact (the message is one line naming
    the files and what is wrong with each)."""


def _why(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _read_parquet(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """(frame, None) or (None, what is wrong) -- a half-written parquet has no footer, pyarrow cannot open it."""
    try:
        return pd.read_parquet(path), None
    except Exception as e:  # noqa: BLE001 -- ArrowInvalid, OSError, ...: any failure means the file is unusable
        return None, f"unreadable ({_why(e)})"


def _read_csv(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """(frame, None) or (None, what is wrong): empty, unparsable, or cut short (a last line without its newline
    or with fewer fields than the header -- ``to_csv`` ends every row with a newline)."""
    import csv

    try:
        raw = path.read_bytes()
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if not raw.strip():
        return None, "empty"
    try:
        text = raw.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except (UnicodeDecodeError, csv.Error) as e:
        return None, f"unreadable ({_why(e)})"
    width = len(rows[0])
    ragged = next((i for i, r in enumerate(rows[1:], 2) if len(r) != width), None)
    if ragged is not None:
        return None, f"cut short (line {ragged} has {len(rows[ragged - 1])} of {width} fields)"
    if not text.endswith("\n"):
        return None, "cut short (its last line has no newline)"
    try:
        return pd.read_csv(io.StringIO(text)), None
    except Exception as e:  # noqa: BLE001 -- EmptyDataError, ParserError, ...
        return None, f"unreadable ({_why(e)})"


def read_results_files(exp_dir: str | os.PathLike) -> tuple[pd.DataFrame | None, Path | None, list[str]]:
    """The experiment's results table from whichever of ``results.parquet`` / ``results.csv`` is intact.

    Returns ``(frame, file it came from, warnings)``; ``(None, None, [])`` when neither file exists. Damage: a
    parquet pyarrow cannot read; a CSV that is empty, unparsable, cut short (ragged or unterminated last line) or
    has fewer rows than the parquet. The parquet is preferred; a damaged one falls back to an intact CSV and vice
    versa, each with a warning naming the damaged file. Raises :class:`ResultsDamaged` when no copy is intact."""
    exp_dir = Path(exp_dir)
    pq, csv = exp_dir / RESULTS_PARQUET, exp_dir / RESULTS_CSV
    has_pq, has_csv = pq.is_file(), csv.is_file()
    if not has_pq and not has_csv:
        return None, None, []
    df_pq, why_pq = _read_parquet(pq) if has_pq else (None, None)
    df_csv, why_csv = _read_csv(csv) if has_csv else (None, None)
    if why_csv == "empty" and df_pq is not None and df_pq.empty:
        why_csv = None  # a table of no trials is written as an empty CSV
    if df_csv is not None and df_pq is not None and len(df_csv) < len(df_pq):
        df_csv, why_csv = None, f"cut short ({len(df_csv)} rows, {pq.name} has {len(df_pq)})"
    warns = [f"{f} is damaged: {why}" for f, why in ((pq, why_pq), (csv, why_csv)) if why]
    if df_pq is not None:
        return df_pq, pq, [w + f"; using {pq.name}" for w in warns]
    if df_csv is not None:
        return df_csv, csv, [w + f"; using {csv.name}" for w in warns]
    missing = [f"{f} does not exist" for f, there in ((pq, has_pq), (csv, has_csv)) if not there]
    raise ResultsDamaged("no intact results in " + str(exp_dir) + ": " + "; ".join(
        [f"{f.name} is {why}" for f, why in ((pq, why_pq), (csv, why_csv)) if why] + missing))


def load_results(exp_dir: str | os.PathLike, warn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Read ``EXP_DIR/results.parquet`` (else ``results.csv``), skipping a damaged copy (see
    :func:`read_results_files`; ``warn`` gets each warning, default: printed to stderr as ``warning: ...``).
    ``df.attrs["exp_dir"]`` remembers the directory, ``df.attrs["results_file"]`` the file read.

    Raises FileNotFoundError when neither file exists, :class:`ResultsDamaged` when neither is intact."""
    exp_dir = Path(exp_dir)
    df, src, warns = read_results_files(exp_dir)
    if df is None:
        raise FileNotFoundError(f"no results in {exp_dir}: neither {exp_dir / RESULTS_PARQUET} nor "
                                f"{exp_dir / RESULTS_CSV} exists")
    warns = [*warns, *missing_trials(exp_dir, df, src)]
    for w in warns:
        (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(w)
    df.attrs["exp_dir"] = str(exp_dir)
    df.attrs["results_file"] = str(src)
    if warns:
        df.attrs["results_warnings"] = list(warns)
    return df


TRIAL_FILES = ("config.json", "params.json")  # a local-executor trial dir, a Ray Tune one


def missing_trials(exp_dir: Path, df: pd.DataFrame, src: Path | None = None) -> list[str]:
    """The cross-check of a results table against the experiment's trial directories: a warning (one line, in a
    list) when directories of trials (holding ``config.json`` or Tune's ``params.json``) have no row in ``df`` --
    the table is cut short or stale (a trial that never started has a row but no directory: that is fine)."""
    exp_dir = Path(exp_dir)
    try:
        dirs = sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and not p.is_symlink()
                      and any((p / f).is_file() for f in TRIAL_FILES))
    except OSError:
        return []
    known = {str(v) for v in _col(df, "trial_id", None).dropna()}
    known |= {Path(str(v)).name for v in _col(df, "trial_dir", None).dropna()}
    lost = [d for d in dirs if d not in known]
    if not lost:
        return []
    return [f"{src or exp_dir / RESULTS_PARQUET} has {len(df)} rows, but {len(lost)} of the {len(dirs)} trial "
            f"directories in {exp_dir} have no row (e.g. {', '.join(lost[:3])}): the table is cut short or stale, "
            f"so counts below miss those trials; `run_search.py resume {exp_dir}` rewrites it from them"]


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
