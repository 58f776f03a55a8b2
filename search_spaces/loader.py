"""Load and validate search-space YAML files (no Ray here: :mod:`search.tune_space` maps a space onto Tune).

A space file (see ``demo.yaml``) has these top-level keys, and each is consumed in one place:

    key               what                                                     consumed by
    description       free text                                                run_search.py list
    stage             find | transfer | evaluate: which trainable runs         trainables/{find,transfer,evaluate}.py
    model             hub name, local dir or embedded-minilm                   sparsebert/tickets/finders.py (FinderSpec.model)
    ticket            finder fields shared by every trial                      sparsebert/tickets/finders.py (one spec per method)
    variants          list of partial ticket dicts, one grid axis              search_spaces/space.py (ticket_points)
    transfer          FinetuneConfig fields + lr/eval_every/seed/...           sparsebert/transfer/finetune.py (split_transfer)
    transfer.K        per task: {per_task: {cola: 1.0e-4}, default: 2.0e-4}    sparsebert/transfer/per_task.py (resolve_per_task)
    eval              pre-training loss evaluation                             sparsebert/tickets/pipeline.py (EvalSpec)
    tune              metric, mode, scheduler, searcher, num_samples, ...      search/tune_space.py, search/tuner.py
    resources         cpu, gpu per trial (gpu 0.25 packs 4 trials on a GPU)    search/tuner.py (trial_resources)
    device            auto | cpu | cuda | cuda:N | mps                          sparsebert/engine/runtime.py (RuntimeConfig)
    precision         auto | fp32 | bf16 | fp16                                sparsebert/engine/runtime.py (RuntimeConfig)
    compile           auto (CUDA only) | true | false: torch.compile the step  sparsebert/engine/runtime.py (RuntimeConfig)
    checkpoint_every  checkpoint every N reports (default 1)                   trainables/common.py (reporter)
    preset            reference: every knob as the reference's code runs it    search_spaces/presets.py
    proxy             the proxy-guided two-stage search's rule                 sparsebert/proxy.py, search/proxy_search.py
    debug             fault injection for drills and tests                     trainables/common.py (fault_injector)

Any value inside ``ticket``/``transfer`` may be a search dimension:
``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``.
A ``transfer`` value (not ``task``) may instead be set per task, ``{per_task: {TASK: VALUE, ...}, default: VALUE}``:
each trial gets its task's value (else the default), and that resolved value is what its config and the results'
``config/transfer.K`` column hold; unknown task names, a search dimension inside it, and a task of the space with
neither its own value nor a default are refused here.
Everything is validated here, before Ray starts; errors name the file and the key. ``--smoke``: search_spaces/smoke.py.
Local task data (``transfer.data_dir`` / ``$SPARSEBERT_DATA_DIR``) is checked file by file in :func:`validate`;
values, keys, the metric, the machine and the models in :mod:`search_spaces.checks` (the last two by ``run`` before
it creates anything).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from .checks import (check_machine, check_metric, check_models, check_section_values,  # noqa: F401  (re-exported)
                     check_variant_keys, read_yaml)
from .smoke import shrink, smoke_model_dir  # noqa: F401  (smoke_model_dir: re-exported)
from .space import (DIMENSIONS, Space, SpaceError, _check_dim, _err, _expand, _is_dim, _points,  # noqa: F401
                    as_dict, grid_size, ticket_points)

SPACES_DIR = Path(__file__).resolve().parent
TOP_KEYS = {"description", "stage", "model", "ticket", "variants", "transfer", "eval", "tune", "resources",
            "checkpoint_every", "debug", "proxy", "device", "precision", "compile",
            "preset"}
STAGES = ("find", "transfer", "evaluate")
SCHEDULERS = ("fifo", "asha", "pbt")
SEARCHERS = ("grid", "random", "optuna")
TUNE_KEYS = {"metric", "mode", "scheduler", "searcher", "num_samples", "max_concurrent", "max_failures"}


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


def load_space(name_or_path: str | os.PathLike, smoke: bool = False, overrides: dict | None = None) -> Space:
    """Read and validate a space file (optionally shrunk by ``--smoke``). Raises SpaceError."""
    path = resolve_path(name_or_path)
    raw = read_yaml(path)  # malformed YAML and duplicate keys: a SpaceError naming the line
    if not isinstance(raw, dict):
        raise SpaceError(f"{path.name}: top level must be a mapping")
    raw = copy.deepcopy(raw)
    if smoke:
        raw = shrink(raw)
    for k, v in (overrides or {}).items():
        raw[k] = v
    return validate(path, raw)


def validate(path: Path, raw: dict[str, Any]) -> Space:
    from .presets import PRESETS, apply_preset

    try:
        raw = apply_preset(raw)
    except KeyError:
        raise _err(path, "preset", f"unknown preset {raw.get('preset')!r}; valid: {sorted(PRESETS)}") from None
    from sparsebert.tickets.finders import finder_spec
    from sparsebert.tickets.pipeline import EvalSpec

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
    if variants == []:  # would run the shared ticket section alone (one OMP trial by default): not what was meant
        raise _err(path, "variants", "an empty list; omit the key for a single ticket")
    check_variant_keys(path, variants)
    for k, v in ticket.items():
        if _is_dim(v):
            _check_dim(path, f"ticket.{k}", v)
    # every concrete ticket the space can produce must be a valid finder spec
    for i, variant in enumerate(variants or [{}]):
        for k, v in variant.items():
            if _is_dim(v):
                raise _err(path, f"variants[{i}].{k}", "variants hold plain values; put dimensions in ticket")
        for point in _expand({**ticket, **variant}):
            try:
                finder_spec(point)
            except (ValueError, TypeError) as e:
                raise _err(path, _culprit(point, variant, i), str(e)) from None
            _check_text(path, "ticket" if "text" in ticket else f"variants[{i}]", point.get("text") or {})
    transfer = dict(raw.get("transfer") or {})
    if stage == "transfer":
        if "task" not in transfer:
            raise _err(path, "transfer.task", "required for stage transfer")
        for k, v in transfer.items():
            if _is_dim(v):
                _check_dim(path, f"transfer.{k}", v)
        from sparsebert.transfer.finetune import FinetuneConfig, split_transfer
        from sparsebert.transfer.per_task import PerTaskError, check, resolve_per_task
        from sparsebert.engine.training import TrainConfig

        try:  # values set per task: known task names, plain values, one (or the default) for every task run
            check(transfer, _points(transfer["task"]), is_dim=_is_dim)
        except PerTaskError as e:
            raise _err(path, f"transfer.{e.key}", e.msg) from None

        for point in map(resolve_per_task, _expand(transfer)):  # each value by its knob's type and range, then the config
            check_section_values(path, "transfer", point, (FinetuneConfig, TrainConfig), skip=("eval_every", "task"))
            try:
                split_transfer({"transfer": point})
            except (ValueError, TypeError) as e:
                raise _err(path, "transfer", str(e)) from None
            if point.get("data_dir") and not Path(point["data_dir"]).expanduser().exists():
                raise _err(path, "transfer.data_dir", f"{point['data_dir']} does not exist")
        _check_task_data(path, transfer)
    elif transfer:
        raise _err(path, "transfer", f"only valid for stage transfer (stage is {stage})")
    ev = dict(raw.get("eval") or {})
    check_section_values(path, "eval", ev, (EvalSpec,))
    try:
        EvalSpec(**ev)
    except (TypeError, ValueError) as e:
        raise _err(path, "eval", str(e)) from None
    tune_cfg = _validate_tune(path, dict(raw.get("tune") or {}), stage, variants is not None, ticket, transfer,
                              proxy=raw.get("proxy") is not None)
    resources = dict(raw.get("resources") or {"cpu": 1})
    bad = set(resources) - {"cpu", "gpu"}
    if bad:
        raise _err(path, f"resources.{sorted(bad)[0]}", "valid keys: cpu, gpu")
    if not all(isinstance(v, (int, float)) and v >= 0 for v in resources.values()) or resources.get("cpu", 1) <= 0:
        raise _err(path, "resources", f"cpu must be > 0 and gpu >= 0, got {resources}")
    debug = raw.get("debug")
    if debug is not None and (not isinstance(debug, dict) or set(debug) - {"fail_at_step", "once_marker",
                                                                           "sleep_per_step", "fail_with"}):
        raise _err(path, "debug", "valid keys: fail_at_step, once_marker, sleep_per_step, fail_with")
    fail_with = ("InjectedFailure", "TicketError", "TaskDataError")  # trainables/common.py (fault_injector)
    if debug and debug.get("fail_with", "InjectedFailure") not in fail_with:
        raise _err(path, "debug.fail_with", f"one of {', '.join(fail_with)}, got {debug['fail_with']!r}")
    from sparsebert.engine.runtime import RuntimeConfig

    try:
        runtime = RuntimeConfig(device=raw.get("device", "auto"), precision=raw.get("precision", "auto"),
                                compile=raw.get("compile", "auto")).as_dict()
    except ValueError as e:
        key = str(e).split(":", 1)[0]
        raise _err(path, key, str(e).split(":", 1)[1].strip()) from None
    if runtime["device"].startswith("cuda") and not resources.get("gpu"):
        raise _err(path, "device", f"{runtime['device']!r} needs resources.gpu > 0 (Ray hides GPUs from trials that "
                                   f"reserve none); or use device: auto")
    ce = raw.get("checkpoint_every", 1)
    if not isinstance(ce, int) or ce < 1:
        raise _err(path, "checkpoint_every", "must be an integer >= 1")
    if ce != 1 and tune_cfg["scheduler"]["type"] == "pbt":  # PBT clones a trial's latest report's checkpoint
        raise _err(path, "checkpoint_every", "pbt clones the checkpoint of a trial's latest report: use 1")
    space = Space(path=path, name=path.stem, raw=raw, stage=stage, ticket=ticket, variants=variants,
                  transfer=transfer, eval=ev, tune=tune_cfg, resources={"cpu": 1, **resources}, checkpoint_every=ce,
                  runtime=runtime)
    if raw.get("proxy") is not None:  # the two-stage, proxy-guided search: its rule is checked here too
        from .proxy_rules import check_space

        check_space(space)
        check_metric(path, stage, tune_cfg["metric"], transfer)
    return space


def _check_task_data(path: Path, transfer: dict) -> None:
    """Local task data (``transfer.data_dir`` or ``$SPARSEBERT_DATA_DIR``): every file a trial will read (train and
    evaluation splits) exists and holds a header and a usable row, before anything runs (a missing dev file would
    otherwise surface after the ticket was made). Hub data is not checked (no download before a run)."""
    from sparsebert.transfer.task_data import check_task_files

    from sparsebert.transfer.per_task import resolve_per_task

    seen = set()
    for point in map(resolve_per_task, _expand(transfer)):
        task, data_dir = str(point.get("task")), point.get("data_dir")
        if (task, data_dir) in seen:
            continue
        seen.add((task, data_dir))
        try:
            check_task_files(task, data_dir)
        except (OSError, ValueError) as e:
            if data_dir:
                raise _err(path, "transfer.data_dir", str(e)) from None
            raise _err(path, "transfer.task", f"{e} ($SPARSEBERT_DATA_DIR={os.environ.get('SPARSEBERT_DATA_DIR')})"
                       ) from None


def _culprit(point: dict, variant: dict, i: int) -> str:
    """The key that makes a ticket invalid: checked alone (with the method for context)."""
    from sparsebert.tickets.finders import finder_spec

    order = sorted(point, key=lambda k: k != "method")  # the method first: the others are checked under it
    method = "omp"
    for k in order:
        try:
            finder_spec({"method": method, k: point[k]} if k != "method" else {k: point[k]})
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


def _validate_tune(path, t, stage, has_variants, ticket, transfer, proxy: bool = False) -> dict[str, Any]:
    unknown = set(t) - TUNE_KEYS
    if unknown:
        raise _err(path, f"tune.{sorted(unknown)[0]}", f"unknown key; valid: {sorted(TUNE_KEYS)}")
    default_metric = {"transfer": "score", "find": "kd_loss", "evaluate": "kd_loss"}[stage]
    t.setdefault("metric", default_metric)
    if not proxy:  # a proxy space's stages are checked with its rule (proxy_rules.check_space), then its metric
        check_metric(path, stage, t["metric"], transfer)
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
        pi = sched.get("perturbation_interval", 2)
        if isinstance(pi, bool) or not isinstance(pi, int) or pi < 1:
            raise _err(path, "tune.scheduler.perturbation_interval", f"must be an integer >= 1 (reports), got {pi!r}")
        if not isinstance(sched.get("synch", False), bool):
            raise _err(path, "tune.scheduler.synch", f"must be true or false, got {sched['synch']!r}")
    n = t.get("num_samples", 1)
    if not isinstance(n, int) or n < 1:
        raise _err(path, "tune.num_samples", "must be an integer >= 1")
    return {**t, "scheduler": sched, "searcher": searcher, "num_samples": n,
            "max_failures": int(t.get("max_failures", 2)), "max_concurrent": t.get("max_concurrent")}


