"""Load, validate and shrink search-space YAML files; map them onto Ray Tune / Optuna primitives.

A space file (see ``demo.yaml``) has these top-level keys:

    description  free text
    stage        find | transfer | evaluate       which trainable runs
    model        hub name, local dir or embedded-minilm (may be overridden per variant)
    ticket       finder fields shared by every trial (sparsecore.pipeline.FinderSpec)
    variants     optional list of partial ticket dicts, one grid axis (e.g. OMP vs TAMT-KD vs TAMT-MLM)
    transfer     fine-tuning fields (FinetuneConfig + lr/eval_every/seed/...): stage transfer only
    eval         pre-training loss evaluation (EvalSpec)
    tune         metric, mode, scheduler, searcher, num_samples, max_concurrent, max_failures
    resources    cpu, gpu per trial (fractional gpu allowed: gpu 0.25 packs 4 trials on one GPU)
    device       auto (the GPU Ray gives the trial, else CPU) | cpu | cuda | cuda:N | mps
    precision    auto (bf16 on GPUs that support it, fp32 on CPU) | fp32 | bf16 | fp16
    checkpoint_every   checkpoint every N reports (default 1)

Any value inside ``ticket``/``transfer`` may be a search dimension:
``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``.
Everything is validated before Ray starts; errors name the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SPACES_DIR = Path(__file__).resolve().parent
TOP_KEYS = {"description", "stage", "model", "ticket", "variants", "transfer", "eval", "tune", "resources",
            "checkpoint_every", "debug", "proxy", "device", "precision"}
STAGES = ("find", "transfer", "evaluate")
DIMENSIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("fifo", "asha", "pbt")
SEARCHERS = ("grid", "random", "optuna")
TUNE_KEYS = {"metric", "mode", "scheduler", "searcher", "num_samples", "max_concurrent", "max_failures"}


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
    runtime: dict[str, str] = field(default_factory=lambda: {"device": "auto", "precision": "auto"})
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.tune["metric"]

    @property
    def mode(self) -> str:
        return self.tune["mode"]


def list_spaces() -> list[Path]:
    return sorted(SPACES_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (SPACES_DIR / p, SPACES_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise SpaceError(f"{name_or_path}: no such search-space file (see `run_search.py list`)")


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


def load_space(name_or_path: str | os.PathLike, smoke: bool = False, overrides: dict | None = None) -> Space:
    """Read and validate a space file (optionally shrunk by ``--smoke``). Raises SpaceError."""
    path = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise SpaceError(f"{path.name}: {where}: malformed YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path.name}: top level must be a mapping")
    raw = copy.deepcopy(raw)
    if smoke:
        raw = shrink(raw)
    for k, v in (overrides or {}).items():
        raw[k] = v
    return validate(path, raw)


def validate(path: Path, raw: dict[str, Any]) -> Space:
    from sparsebert.pipeline import EvalSpec, FinderSpec

    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise _err(path, sorted(unknown)[0], f"unknown key; valid: {sorted(TOP_KEYS)}")
    stage = raw.get("stage", "transfer")
    if stage not in STAGES:
        raise _err(path, "stage", f"must be one of {STAGES}, got {stage!r}")
    ticket = dict(raw.get("ticket") or {})
    if "model" in raw:
        ticket.setdefault("model", raw["model"])
    variants = raw.get("variants")
    if variants is not None and (not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants)):
        raise _err(path, "variants", "must be a list of mappings")
    for k, v in ticket.items():
        if _is_dim(v):
            _check_dim(path, f"ticket.{k}", v)
    # every concrete ticket the space can produce must be a valid FinderSpec
    for i, variant in enumerate(variants or [{}]):
        for k, v in variant.items():
            if _is_dim(v):
                raise _err(path, f"variants[{i}].{k}", "variants hold plain values; put dimensions in ticket")
        for point in _expand({**ticket, **variant}):
            try:
                spec = FinderSpec.from_dict(point)
            except (ValueError, TypeError) as e:
                raise _err(path, _culprit(point, variant, i), str(e)) from None
            _check_text(path, "ticket" if "text" in ticket else f"variants[{i}]", spec.text)
    transfer = dict(raw.get("transfer") or {})
    if stage == "transfer":
        if "task" not in transfer:
            raise _err(path, "transfer.task", "required for stage transfer")
        for k, v in transfer.items():
            if _is_dim(v):
                _check_dim(path, f"transfer.{k}", v)
        from trainables.common import split_transfer

        for point in _expand(transfer):
            try:
                split_transfer({"transfer": point})
            except (ValueError, TypeError) as e:
                raise _err(path, "transfer", str(e)) from None
            if point.get("data_dir") and not Path(point["data_dir"]).expanduser().exists():
                raise _err(path, "transfer.data_dir", f"{point['data_dir']} does not exist")
    elif transfer:
        raise _err(path, "transfer", f"only valid for stage transfer (stage is {stage})")
    ev = dict(raw.get("eval") or {})
    try:
        EvalSpec(**ev)
    except TypeError as e:
        raise _err(path, "eval", str(e)) from None
    tune_cfg = _validate_tune(path, dict(raw.get("tune") or {}), stage, variants is not None, ticket, transfer)
    resources = dict(raw.get("resources") or {"cpu": 1})
    bad = set(resources) - {"cpu", "gpu"}
    if bad:
        raise _err(path, f"resources.{sorted(bad)[0]}", "valid keys: cpu, gpu")
    if not all(isinstance(v, (int, float)) and v >= 0 for v in resources.values()) or resources.get("cpu", 1) <= 0:
        raise _err(path, "resources", f"cpu must be > 0 and gpu >= 0, got {resources}")
    debug = raw.get("debug")
    if debug is not None and (not isinstance(debug, dict) or set(debug) - {"fail_at_step", "once_marker",
                                                                           "sleep_per_step"}):
        raise _err(path, "debug", "valid keys: fail_at_step, once_marker, sleep_per_step")
    from sparsebert.runtime import RuntimeConfig

    try:
        runtime = RuntimeConfig(device=raw.get("device", "auto"), precision=raw.get("precision", "auto")).as_dict()
    except ValueError as e:
        key = str(e).split(":", 1)[0]
        raise _err(path, key, str(e).split(":", 1)[1].strip()) from None
    if runtime["device"].startswith("cuda") and not resources.get("gpu"):
        raise _err(path, "device", f"{runtime['device']!r} needs resources.gpu > 0 (Ray hides GPUs from trials that "
                                   f"reserve none); or use device: auto")
    ce = raw.get("checkpoint_every", 1)
    if not isinstance(ce, int) or ce < 1:
        raise _err(path, "checkpoint_every", "must be an integer >= 1")
    space = Space(path=path, name=path.stem, raw=raw, stage=stage, ticket=ticket, variants=variants,
                  transfer=transfer, eval=ev, tune=tune_cfg, resources={"cpu": 1, **resources}, checkpoint_every=ce,
                  runtime=runtime)
    if raw.get("proxy") is not None:  # the two-stage, proxy-guided search: its rule is checked here too
        from .proxy_runner import check_space

        check_space(space)
    return space


def check_machine(space: Space, gpus: int | None = None, local: bool = True) -> list[str]:
    """Can this space's trials get the devices they ask for? Checked before Ray starts; returns notes to print.

    ``local``: a Ray started here (not ``--address``) with ``gpus`` GPUs (None: what torch sees). ``device: cuda``
    where there is no GPU is an error (SpaceError naming the key). ``device: auto`` with ``resources.gpu`` on a
    machine without GPUs runs the trials on the CPU (the reservation is dropped, with a note): the same space packs
    trials onto a GPU where there is one and runs on a laptop where there is none."""
    import torch

    if not local:
        return []  # a cluster's workers may have GPUs the driver lacks: Ray schedules, trials resolve their device
    have = gpus if gpus is not None else (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    dev = space.runtime["device"]
    if dev.startswith("cuda") and not (have and torch.cuda.is_available() and torch.cuda.device_count()):
        raise _err(space.path, "device", f"{dev!r} requested but torch sees no CUDA device here "
                                         f"(CUDA build: {torch.version.cuda or 'no, a CPU-only torch'}; "
                                         f"use device: auto to run on the CPU, or --address to join a GPU cluster)")
    if dev == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise _err(space.path, "device", "'mps' requested but this torch has no usable MPS backend")
    want = space.resources.get("gpu", 0)
    if want and not have:
        space.resources = {k: v for k, v in space.resources.items() if k != "gpu"}
        return [f"{space.path.name}: resources.gpu: {want} per trial, but this machine has no GPU: trials run on "
                f"the CPU (device: auto)"]
    return []


def _culprit(point: dict, variant: dict, i: int) -> str:
    """The key that makes a ticket invalid: checked alone (with the method for context)."""
    from sparsebert.pipeline import FinderSpec

    order = sorted(point, key=lambda k: k != "method")  # the method first: the others are checked under it
    method = "omp"
    for k in order:
        try:
            FinderSpec.from_dict({"method": method, k: point[k]} if k != "method" else {k: point[k]})
        except (ValueError, TypeError):
            return f"variants[{i}].{k}" if k in variant else f"ticket.{k}"
        if k == "method":
            method = point[k]
    return f"variants[{i}]"


def _check_text(path: Path, key: str, text: dict) -> None:
    src = str(text.get("source", "embedded"))
    if src != "embedded" and (src.startswith(("/", ".", "~")) or os.sep in src and Path(src).suffix):
        for part in src.split(","):
            if not Path(part).expanduser().exists():
                raise _err(path, f"{key}.text.source", f"{part} does not exist")


def _validate_tune(path, t, stage, has_variants, ticket, transfer) -> dict[str, Any]:
    unknown = set(t) - TUNE_KEYS
    if unknown:
        raise _err(path, f"tune.{sorted(unknown)[0]}", f"unknown key; valid: {sorted(TUNE_KEYS)}")
    default_metric = {"transfer": "score", "find": "kd_loss", "evaluate": "kd_loss"}[stage]
    t.setdefault("metric", default_metric)
    t.setdefault("mode", "max" if t["metric"] in ("score", "best_score") else "min")
    if t["mode"] not in ("min", "max"):
        raise _err(path, "tune.mode", "must be min or max")
    sched = t.get("scheduler") or {"type": "fifo"}
    if isinstance(sched, str):
        sched = {"type": sched}
    if sched.get("type") not in SCHEDULERS:
        raise _err(path, "tune.scheduler.type", f"must be one of {SCHEDULERS}, got {sched.get('type')!r}")
    searcher = t.get("searcher") or {"type": "grid"}
    if isinstance(searcher, str):
        searcher = {"type": searcher}
    if searcher.get("type") not in SEARCHERS:
        raise _err(path, "tune.searcher.type", f"must be one of {SEARCHERS}, got {searcher.get('type')!r}")
    if searcher["type"] == "optuna" and has_variants:
        raise _err(path, "tune.searcher", "optuna cannot search over 'variants' (a list of mappings): use grid")
    if sched["type"] == "pbt":
        muts = sched.get("hyperparam_mutations")
        if not isinstance(muts, dict) or not muts:
            raise _err(path, "tune.scheduler.hyperparam_mutations", "pbt needs e.g. {transfer.lr: [1e-5, 5e-5]}")
        for k in muts:
            sec, _, name = k.partition(".")
            if sec not in ("transfer", "ticket") or not name:
                raise _err(path, f"tune.scheduler.hyperparam_mutations.{k}", "use section.key, e.g. transfer.lr")
    n = t.get("num_samples", 1)
    if not isinstance(n, int) or n < 1:
        raise _err(path, "tune.num_samples", "must be an integer >= 1")
    return {**t, "scheduler": sched, "searcher": searcher, "num_samples": n,
            "max_failures": int(t.get("max_failures", 2)), "max_concurrent": t.get("max_concurrent")}


# --------------------------------------------------------------------------------------------------- smoke


SMOKE_TICKET = {"steps": 4, "batch_size": 4, "imp_interval": 2, "reset_every": 2}
SMOKE_TRANSFER = {"max_steps": 4, "subset_size": 32, "max_eval_examples": 32, "batch_size": 8, "max_length": 64,
                  "eval_every": 2}


def smoke_model_dir() -> Path:
    """A tiny 2-layer BERT with the embedded tokenizer, built once into the cache."""
    from sparsebert.embedded import cache_root
    from sparsebert.models import tiny_model_dir

    path = cache_root() / "smoke-model"
    if not (path / "tokenizer_config.json").is_file():
        tiny_model_dir(path, "bert", hidden=32, layers=2, heads=2, intermediate=64, tokenizer_from="embedded-minilm")
    return path


def _cut(v: Any) -> Any:
    """At most two values of a grid/choice (first and last)."""
    if _is_dim(v):
        (kind, arg), = v.items()
        if kind in ("grid", "choice") and len(arg) > 2:
            return {kind: [arg[0], arg[-1]]}
    return v


def _spread(items: list, n: int) -> list:
    """At most n items, spread over the list (keeps first and last: e.g. the steps study's 1k and IMP's 2792)."""
    if len(items) <= n:
        return items
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """``--smoke``: a tiny model, few steps, small data, at most 2 values per axis, the embedded task/text."""
    raw = copy.deepcopy(raw)
    raw["model"] = str(smoke_model_dir())
    ticket = {k: _cut(v) for k, v in (raw.get("ticket") or {}).items()}
    ticket.pop("model", None)
    for k, v in SMOKE_TICKET.items():
        if k in ticket or k in ("steps", "batch_size", "imp_interval"):
            ticket[k] = v
    ticket["text"] = {"source": "embedded", "block_size": 32, "max_blocks": 128}
    raw["ticket"] = ticket
    if raw.get("variants"):  # smoke budgets win over the variants' own (e.g. IMP's 2792-step interval)
        raw["variants"] = [{k: (SMOKE_TICKET[k] if k in SMOKE_TICKET else v) for k, v in var.items() if k != "model"}
                           for var in raw["variants"]]
        raw["variants"] = _spread(raw["variants"], 4)
    if raw.get("transfer"):
        tr = {k: _cut(v) for k, v in raw["transfer"].items()}
        tr.update(SMOKE_TRANSFER)
        tr["task"] = "polarity"  # the embedded task: paper tasks need hub/local data a smoke run may not have
        tr.pop("data_dir", None)
        tr.pop("epochs", None)
        raw["transfer"] = tr
    raw["eval"] = {**(raw.get("eval") or {}), "eval_blocks": 8, "head_steps": 2}
    t = dict(raw.get("tune") or {})
    searcher_type = t.get("searcher") if isinstance(t.get("searcher"), str) else (t.get("searcher") or {}).get("type")
    t["num_samples"] = 2 if searcher_type == "optuna" else 1
    sched = t.get("scheduler")
    if isinstance(sched, dict) and sched.get("type") == "asha":
        # a smoke transfer trial reports twice (4 steps, eval every 2); a smoke TAMT trial 5 times (every step of 4,
        # then its ticket): a find trial cut at max_t makes no ticket
        t["scheduler"] = {**sched, "grace_period": 1, "max_t": 2 if raw.get("stage", "transfer") == "transfer" else 5}
    raw["tune"] = t
    gpu = (raw.get("resources") or {}).get("gpu", 0)
    import torch

    if gpu and torch.cuda.is_available():  # a smoke run on a GPU machine still uses (a slice of) it
        raw["resources"] = {"cpu": 1, "gpu": min(float(gpu), 1.0)}
    else:
        raw["resources"] = {"cpu": 1}
        if str(raw.get("device", "auto")).startswith("cuda"):
            raw["device"] = "auto"
    return raw


# ------------------------------------------------------------------------------------------------ to Ray Tune


def _to_tune(v: Any, optuna: bool):
    from ray import tune

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


def param_space(space: Space, store_root: Path) -> dict[str, Any]:
    from ray import tune

    optuna = space.tune["searcher"]["type"] == "optuna"
    ps: dict[str, Any] = {
        "stage": space.stage, "store": str(store_root), "eval": space.eval, "checkpoint_every": space.checkpoint_every,
        "runtime": dict(space.runtime),
    }
    points = ticket_points(space)
    if points is not None:
        ps["ticket"] = tune.grid_search(points)
    else:
        ps["ticket"] = _to_tune(space.ticket, optuna)
        if space.variants:
            ps["variant"] = tune.grid_search(space.variants)
    if space.stage == "transfer":
        ps["transfer"] = _to_tune(space.transfer, optuna)
    if space.raw.get("debug"):
        ps["debug"] = space.raw["debug"]
    return ps


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
                                   hyperparam_mutations=muts)


def searcher(space: Space):
    kind = space.tune["searcher"]["type"]
    if kind != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    seed = space.tune["searcher"].get("seed", 0)
    import optuna

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))


def ticket_points(space: Space) -> list[dict[str, Any]] | None:
    """When the ticket axes are all grids: the explicit list of tickets (grid x variants), duplicates removed
    (e.g. a dense variant under a sparsity grid, or OMP under an objective grid: same ticket id). None when the
    ticket section holds sampled dimensions (those stay Tune/Optuna primitives)."""
    from sparsebert.pipeline import FinderSpec

    if space.tune["searcher"]["type"] == "optuna" or any(
        _is_dim(v) and "grid" not in v for v in space.ticket.values()
    ):
        return None
    seen, out = set(), []
    for variant in space.variants or [{}]:
        for point in _expand({**space.ticket, **variant}):
            tid = FinderSpec.from_dict(point).ticket_id
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
