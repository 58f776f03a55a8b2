"""Ray and the Tuner: a local Ray (or a cluster), the trainable with its resources, tokenized inputs shared with
trials through the object store, and fit / resume of one Tune experiment."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import EXIT_INFRA, EXIT_INTERRUPTED
from .results import summarize, write_results


def is_uri(s: str) -> bool:
    return "://" in s


def init_ray(address: str | None, cpus: int | None, gpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=cpus or os.cpu_count(), num_gpus=gpus, include_dashboard=False, log_to_driver=True)


def shared_inputs(space):
    """Tokenized text for every (model, text) the space's tamt/imp tickets use: built once, shared."""
    from search_spaces.space import _expand
    from sparsebert.finders import TrainedSpec, finder_spec
    from sparsebert.pipeline import EvalSpec, SharedText, ensure_head
    from sparsebert.runtime import CPU, DeviceUnavailable, resolve

    try:  # the driver fits the MLM head on the space's device when it has one (a cluster's driver may not)
        runtime = resolve(space.runtime)
    except DeviceUnavailable:
        runtime = CPU
    shared, heads = SharedText(), set()
    for variant in space.variants or [{}]:
        for point in _expand({**space.ticket, **variant}):
            spec = finder_spec(point)
            ev = EvalSpec(**{"text": point.get("text"), **space.eval})
            if isinstance(spec, TrainedSpec):
                shared.get(spec.model, spec.text, "train")
                shared.get(spec.model, spec.text, "validation")
            shared.get(spec.model, ev.text_for(spec), "validation")
            key = (spec.model, ev.text_for(spec).get("source", "embedded"))
            if key not in heads:  # every ticket's MLM loss needs the model's head: fit it once, here
                heads.add(key)
                ensure_head(spec, ev, shared, runtime=runtime)
    return shared


def trainable(space, shared):
    from ray import tune

    from trainables import TRAINABLES

    fn = tune.with_parameters(TRAINABLES[space.stage], shared=shared)
    return tune.with_resources(fn, trial_resources(space))


def trial_resources(space) -> dict:
    """The space's per-trial resources; with ``device: auto`` a GPU reservation is dropped when the Ray cluster has
    no GPU at all (the trials run on the CPU rather than wait forever)."""
    import ray

    res = dict(space.resources)
    if res.get("gpu") and space.runtime["device"] == "auto" and not ray.cluster_resources().get("GPU"):
        res.pop("gpu")
    return res


def trial_name(trial) -> str:
    """Short, readable trial names (the default embeds the whole ticket dict)."""
    import re

    from sparsebert.ticket import method_label

    cfg = trial.config or {}
    t = {**(cfg.get("ticket") or {}), **(cfg.get("variant") or {})}
    label = method_label(t.get("method", "omp"), t.get("init"), t.get("objective") if t.get("method") == "tamt"
                         else None)
    bits = [re.sub(r"[^A-Za-z0-9+.-]+", "-", label).strip("-"),
            f"s{t.get('sparsity')}" if t.get("sparsity") is not None else "",
            str((cfg.get("transfer") or {}).get("task", "")) if isinstance(cfg.get("transfer"), dict) else ""]
    return "_".join(b for b in bits if b) + f"_{trial.trial_id}"


def build_tuner(space, exp_dir: Path, storage: str, name: str, store_root: Path, shared, max_concurrent):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    from .tune_space import param_space, scheduler, searcher

    return tune.Tuner(
        trainable(space, shared),
        param_space=param_space(space, store_root),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=scheduler(space), search_alg=searcher(space),
            num_samples=space.tune["num_samples"], reuse_actors=True,
            trial_dirname_creator=trial_name, trial_name_creator=trial_name,
            max_concurrent_trials=max_concurrent or space.tune.get("max_concurrent"),
        ),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=space.tune["max_failures"]),
            # PBT exploits other trials' checkpoints: keep a few; otherwise the last one is enough
            checkpoint_config=CheckpointConfig(num_to_keep=4 if space.tune["scheduler"]["type"] == "pbt" else 1),
        ),
    )


def fit(space, exp_dir, storage, name, store_root, args, restore: bool) -> int:
    t0 = time.time()
    try:
        init_ray(args.address, args.cpus, getattr(args, "gpus", None))
        shared = None if getattr(args, "no_shared_inputs", False) else shared_inputs(space)
        if restore:
            from ray import tune

            tuner = tune.Tuner.restore(str(Path(storage) / name) if not is_uri(storage) else f"{storage}/{name}",
                                       trainable=trainable(space, shared), resume_errored=True)
        else:
            tuner = build_tuner(space, exp_dir, storage, name, store_root, shared, getattr(args, "max_concurrent", None))
        grid = tuner.fit()
    except KeyboardInterrupt:
        print("\ninterrupted: resume with `run_search.py resume " + str(exp_dir) + "`", file=sys.stderr)
        _write_partial(storage, name, exp_dir, space)
        return EXIT_INTERRUPTED
    except Exception as e:  # Ray could not run the experiment at all
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INFRA
    df = write_results(grid, exp_dir, name)
    return summarize(df, exp_dir, time.time() - t0)


def _write_partial(storage, name, exp_dir, space) -> None:
    try:
        from ray import tune

        grid = tune.Tuner.restore(str(Path(storage) / name), trainable=trainable(space, None)).get_results()
        write_results(grid, exp_dir, name)
    except Exception as e:  # best effort: the experiment state on disk is what resume uses
        print(f"(partial results not written: {e})", file=sys.stderr)
