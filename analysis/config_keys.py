"""The searched keys of an experiment: the ``config/<section>.<key>`` columns of ``results.parquet`` (every value of
a trial's config, flattened by :func:`search.results.config_columns`) whose value differs between its trials.

Rows of the analysis are keyed by them (two trials that differ only in a searched value are two rows), the summary
and the report's tables show them (and no constant one), and ``report --best-by KEY`` / ``--group-by KEY`` pick the
best value of one of them or tabulate the scores by its values (:func:`best_by`, :func:`by_key`)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

CONFIG = "config/"

#: config columns that another column of a table already shows (the ticket's method label, sparsity, task, seed)
SHOWN_AS = {"config/ticket.method": "label", "config/ticket.init": "label", "config/ticket.objective": "label",
            "config/ticket.sparsity": "sparsity", "config/transfer.task": "task", "config/transfer.seed": "seed",
            "config/stage": "stage"}


def config_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if isinstance(c, str) and c.startswith(CONFIG)]


def short(col: str) -> str:
    """``config/transfer.lr`` -> ``transfer.lr`` (the name tables print)."""
    return col[len(CONFIG):] if col.startswith(CONFIG) else col


def _distinct(s: pd.Series) -> int:
    return s.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else repr(v)).nunique(
        dropna=False)


def varying_keys(df: pd.DataFrame, shown: Iterable[str] = ()) -> list[str]:
    """The config columns whose value differs between ``df``'s rows (a value missing on some rows counts as a
    value), minus those :data:`SHOWN_AS` a column in ``shown``."""
    shown = set(shown)
    return [c for c in config_columns(df) if _distinct(df[c]) > 1 and SHOWN_AS.get(c) not in shown]


def searched_keys(transfers: pd.DataFrame) -> list[str]:
    """The keys that tell transfer trials apart beyond (ticket, task, fine-tuning seed): every varying config
    value but the task and the seed (they are the ``task`` and ``seed`` columns)."""
    return [c for c in varying_keys(transfers) if c not in ("config/transfer.task", "config/transfer.seed")]


def within_task_keys(tidy_df: pd.DataFrame, keys: Iterable[str]) -> list[str]:
    """Of ``keys``, those that take several values for one ticket on one task (a searched value such as an lr
    grid), not those fixed by the ticket or by the task (e.g. an lr set per task): the average over tasks keeps
    the former apart and averages over the latter."""
    out = []
    for k in keys:
        if k in tidy_df and len(tidy_df):
            n = tidy_df.groupby(["ticket_id", "task"], dropna=False)[k].agg(_distinct)
            if (n > 1).any():
                out.append(k)
    return out


class UnknownKey(ValueError):
    """A ``--best-by`` / ``--group-by`` key that is not a config column of the results (the message lists the
    searched ones)."""


def resolve_key(df: pd.DataFrame, key: str) -> str:
    """``transfer.lr`` or ``config/transfer.lr`` -> the column; :class:`UnknownKey` (one line, listing the searched
    keys) when the results have no such config column."""
    col = key if key.startswith(CONFIG) else CONFIG + key
    if col in df.columns:
        return col
    keys = ", ".join(short(c) for c in varying_keys(df)) or "none"
    raise UnknownKey(f"{key}: not a config key of these results (the searched keys here: {keys})")


def _mean_by(td: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    return (td.groupby(group, dropna=False, sort=False)["best_score"]
            .agg(mean="mean", std="std", n="size").reset_index())  # fmt: skip


def best_by(td: pd.DataFrame, key: str) -> pd.DataFrame:
    """The tidy rows of the best value of ``key`` per ticket and task (and other searched key): the value with
    the highest mean best_score over fine-tuning seeds (ties: the first in the table); the others are dropped."""
    if not len(td) or key not in td:
        return td
    others = [c for c in config_columns(td) if c != key]
    group = ["ticket_id", "task", *others]
    m = _mean_by(td, group + [key])
    best = m.sort_values("mean", ascending=False, kind="stable").drop_duplicates(group, keep="first")
    keep = best[group + [key]].assign(_keep=True)
    out = td.merge(keep, on=group + [key], how="left")
    return out[out["_keep"].eq(True)].drop(columns="_keep").reset_index(drop=True)


def by_key(td: pd.DataFrame, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores by the values of ``key``: (per ticket and task: mean, std and count over seeds of best_score per
    value; per task: the mean over tickets of those means per value, ``best`` marking the value with the highest
    one -- the rule "best mean dev score over the tickets swept")."""
    if not len(td) or key not in td:
        return pd.DataFrame(), pd.DataFrame()
    per_ticket = _mean_by(td, ["task", "label", "sparsity", "ticket_id", key])
    per_task = (per_ticket.groupby(["task", key], dropna=False, sort=False)["mean"]
                .agg(mean="mean", n_tickets="size").reset_index())  # fmt: skip
    top = per_task.sort_values("mean", ascending=False, kind="stable").drop_duplicates("task")
    per_task["best"] = per_task.index.isin(top.index)
    order = {t: i for i, t in enumerate(dict.fromkeys(td["task"]))}
    per_task = per_task.sort_values(["task", key], key=lambda s: s.map(order) if s.name == "task" else s)
    return per_ticket.reset_index(drop=True), per_task.reset_index(drop=True)
