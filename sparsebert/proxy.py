"""Proxy-guided ticket selection (issue 7): pure rules on a DataFrame of candidate tickets. No Ray here.

The paper's finding (SPEC.md, "Pre-training quality of a ticket"): within a sparsity, a ticket's pre-training loss
(MLM or KD, measured without any fine-tuning) goes with its downstream score. So a search can score every
candidate ticket by that cheap proxy and spend fine-tuning compute only on the promising ones. Two rules:

* :func:`top_k` -- the ``k`` best candidates by the proxy, per group (e.g. per sparsity); each selected ticket
  gets the full fine-tuning budget, the others none.
* :func:`halving_budgets` -- a successive-halving bracket laid out by the proxy rank: rank 1 gets the most
  fine-tuning steps, the bottom ones none (see its docstring for the exact definition).

:class:`ProxyRule` is the ``proxy:`` section of a search space (validated, with help text); :func:`select`
applies a rule and returns one row per candidate with its proxy value, rank, selected flag and budget.

Ranking is deterministic: candidates are ordered by the proxy (``mode`` min: lowest first), ties broken by
``ticket_id`` when the frame has that column, then by the frame's row order. Candidates whose proxy value is
missing (NaN: e.g. their evaluation failed) are never selected and get no rank.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

RULES = ("topk", "halving")
PROXY_METRICS = ("kd_loss", "mlm_loss")  # the two pre-training losses the evaluate stage reports
TIEBREAK = "ticket_id"


def _by_list(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    if isinstance(by, str):
        return [by]
    return list(by)


def _check_frame(df: pd.DataFrame, metric: str, by: list[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in [metric, *by] if c not in df.columns]
    if missing:
        raise KeyError(f"column(s) {missing} not in the results (have {sorted(map(str, df.columns))})")
    if not df.index.is_unique:
        raise ValueError("the frame's index must be unique (reset_index() first)")


def rank(df: pd.DataFrame, metric: str = "kd_loss", by: str | Sequence[str] | None = "sparsity",
         mode: str = "min") -> pd.Series:
    """Rank of every row within its group (1 = best by ``metric`` under ``mode``; dense ranks 1..n, no ties:
    equal values are ordered by ``ticket_id`` then row order). NaN metric -> rank NaN (pandas ``Int64`` NA)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    cols = _by_list(by)
    _check_frame(df, metric, cols)
    values = pd.to_numeric(df[metric], errors="coerce")
    key = values if mode == "min" else -values
    order = pd.DataFrame({"_key": key, "_pos": np.arange(len(df))}, index=df.index)
    sort_cols = ["_key"]
    if TIEBREAK in df.columns:
        order["_tie"] = df[TIEBREAK].astype(str)
        sort_cols.append("_tie")
    sort_cols.append("_pos")
    for c in cols:
        order[f"_by_{c}"] = df[c]
    valid = order[values.notna()].sort_values(sort_cols, kind="mergesort")
    out = pd.Series(pd.NA, index=df.index, dtype="Int64")
    if cols:
        # groupby on the sorted frame keeps the sorted order within each group; dropna=False keeps NaN groups
        r = valid.groupby([f"_by_{c}" for c in cols], dropna=False, sort=False).cumcount() + 1
    else:
        r = pd.Series(np.arange(1, len(valid) + 1), index=valid.index)
    out.loc[r.index] = r.astype("int64").to_numpy()
    return out


