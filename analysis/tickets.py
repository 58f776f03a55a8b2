"""The tickets an experiment knows: ids, descriptions and files (from results rows and ``ticket.json``), and
each ticket's mask similarity to the OMP ticket of the same model and sparsity."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sparsebert.tickets.finders import method_label
from sparsebert.tickets.ticket import META_FILE, read_meta

from . import masks as M
from .results_io import TICKET_FIELDS, _col, _first_valid, _isnull, _norm_str, _stage

logger = logging.getLogger(__name__)


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

