"""A search space as the loader leaves it (:class:`Space`), its error type, and what the rest of the system asks of
one: the search dimensions inside it, the tickets it names, how many trials it runs. No Ray here."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DIMENSIONS = ("grid", "choice", "uniform", "loguniform", "randint")


class SpaceError(ValueError):
    """A search-space file is invalid: the message names the file and the key."""


@dataclass
class Space:
    path: Path
    name: str
    raw: dict[str, Any]
    stage: str
    ticket: dict[str, Any]
    variants: list[dict[str, Any]] | None
    transfer: dict[str, Any]
    eval: dict[str, Any]
    tune: dict[str, Any]
    resources: dict[str, float]
    checkpoint_every: int = 1
    runtime: dict[str, str] = field(default_factory=lambda: {"device": "auto", "precision": "auto", "compile": "auto"})
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.tune["metric"]

    @property
    def mode(self) -> str:
        return self.tune["mode"]


def _err(path: Path, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{path.name}: {key}: {msg}")


def _is_dim(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and next(iter(v)) in DIMENSIONS


def _check_dim(path: Path, key: str, v: dict) -> None:
    (kind, arg), = v.items()
    if not isinstance(arg, list) or not arg:
        raise _err(path, key, f"{kind} needs a non-empty list, got {arg!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(arg) != 2 or not all(isinstance(x, (int, float)) for x in arg) or not arg[0] < arg[1]:
            raise _err(path, key, f"{kind} needs [low, high] with low < high, got {arg!r}")
        if kind == "loguniform" and arg[0] <= 0:
            raise _err(path, key, "loguniform needs low > 0")


def _points(v: Any) -> list[Any]:
    """Concrete values to validate a dimension with: every grid/choice value, the bounds of a distribution."""
    if not _is_dim(v):
        return [v]
    (kind, arg), = v.items()
    if kind == "randint":
        return [arg[0], arg[1] - 1]
    return list(arg)


def _expand(section: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(section)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(_points(section[k]) for k in keys))]


def ticket_points(space: Space) -> list[dict[str, Any]] | None:
    """When the ticket axes are all grids: the explicit list of tickets (grid x variants), duplicates removed
    (e.g. a dense variant under a sparsity grid, or OMP under an objective grid: same ticket id). None when the
    ticket section holds sampled dimensions (those stay Tune/Optuna primitives)."""
    from sparsebert.tickets.finders import finder_spec

    if space.tune["searcher"]["type"] == "optuna" or any(
        _is_dim(v) and "grid" not in v for v in space.ticket.values()
    ):
        return None
    seen, out = set(), []
    for variant in space.variants or [{}]:
        for point in _expand({**space.ticket, **variant}):
            tid = finder_spec(point).ticket_id
            if tid not in seen:
                seen.add(tid)
                out.append(point)
    return out


def grid_size(space: Space) -> int:
    """Number of trials a grid/random search will run (grid points x num_samples)."""
    points = ticket_points(space)
    n = len(points) if points is not None else len(space.variants or [None])
    for sec in ({} if points is not None else space.ticket, space.transfer if space.stage == "transfer" else {}):
        for v in sec.values():
            if _is_dim(v) and "grid" in v and space.tune["searcher"]["type"] != "optuna":
                n *= len(v["grid"])
    return n * space.tune["num_samples"]


def as_dict(space: Space) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(space).items() if k not in ("path",)} | {"path": str(space.path)}


def finder_runs(space: Space) -> tuple[int, int, int]:
    """(distinct tickets, distinct finder runs, their training steps): snapshots of one run (TAMT ``save_at``)
    count once. For the dry-run summary."""
    from sparsebert.tickets.finders import finder_spec

    points = ticket_points(space)
    if points is None:  # sampled dimensions: count the grid's corners, as validation does
        points = [p for v in space.variants or [{}] for p in _expand({**space.ticket, **v})]
    specs = [finder_spec(p) for p in points]
    runs = {s.run_spec().ticket_id: s.run_steps() for s in specs}
    return len({s.ticket_id for s in specs}), len(runs), sum(runs.values())