def top_k(df: pd.DataFrame, metric: str = "kd_loss", k: int = 1, by: str | Sequence[str] | None = "sparsity",
          mode: str = "min") -> pd.DataFrame:
    """The ``k`` best rows by ``metric`` per group of ``by`` (all rows of a group with fewer than ``k`` valid
    candidates), in group order then rank order. Ties are broken deterministically (``ticket_id``, then row
    order), so exactly ``min(k, n_valid)`` rows per group come back. Rows with a NaN metric are never picked."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    r = rank(df, metric, by, mode)
    picked = df[r.notna() & (r <= k)].assign(proxy_rank=r)
    sort = [*_by_list(by), "proxy_rank"]
    return picked.sort_values(sort, kind="mergesort").drop(columns="proxy_rank")


def halving_layout(n: int, total_budget: int, eta: int = 2, min_budget: int = 1) -> list[int]:
    """Integer step budgets for ranks 1..n of one group; see :func:`halving_budgets` for the definition."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(eta, (int, np.integer)) or isinstance(eta, bool) or eta < 2:
        raise ValueError(f"eta must be an integer >= 2, got {eta!r}")
    if not isinstance(total_budget, (int, np.integer)) or isinstance(total_budget, bool) or total_budget < 0:
        raise ValueError(f"total_budget must be a non-negative integer, got {total_budget!r}")
    if not isinstance(min_budget, (int, np.integer)) or isinstance(min_budget, bool) or min_budget < 1:
        raise ValueError(f"min_budget must be an integer >= 1, got {min_budget!r}")
    if n == 0:
        return []
    # rungs: n_0 = ceil(n / eta), n_{j+1} = ceil(n_j / eta), ..., down to 1 (n == 1: one rung of 1)
    rungs = [max(1, math.ceil(n / eta))]
    while rungs[-1] > 1:
        rungs.append(math.ceil(rungs[-1] / eta))
    share = total_budget / len(rungs)
    exact = [sum(share / m for m in rungs if i < m) for i in range(n)]  # rank i+1 survives rungs with m > i
    budgets = [math.floor(x) for x in exact]
    budgets[0] += total_budget - sum(budgets)  # rounding remainder to rank 1: sums exactly, stays monotone
    # candidates below min_budget get nothing; their steps go to rank 1 (a suffix, so monotonicity holds)
    for i in range(n - 1, 0, -1):
        if 0 < budgets[i] < min_budget:
            budgets[0] += budgets[i]
            budgets[i] = 0
    if budgets[0] < min_budget:
        budgets[0] = 0 if total_budget < min_budget else budgets[0]
    return budgets


def halving_budgets(df: pd.DataFrame, metric: str = "kd_loss", total_budget: int = 120, eta: int = 2,
                    by: str | Sequence[str] | None = "sparsity", mode: str = "min",
                    min_budget: int = 1) -> pd.Series:
    """Fine-tuning step budget of every row: successive halving laid out in advance by the proxy rank.

    Within each group of ``by`` (the whole frame when ``by`` is None), let the ``n`` candidates with a valid
    proxy be ranked 1..n (:func:`rank`). The bracket has rungs of sizes
    ``n_0 = ceil(n / eta)``, ``n_{j+1} = ceil(n_j / eta)``, ... down to ``n_{R-1} = 1`` (a single rung when
    n = 1): rung j holds the top ``n_j`` ranks. As in successive halving, every rung spends the same share
    ``total_budget / R`` of the group's budget, split equally among its members, so a candidate of rank r gets

        budget(r) = sum over rungs j with r <= n_j of  total_budget / (R * n_j)

    -- rank 1 (in every rung) the most, ranks past ``n_0`` (the bottom ``n - ceil(n / eta)``) nothing. Budgets are
    then made integers: floored, the remainder added to rank 1; a candidate left with fewer than ``min_budget``
    steps gets 0 and its steps go to rank 1. Hence, per group: budgets sum to exactly ``total_budget``
    (when ``total_budget >= min_budget``), are non-increasing in rank, and rank 1's is the largest.
    Rows with a NaN proxy get 0. ``total_budget`` is per group.

    Example: n = 6, eta = 2, total_budget = 180: rungs 3, 2, 1; ranks 1..6 get 110, 50, 20, 0, 0, 0.
    Returns an integer Series aligned with ``df``'s index.
    """
    r = rank(df, metric, by, mode)
    out = pd.Series(0, index=df.index, dtype="int64")
    valid = r.dropna().astype("int64")
    cols = _by_list(by)
    keys = cols[0] if len(cols) == 1 else cols
    groups = [valid] if not cols else [valid.loc[idx] for idx in
                                       df.loc[valid.index].groupby(keys, dropna=False, sort=True).groups.values()]
    for g in groups:
        layout = halving_layout(len(g), total_budget, eta, min_budget)
        out.loc[g.index] = [layout[int(x) - 1] for x in g.to_numpy()]
    return out


