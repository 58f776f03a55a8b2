"""Resume a Ray Tune experiment whose Tune state is damaged (``experiment_state-*.json`` cut short by a full disk
or a crash), without that state: what is on disk decides.

* :func:`plan`: the trials that finished (their own directories: ``params.json`` + ``result.json``), and the
  configs still to run. For a grid space, the space's grid points (:func:`search.trial_list.trials`) less the
  finished ones, compared by their configs (a multiset: ``num_samples`` repeats count). For a sampled space
  (``random``/``choice`` dimensions, Optuna) the searcher's state is lost: the unfinished trials that had started
  are run again with their recorded configs, the ones it had not suggested yet are not run (said). A PBT
  population is refused: its members exploit each other's checkpoints, which only Tune's state ties together.
* :func:`set_aside`: the damaged Tune state and the unfinished trials' directories are moved into
  ``tune-state.damaged-<UTC time>/`` (kept for a post mortem); the finished ones are listed in
  ``carried_trials.json`` and stay where they are, untouched (never run again).
* :class:`FixedConfigs`: a Tune searcher that yields exactly those configs: a fresh Tune run in the same
  experiment directory runs them (``search.tuner.build_tuner(..., configs=...)``). :func:`with_carried` adds the
  carried trials to every later result grid, so ``results.parquet|csv`` cover the old finished trials and the new
  ones (at this resume and at any later one).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

CARRIED = "carried_trials.json"
ASIDE = "tune-state.damaged"
STATE_FILES = ("experiment_state-*.json", "basic-variant-state-*.json", "searcher-state-*", "tuner.pkl")


@dataclass
class Plan:
    finished: list[str]  # trial dir names kept as they are (their results come from the dirs)
    unfinished: list[str]  # trial dir names moved aside (run again as new trials)
    configs: list[dict[str, Any]]  # what the fresh Tune run runs
    notes: list[str] = field(default_factory=list)
    refused: str | None = None  # why the unfinished trials cannot be run without Tune's state


def _key(cfg: dict[str, Any]) -> str:
    """A config as one comparable string: per-task values resolved, JSON-normalised (tuples, numbers)."""
    from sparsebert.transfer.per_task import resolve_config

    return json.dumps(resolve_config(json.loads(json.dumps(cfg, default=str))), sort_keys=True, default=str)


def sampled(space) -> str | None:
    """The first sampled (non-grid) search dimension of ``space`` (``transfer.lr``, ``searcher: optuna``), or None
    for a grid space."""
    from search_spaces.space import _is_dim

    if space.tune["searcher"]["type"] == "optuna":
        return "tune.searcher: optuna"
    for sec in ("ticket", "transfer"):
        for k, v in (getattr(space, sec) or {}).items():
            if _is_dim(v) and "grid" not in v:
                return f"{sec}.{k}: {next(iter(v))}"
    return None


def plan(space, exp_dir: Path, store_root: Path) -> Plan:
    """What a resume without Tune's state runs (see the module docstring)."""
    from .resume_checks import ray_trial_results

    exp_dir = Path(exp_dir)
    found = ray_trial_results(exp_dir)
    done = [r for r in found if r.metrics_dataframe is not None]
    rest = [r for r in found if r not in done]
    finished, unfinished = [Path(r.path).name for r in done], [Path(r.path).name for r in rest]
    local = [d.name for d in exp_dir.iterdir() if (d / "config.json").is_file() and not (d / "params.json").exists()]
    if local:
        return Plan(finished, unfinished, [], refused=(
            f"{len(local)} trial dir(s) here (e.g. {local[0]}) were made by the local executor, not by Ray Tune: "
            f"`run_search.py resume {exp_dir} --executor local` resumes them"))
    if space.tune["scheduler"]["type"] == "pbt":
        return Plan(finished, unfinished, [], refused=(
            "a PBT population cannot be resumed without Tune's state (its members exploit each other's "
            "checkpoints); `run_search.py run SPACE --overwrite` starts it again (every ticket comes from the store)"))
    why = sampled(space)
    if why is not None:  # the searcher's state is lost: rerun what had started, exactly as it was
        configs = [r.config for r in rest]
        n = _space_size(space, store_root)
        notes = [f"the searcher's state is lost with Tune's state ({why}): the {len(rest)} unfinished trial(s) "
                 "run again with their recorded configs"]
        if n > len(found):
            notes.append(f"{n - len(found)} of the space's {n} trials had not been suggested yet and are not run "
                         "(a new run samples them)")
        return Plan(finished, unfinished, configs, notes)
    from .trial_list import trials

    todo = [t.config for t in trials(space, store_root)]
    have = Counter(_key(r.config) for r in done)
    configs, extra = [], Counter(have)
    for cfg in todo:
        k = _key(cfg)
        if extra[k] > 0:
            extra[k] -= 1
        else:
            configs.append(cfg)
    notes = []
    strays = sum(extra.values())
    if strays:
        notes.append(f"{strays} finished trial(s) match no grid point of the space (kept in the results)")
    return Plan(finished, unfinished, configs, notes)


