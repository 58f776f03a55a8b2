"""The trials of a grid space for the local executor (:mod:`search.local`), without Ray: the space's config template
expanded over its grids, each trial with a stable id, the ticket it needs and a cost for ordering; the order
(costliest first, tickets interleaved), shards (whole tickets per part) and ``--exclude`` rules."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces.space import Space, SpaceError, _is_dim

from sparsebert.tickets.finders import ticket_config  # noqa: F401  (re-exported: search/results, tuner)

from .tune_space import config_template

def check_local(space: Space) -> None:
    """The local executor runs grids to completion: refuse what needs Tune, naming the key."""
    sched, searcher = space.tune["scheduler"]["type"], space.tune["searcher"]["type"]
    if sched != "fifo":
        raise SpaceError(f"{space.path.name}: tune.scheduler: {sched} needs Ray Tune; the local executor runs every "
                         "trial to the end (scheduler: fifo). Run without --executor local.")
    if searcher == "optuna":
        raise SpaceError(f"{space.path.name}: tune.searcher: optuna needs Ray Tune; run without --executor local.")
    if space.raw.get("proxy") is not None:
        raise SpaceError(f"{space.path.name}: proxy: the two-stage proxy search needs Ray Tune.")
    for sec in ("ticket", "transfer"):
        for k, v in (getattr(space, sec) or {}).items():
            if _is_dim(v) and "grid" not in v:
                raise SpaceError(f"{space.path.name}: {sec}.{k}: {next(iter(v))} is sampled; the local executor "
                                 "expands grids only")


def _grid_paths(t: Any, path: tuple = ()) -> list[tuple[tuple, list]]:
    if _is_dim(t):
        return [(path, t["grid"])]
    if isinstance(t, dict):
        return [p for k, v in t.items() for p in _grid_paths(v, path + (k,))]
    return []


def _set(d: dict, path: tuple, v: Any) -> dict:
    if len(path) == 1:
        return {**d, path[0]: v}
    return {**d, path[0]: _set(d[path[0]], path[1:], v)}


def expand(template: dict[str, Any], num_samples: int = 1) -> list[dict[str, Any]]:
    """Every grid point of a config template (the cartesian product of its ``{grid: [...]}`` leaves)."""
    dims = _grid_paths(template)
    out = []
    for _ in range(num_samples):
        for combo in itertools.product(*(vals for _, vals in dims)):
            cfg = template
            for (path, _), v in zip(dims, combo):
                cfg = _set(cfg, path, v)
            out.append(cfg)
    return out


def ticket_label(t: dict[str, Any]) -> str:
    """The method label of a ticket config (``TAMT-KD``, ``OMP``, ...)."""
    from sparsebert.tickets.finders import method_label

    return method_label(t.get("method", "omp"), t.get("init"), t.get("objective") if t.get("method") == "tamt"
                        else None)


def trial_label(cfg: dict[str, Any]) -> str:
    t = ticket_config(cfg)
    tr = cfg.get("transfer") or {}
    bits = [ticket_label(t), f"s={t.get('sparsity')}" if t.get("method") != "dense" else "",
            str(tr.get("task", "")), f"seed {tr['seed']}" if "seed" in tr else ""]
    return " ".join(b for b in bits if b)


@dataclass
class Trial:
    index: int
    config: dict[str, Any]
    ticket_id: str
    cost: float

    @property
    def trial_id(self) -> str:
        h = hashlib.sha1(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{self.index:04d}_{h}"

    @property
    def label(self) -> str:
        return trial_label(self.config)


def _cost(cfg: dict[str, Any]) -> float:
    """Relative cost of a trial, for ordering: training rows x epochs for fine-tuning (by the train file's size
    where the data is local), the finder's steps otherwise."""
    tr = cfg.get("transfer")
    if not tr:
        t = ticket_config(cfg)
        return float(t.get("steps", 1) if isinstance(t.get("steps"), (int, float)) else 1)
    if tr.get("max_steps"):
        return float(tr["max_steps"]) * float(tr.get("batch_size", 32))
    from sparsebert.transfer.task_data import train_file

    f = train_file(str(tr.get("task")), tr.get("data_dir"))
    return (f.stat().st_size / 100.0 if f is not None else 1000.0) * float(tr.get("epochs", 3))


def trials(space: Space, store_root: Path) -> list[Trial]:
    from sparsebert.tickets.finders import finder_spec
    from sparsebert.transfer.per_task import resolve_config

    out = []
    for i, cfg in enumerate(expand(config_template(space, store_root), space.tune["num_samples"])):
        cfg = resolve_config(cfg)  # values set per task: the trial's task's
        spec = finder_spec(ticket_config(cfg))
        out.append(Trial(i, cfg, spec.ticket_id, _cost(cfg)))
    return out


def schedule(ts: list[Trial]) -> list[Trial]:
    """Costliest first; among equals, tickets interleaved (the k-th trial of every ticket before any k+1-th)."""
    rank: dict[str, int] = {}
    keyed = []
    for t in sorted(ts, key=lambda t: (-t.cost, t.index)):
        rank[t.ticket_id] = rank.get(t.ticket_id, -1) + 1
        keyed.append(((-t.cost, rank[t.ticket_id], t.index), t))
    return [t for _, t in sorted(keyed, key=lambda x: x[0])]


def shard(ts: list[Trial], k: int, n: int) -> list[Trial]:
    """The k-th (1-based) of n parts: whole tickets per part, greedily balanced by cost."""
    groups: dict[str, list[Trial]] = {}
    for t in ts:
        groups.setdefault(t.ticket_id, []).append(t)
    loads, parts = [0.0] * n, [[] for _ in range(n)]
    for tid in sorted(groups, key=lambda g: (-sum(t.cost for t in groups[g]), g)):
        j = loads.index(min(loads))
        loads[j] += sum(t.cost for t in groups[tid])
        parts[j].extend(groups[tid])
    return parts[k - 1]


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if part == "ticket" and "variant" in cfg and cur is cfg:  # a trial's ticket = ticket + variant
            cur = ticket_config(cfg)
            continue
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def parse_exclude(items: list[str] | None) -> list[dict[str, str]]:
    """``--exclude transfer.task=sst2,transfer.seed=2`` -> [{key: value}]: a trial matching every pair of one
    item is left out (it stays PENDING in the results; a later run without the item runs it)."""
    out = []
    for item in items or []:
        pairs = {}
        for pair in item.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise SpaceError(f"--exclude: expected KEY=VALUE[,KEY=VALUE], got {item!r}")
            pairs[key.strip()] = value.strip()
        out.append(pairs)
    return out


def excluded(t: Trial, rules: list[dict[str, str]]) -> bool:
    return any(all(str(_get(t.config, k)) == v for k, v in rule.items()) for rule in rules)


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SpaceError(f"--shard: expected K/N (e.g. 1/2), got {text!r}") from None
    if not 1 <= k <= n:
        raise SpaceError(f"--shard: need 1 <= K <= N, got {text!r}")
    return k, n