@dataclass
class ProxyRule:
    """The ``proxy:`` section of a search space: how stage 1's proxy picks what stage 2 fine-tunes."""

    rule: str = field(default="topk", metadata={
        "help": "topk: fine-tune the k best tickets per group with the space's transfer section | halving: "
                "fine-tune every group's top ceil(n/eta) with step budgets that follow the proxy rank"})
    metric: str = field(default="kd_loss", metadata={
        "help": "the proxy: kd_loss | mlm_loss (a ticket's pre-training loss, from the evaluate stage)"})
    mode: str = field(default="min", metadata={"help": "min (losses: lower is better) | max"})
    k: int = field(default=1, metadata={"help": "topk: tickets selected per group"})
    by: str | list[str] | None = field(default="sparsity", metadata={
        "help": "column(s) that form the groups ranked separately (e.g. sparsity); null: one group"})
    eta: int = field(default=2, metadata={"help": "halving: reduction factor between rungs (>= 2)"})
    budget: int | None = field(default=None, metadata={
        "help": "halving: total fine-tuning steps per group (default: k x the space's transfer.max_steps)"})
    min_budget: int = field(default=10, metadata={
        "help": "halving: a ticket given fewer steps than this is not fine-tuned at all (its steps go to rank 1)"})

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule: must be one of {RULES}, got {self.rule!r}")
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric: must be a column name such as {PROXY_METRICS}, got {self.metric!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode: must be 'min' or 'max', got {self.mode!r}")
        for name, lo in (("k", 1), ("eta", 2), ("min_budget", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
        if self.budget is not None and (not isinstance(self.budget, int) or isinstance(self.budget, bool)
                                        or self.budget < 1):
            raise ValueError(f"budget: must be an integer >= 1 (or null), got {self.budget!r}")
        if self.budget is not None and self.rule != "halving":
            raise ValueError("budget: only used by rule halving (topk fine-tunes with transfer.max_steps)")
        by = self.by
        if by is not None and not (isinstance(by, str) and by) and not (
            isinstance(by, list) and all(isinstance(c, str) and c for c in by)
        ):
            raise ValueError(f"by: must be a column name, a list of them, or null, got {by!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProxyRule":
        if not isinstance(d, dict):
            raise TypeError(f"must be a mapping of {[f.name for f in dataclasses.fields(cls)]}, got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(unknown[0])
        return cls(**d)

    @classmethod
    def help(cls) -> str:
        return "\n".join(f"  {f.name:<11} {f.metadata.get('help', '')} (default {f.default!r})"
                         for f in dataclasses.fields(cls))

    def total_budget(self, max_steps: int | None) -> int:
        """Halving's budget per group: ``budget``, else ``k`` x the transfer's max_steps."""
        if self.budget is not None:
            return self.budget
        if not max_steps or max_steps <= 0:
            raise ValueError("budget: rule halving needs proxy.budget or a transfer.max_steps > 0")
        return self.k * int(max_steps)


def select(df: pd.DataFrame, rule: ProxyRule, max_steps: int | None = None) -> pd.DataFrame:
    """Apply ``rule`` to the candidates in ``df`` (one row per candidate ticket). Returns a copy of ``df`` with
    ``proxy_metric``, ``proxy_value``, ``proxy_rank``, ``selected`` (bool) and ``budget`` (fine-tuning steps;
    topk: ``max_steps`` (NA if None) for the selected, 0 otherwise; halving: :func:`halving_budgets`,
    selected = budget > 0). Sorted by group then rank (unranked rows last)."""
    by = _by_list(rule.by)
    out = df.copy()
    out["proxy_metric"] = rule.metric
    _check_frame(out, rule.metric, by)
    out["proxy_value"] = pd.to_numeric(out[rule.metric], errors="coerce")
    out["proxy_rank"] = rank(out, rule.metric, by, rule.mode)
    if rule.rule == "topk":
        out["selected"] = (out["proxy_rank"].notna() & (out["proxy_rank"] <= rule.k)).astype(bool)
        # the space's transfer.max_steps for the selected (NA when it has none: an epoch budget or a grid of them)
        out["budget"] = pd.array([(int(max_steps) if max_steps else pd.NA) if s else 0 for s in out["selected"]],
                                 dtype="Int64")
    else:
        out["budget"] = halving_budgets(out, rule.metric, rule.total_budget(max_steps), rule.eta, by or None,
                                        rule.mode, rule.min_budget)
        out["selected"] = out["budget"] > 0
    out["_unranked"] = out["proxy_rank"].isna()
    out = out.sort_values([*by, "_unranked", "proxy_rank"], kind="mergesort").drop(columns="_unranked")
    return out