def _space_size(space, store_root: Path) -> int:
    """How many trials a run of the space makes (Optuna: ``num_samples``; else every grid point of every sample)."""
    from search_spaces.space import _is_dim

    from .tune_space import config_template

    n = int(space.tune["num_samples"])
    if space.tune["searcher"]["type"] == "optuna":
        return n

    def grids(t) -> int:  # the product of the grid sizes (a sampled dimension is one value per sample)
        if _is_dim(t):
            return len(t["grid"]) if "grid" in t else 1
        return math.prod(grids(v) for v in t.values()) if isinstance(t, dict) else 1

    return n * grids(config_template(space, store_root))



def carried(exp_dir: Path) -> list[str]:
    """The trial dirs listed in ``carried_trials.json`` (finished before Tune's state was lost)."""
    try:
        return list(json.loads((Path(exp_dir) / CARRIED).read_text()))
    except (OSError, ValueError, TypeError):
        return []


def set_aside(exp_dir: Path, p: Plan) -> Path:
    """List the finished trials in ``carried_trials.json`` (first: a crash after it loses nothing), then move the
    Tune state files and the unfinished trials' dirs into a new ``tune-state.damaged-<time>/``. Returns that dir."""
    from sparsebert.engine.fsutil import atomic_write, utc_stamp

    exp_dir = Path(exp_dir)
    atomic_write(exp_dir / CARRIED, json.dumps(sorted(set(carried(exp_dir)) | set(p.finished)), indent=1).encode())
    aside = exp_dir / f"{ASIDE}-{utc_stamp()}"
    aside.mkdir()
    for pattern in STATE_FILES:
        for f in exp_dir.glob(pattern):
            f.rename(aside / f.name)
    for name in p.unfinished:
        if (exp_dir / name).is_dir():
            (exp_dir / name).rename(aside / name)
    return aside


class FixedConfigs(Searcher):
    """Suggest exactly ``configs``, in order, then FINISHED (its state is saved and restored with the run)."""

    def __init__(self, configs: list[dict[str, Any]], metric: str | None = None, mode: str | None = None):
        super().__init__(metric=metric, mode=mode)
        self.configs, self.next = [copy.deepcopy(c) for c in configs], 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def suggest(self, trial_id: str):
        if self.next >= len(self.configs):
            return Searcher.FINISHED
        self.next += 1
        return copy.deepcopy(self.configs[self.next - 1])

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"configs": self.configs, "next": self.next}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.configs, self.next = state["configs"], state["next"]


class _Merged(list):
    """A result grid plus the carried trials (``search.results`` reads Tune's configs through the grid)."""

    def __init__(self, grid, extra):
        super().__init__([*grid, *extra])
        self._experiment_analysis = getattr(grid, "_experiment_analysis", None)


def with_carried(grid, exp_dir: Path):
    """``grid`` plus the results of the carried trials (read from their own dirs), when there are any."""
    names = set(carried(exp_dir))
    if not names:
        return grid
    from .resume_checks import ray_trial_results

    seen = {Path(str(r.path)).name for r in grid if getattr(r, "path", None)}
    extra = [r for r in ray_trial_results(Path(exp_dir), only=names) if Path(r.path).name not in seen]
    return _Merged(grid, extra)
