"""A validated space's sections as Ray Tune / Optuna primitives: param space, scheduler, searcher."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from search_spaces.space import Space, _is_dim, ticket_points


def _task_value(v: Any, spec) -> Any:
    """A per-task value (sparsebert/transfer/per_task.py) for the trial's task, once Tune has resolved the task."""
    from sparsebert.transfer.per_task import value_for

    return value_for(v, spec.config.transfer.task)


def _to_tune(v: Any, optuna: bool):
    from ray import tune

    from sparsebert.transfer.per_task import is_per_task

    if is_per_task(v):  # resolved from the trial's task (Optuna cannot: the trainable resolves it then)
        return v if optuna else tune.sample_from(functools.partial(_task_value, v))
    if isinstance(v, dict) and not _is_dim(v):
        return {k: _to_tune(x, optuna) for k, x in v.items()}
    if not _is_dim(v):
        return v
    (kind, arg), = v.items()
    if kind == "grid":
        return tune.choice(arg) if optuna else tune.grid_search(arg)
    if kind == "choice":
        return tune.choice(arg)
    if kind == "uniform":
        return tune.uniform(*arg)
    if kind == "loguniform":
        return tune.loguniform(*arg)
    return tune.randint(*arg)


def config_template(space: Space, store_root: Path) -> dict[str, Any]:
    """Every trial's config, with the search dimensions left as ``{grid|choice|...: [...]}`` (no Ray): Tune's
    param space is this mapped to Tune primitives; the local executor expands its grids itself."""
    t: dict[str, Any] = {
        "stage": space.stage, "store": str(store_root), "eval": space.eval, "checkpoint_every": space.checkpoint_every,
        "runtime": dict(space.runtime),
    }
    points = ticket_points(space)
    if points is not None:
        t["ticket"] = {"grid": points}
    else:
        t["ticket"] = space.ticket
        if space.variants:
            t["variant"] = {"grid": space.variants}
    if space.stage == "transfer":
        t["transfer"] = space.transfer
    if space.raw.get("debug"):
        t["debug"] = space.raw["debug"]
    return t


def param_space(space: Space, store_root: Path) -> dict[str, Any]:
    optuna = space.tune["searcher"]["type"] == "optuna"
    return {k: (v if k in ("eval", "runtime", "debug", "store") else _to_tune(v, optuna))
            for k, v in config_template(space, store_root).items()}


def scheduler(space: Space):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = dict(space.tune["scheduler"])
    kind = s.pop("type")
    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.get("max_t", 100),
                             grace_period=s.get("grace_period", 1), reduction_factor=s.get("reduction_factor", 2))
    muts: dict[str, Any] = {}
    for k, v in s["hyperparam_mutations"].items():
        sec, _, name = k.partition(".")
        muts.setdefault(sec, {})[name] = _to_tune(v, False) if _is_dim(v) else v
    return PopulationBasedTraining(time_attr="training_iteration",
                                   perturbation_interval=s.get("perturbation_interval", 2),
                                   hyperparam_mutations=muts, synch=bool(s.get("synch", False)))


def searcher(space: Space):
    kind = space.tune["searcher"]["type"]
    if kind != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    seed = space.tune["searcher"].get("seed", 0)
    import optuna

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
