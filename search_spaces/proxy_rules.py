"""Checks of a space's ``proxy:`` section (the rule of the two-stage proxy-guided search, run by
:mod:`search.proxy_search`). No Ray here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .space import Space, SpaceError, _is_dim
from sparsebert.proxy import PROXY_METRICS, ProxyRule

# result columns a rule may group by (stage 1 rows carry these: search.results.results_frame)
BY_COLUMNS = ("sparsity", "method", "model", "init", "objective", "steps", "ticket_seed", "label")


def validate_proxy(path: Path, raw_proxy: Any) -> ProxyRule:
    """The ``proxy:`` section as a :class:`ProxyRule`; raises SpaceError ``file: proxy.key: message``."""
    name = Path(path).name
    if not isinstance(raw_proxy, dict):
        raise SpaceError(f"{name}: proxy: must be a mapping of {[f.name for f in dataclasses.fields(ProxyRule)]}, "
                         f"got {raw_proxy!r}")
    try:
        rule = ProxyRule.from_dict(raw_proxy)
    except KeyError as e:
        raise SpaceError(f"{name}: proxy.{e.args[0]}: unknown key; valid: "
                         f"{sorted(f.name for f in dataclasses.fields(ProxyRule))}") from None
    except (ValueError, TypeError) as e:
        raise SpaceError(f"{name}: proxy.{e}") from None  # ProxyRule's messages are "key: message"
    if rule.metric not in PROXY_METRICS:
        raise SpaceError(f"{name}: proxy.metric: must be one of {PROXY_METRICS} (what stage 1 measures), "
                         f"got {rule.metric!r}")
    for col in ([rule.by] if isinstance(rule.by, str) else rule.by or []):
        if col not in BY_COLUMNS:
            raise SpaceError(f"{name}: proxy.by: {col!r} is not a ticket column; valid: {list(BY_COLUMNS)}")
    return rule


def check_space(space: Space) -> ProxyRule:
    """validate_proxy plus what the rule needs from the rest of the space. Raises SpaceError."""
    rule = validate_proxy(space.path, space.raw.get("proxy"))
    name = space.path.name
    if space.stage != "transfer":
        raise SpaceError(f"{name}: proxy: needs stage transfer and a transfer section (stage 2 fine-tunes the "
                         f"selected tickets), got stage {space.stage}")
    if space.tune["searcher"]["type"] == "optuna":
        raise SpaceError(f"{name}: proxy: stage 2 is a grid over the selected tickets: use searcher grid or random")
    if space.tune["metric"] not in ("score", "best_score"):
        raise SpaceError(f"{name}: proxy: tune.metric must be score or best_score (stage 2's downstream metric), "
                         f"got {space.tune['metric']!r}")
    max_steps = space.transfer.get("max_steps")
    if rule.rule == "halving":
        if _is_dim(max_steps):
            raise SpaceError(f"{name}: proxy.rule: halving sets transfer.max_steps per ticket; transfer.max_steps "
                             "must not be a search dimension")
        if rule.budget is None and not (isinstance(max_steps, int) and max_steps > 0):
            raise SpaceError(f"{name}: proxy.budget: rule halving needs proxy.budget or transfer.max_steps > 0")
    return rule
