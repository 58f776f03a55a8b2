#!/usr/bin/env python
"""Lottery-ticket search for BERT on Ray Tune.

    run_search.py run SPACE [--smoke] [--storage DIR|URI] [--name NAME] [--address ADDR] [--cpus N] [--gpus N]
                      [--dry-run]
    run_search.py resume EXPERIMENT_DIR        continue an interrupted experiment (errored trials retried)
    run_search.py report EXPERIMENT_DIR        tables, correlations, figures, report.md
    run_search.py list                         the search spaces shipped in search_spaces/

SPACE is a YAML file or the name of one in search_spaces/ (e.g. `demo`). Tickets are content-addressed in
<tickets>/tickets/<id>/ (default: the storage dir), so no finder config is trained twice across experiments that
share it. Results: <storage>/<name>/results.parquet and .csv (one row per trial), written at the end of a run, on
resume, and on Ctrl-C.

Devices: a space's `device` (auto | cpu | cuda | cuda:N | mps) and `precision` (auto | fp32 | bf16 | fp16) say where
each trial computes; `resources: {gpu: 0.25}` packs four trials on one GPU. With auto, a trial that reserves a GPU
uses the one Ray made visible to it, in bf16 where the GPU supports it; otherwise the CPU in fp32.

Ray: without --address (or RAY_ADDRESS) a local Ray starts with token auth disabled (RAY_AUTH_MODE=disabled: a
single-machine run opens no port to others). With --address the cluster's own auth applies (start clusters with
RAY_AUTH_MODE=token and share ~/.ray/auth_token, see README). Multi-node runs need --storage on a path (or URI)
every node can reach.

Exit codes: 0 all trials finished; 1 some trials failed; 2 bad input (nothing was run or written);
3 Ray/infrastructure error; 130 interrupted (partial results written).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SPACE_COPY = "space.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a search space")
    r.add_argument("space", help="YAML file or name in search_spaces/")
    r.add_argument("--smoke", action="store_true", help="shrink the space: tiny model, few steps, small data")
    r.add_argument("--storage", default="results", help="experiment storage: a local dir or a URI (default results/)")
    r.add_argument("--tickets", default=None, help="ticket store dir (default: --storage; required for URIs)")
    r.add_argument("--name", default=None, help="experiment name (default: the space's name)")
    r.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="join a running Ray cluster")
    r.add_argument("--cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    r.add_argument("--gpus", type=int, default=None,
                   help="GPUs for a local Ray (default: the ones torch sees); trials take resources.gpu each")
    r.add_argument("--max-concurrent", type=int, default=None, help="cap concurrent trials")
    r.add_argument("--dry-run", action="store_true", help="validate and print the trial count; run nothing")
    r.add_argument("--overwrite", action="store_true", help="delete an existing experiment of the same name")
    r.add_argument("--no-shared-inputs", action="store_true",
                   help="let every trial tokenize its own text instead of receiving it through the object store "
                        "(for measuring start-up cost)")
    res = sub.add_parser("resume", help="resume an interrupted experiment")
    res.add_argument("experiment", help="the experiment directory (<storage>/<name>)")
    res.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    res.add_argument("--cpus", type=int, default=None)
    res.add_argument("--gpus", type=int, default=None)
    rep = sub.add_parser("report", help="write the analysis report of an experiment")
    rep.add_argument("experiment")
    sub.add_parser("list", help="list the search spaces")
    return p


def _is_uri(s: str) -> bool:
    return "://" in s


def _init_ray(address: str | None, cpus: int | None, gpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=cpus or os.cpu_count(), num_gpus=gpus, include_dashboard=False, log_to_driver=True)


def _shared_inputs(space):
    """Tokenized text for every (model, text) the space's tamt/imp tickets use: built once, shared."""
    from search_spaces.loader import _expand
    from sparsebert.pipeline import EvalSpec, FinderSpec, SharedText, prepare_head
    from sparsebert.runtime import CPU, DeviceUnavailable, resolve

    try:  # the driver fits the MLM head on the space's device when it has one (a cluster's driver may not)
        runtime = resolve(space.runtime)
    except DeviceUnavailable:
        runtime = CPU
    shared, heads = SharedText(), set()
    for variant in space.variants or [{}]:
        for point in _expand({**space.ticket, **variant}):
            spec = FinderSpec.from_dict(point)
            for split in ("train", "validation"):
                if spec.method.value in ("tamt", "imp") or split == "validation":
                    shared.get(spec.model, spec.text, split)
            key = (spec.model, spec.text.get("source", "embedded"))
            if key not in heads:  # every ticket's MLM loss needs the model's head: fit it once, here
                heads.add(key)
                prepare_head(spec, EvalSpec(**space.eval), shared, runtime=runtime)
    return shared


def _trainable(space, shared):
    from ray import tune

    from trainables import TRAINABLES

    fn = tune.with_parameters(TRAINABLES[space.stage], shared=shared)
    return tune.with_resources(fn, _trial_resources(space))


def _trial_resources(space) -> dict:
    """The space's per-trial resources; with ``device: auto`` a GPU reservation is dropped when the Ray cluster has
    no GPU at all (the trials run on the CPU rather than wait forever)."""
    import ray

    res = dict(space.resources)
    if res.get("gpu") and space.runtime["device"] == "auto" and not ray.cluster_resources().get("GPU"):
        res.pop("gpu")
    return res


def _trial_name(trial) -> str:
    """Short, readable trial names (the default embeds the whole ticket dict)."""
    cfg = trial.config or {}
    t = {**(cfg.get("ticket") or {}), **(cfg.get("variant") or {})}
    bits = [str(t.get("method", "")), str(t.get("objective", "")) if t.get("method") == "tamt" else "",
            f"s{t.get('sparsity')}" if t.get("sparsity") is not None else "",
            str((cfg.get("transfer") or {}).get("task", "")) if isinstance(cfg.get("transfer"), dict) else ""]
    return "_".join(b for b in bits if b) + f"_{trial.trial_id}"


def _tuner(space, exp_dir: Path, storage: str, name: str, store_root: Path, shared, max_concurrent):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    from search_spaces.loader import param_space, scheduler, searcher

    return tune.Tuner(
        _trainable(space, shared),
        param_space=param_space(space, store_root),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=scheduler(space), search_alg=searcher(space),
            num_samples=space.tune["num_samples"], reuse_actors=True,
            trial_dirname_creator=_trial_name, trial_name_creator=_trial_name,
            max_concurrent_trials=max_concurrent or space.tune.get("max_concurrent"),
        ),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=space.tune["max_failures"]),
            # PBT exploits other trials' checkpoints: keep a few; otherwise the last one is enough
            checkpoint_config=CheckpointConfig(num_to_keep=4 if space.tune["scheduler"]["type"] == "pbt" else 1),
        ),
    )


def results_frame(result_grid, experiment: str):
    """One row per trial: config, final and best metrics, ticket path, status and error."""

    import pandas as pd

    rows = []
    for r in result_grid:
        m = dict(r.metrics or {})
        cfg = r.config or {}
        row = {"trial_id": m.get("trial_id") or (Path(r.path).name if r.path else None), "experiment": experiment,
               "stage": m.get("stage", cfg.get("stage")), "trial_dir": r.path}
        if r.error is not None:
            row["status"], row["error"] = "ERROR", f"{type(r.error).__name__}: {str(r.error).strip().splitlines()[-1]}"
        elif not m.get("training_iteration"):  # never reported (cut off before it ran)
            row["status"], row["error"] = "PENDING", None
        else:
            total, step = m.get("total_steps"), m.get("step")
            stopped = total is not None and step is not None and step < total
            # a ticket-finding trial reports its ticket_path only once the ticket is made: without one it was
            # stopped by the scheduler (e.g. ASHA on the KD loss) part-way through mask training
            stopped = stopped or (row["stage"] in ("find", "evaluate") and not m.get("ticket_path"))
            row["status"], row["error"] = ("EARLY_STOPPED" if stopped else "TERMINATED"), None
        ticket = {**(cfg.get("ticket") or {}), **(cfg.get("variant") or {})}
        for k in ("model", "method", "init", "objective", "sparsity", "steps"):
            row[k] = m.get(k, ticket.get(k))
        row["ticket_seed"] = m.get("ticket_seed", ticket.get("seed"))
        tseed = m.get("transfer_seed", (cfg.get("transfer") or {}).get("seed"))
        row["seed"] = tseed if row["stage"] == "transfer" else row["ticket_seed"]
        for k in ("label", "ticket_id", "ticket_path", "mlm_loss", "kd_loss", "task", "score", "best_score",
                  "time_total_s", "training_iteration", "startup_s", "find_s", "ticket_made", "cached",
                  "step", "total_steps", "device", "precision"):
            row[k] = m.get(k)
        if row["task"] is None and cfg.get("transfer"):
            row["task"] = cfg["transfer"].get("task")
        skip = set(row) | {"config", "date", "hostname", "pid", "timestamp", "done", "time_this_iter_s",
                           "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint"}
        for k, v in m.items():
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"metric/{k}"] = v
        row["node_ip"] = m.get("node_ip")
        if r.metrics_dataframe is not None and "score" in getattr(r.metrics_dataframe, "columns", []):
            s = r.metrics_dataframe["score"].dropna()
            row["best_score"] = float(s.max()) if len(s) else row["best_score"]
        rows.append(row)
    df = pd.DataFrame(rows)
    if "best_score" in df:
        df["best_score"] = pd.to_numeric(df["best_score"], errors="coerce")
    return df


def write_results(result_grid, exp_dir: Path, experiment: str):
    df = results_frame(result_grid, experiment)
    exp_dir.mkdir(parents=True, exist_ok=True)
    tmp = exp_dir / ".results.parquet.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, exp_dir / "results.parquet")
    df.to_csv(exp_dir / "results.csv", index=False)
    return df


def summarize(df, exp_dir: Path, wall: float) -> int:
    n = len(df)
    by = df["status"].value_counts().to_dict() if n else {}
    print(f"\n== {n} trials in {wall:.0f}s: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(by.items())))
    print(f"== results: {exp_dir / 'results.parquet'} (and .csv)")
    cols = [c for c in ("label", "sparsity", "task", "status", "mlm_loss", "kd_loss", "best_score", "time_total_s")
            if c in df and df[c].notna().any()]
    if n:
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if n and "stage" in df:
        cut = df[df["stage"].isin(["find", "evaluate"]) & (df["status"] == "EARLY_STOPPED")]
        if len(cut):
            print(f"== {len(cut)} ticket-finding trial(s) stopped by the scheduler before their ticket was made "
                  "(no ticket); their mask-training state stays in the store's partial/ and resumes if run again")
    failed = df[df["status"] == "ERROR"] if n else df
    for _, row in failed.iterrows():
        print(f"!! trial {row['trial_id']} failed: {row['error']}")
    return EXIT_FAILED if len(failed) else EXIT_OK


def cmd_run(args) -> int:
    from search_spaces.loader import SpaceError, as_dict, check_machine, grid_size, load_space

    try:
        space = load_space(args.space, smoke=args.smoke)
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    name = args.name or (space.name + ("-smoke" if args.smoke else ""))
    if _is_uri(args.storage) and not args.tickets:
        print("error: --storage is a URI: pass --tickets DIR on storage every node can reach", file=sys.stderr)
        return EXIT_BAD_INPUT
    storage = args.storage if _is_uri(args.storage) else str(Path(args.storage).expanduser().resolve())
    store_root = Path(args.tickets or storage).expanduser().resolve()
    exp_dir = store_root / name if _is_uri(args.storage) else Path(storage) / name
    n = grid_size(space)
    print(f"space {space.path.name}: stage {space.stage}, {n} trial(s){' (smoke)' if args.smoke else ''}, "
          f"metric {space.metric} ({space.mode}), scheduler {space.tune['scheduler']['type']}, "
          f"searcher {space.tune['searcher']['type']}")
    try:
        for note in check_machine(space, getattr(args, "gpus", None), local=not args.address):
            print(f"note: {note}")
    except SpaceError as e:
        if not args.dry_run:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"note (a real run stops here): {e}")
    print(f"runtime: device {space.runtime['device']}, precision {space.runtime['precision']}, "
          f"per trial {space.resources}")
    if args.dry_run:
        return EXIT_OK
    if exp_dir.exists() and any(exp_dir.iterdir()):
        if not args.overwrite:
            print(f"error: {exp_dir} exists: `run_search.py resume {exp_dir}` or pass --overwrite", file=sys.stderr)
            return EXIT_BAD_INPUT
        shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / SPACE_COPY).write_text(json.dumps(
        {"space": as_dict(space), "storage": storage, "store_root": str(store_root), "name": name}, default=str,
        indent=2))
    if space.raw.get("proxy") is not None:  # two-stage, proxy-guided search (search_spaces/proxy_runner.py)
        from search_spaces.proxy_runner import run_proxy_search

        return run_proxy_search(space, args, exp_dir, storage, name, store_root)
    return _fit(space, exp_dir, storage, name, store_root, args, restore=False)


def _fit(space, exp_dir, storage, name, store_root, args, restore: bool) -> int:
    t0 = time.time()
    try:
        _init_ray(args.address, args.cpus, getattr(args, "gpus", None))
        shared = None if getattr(args, "no_shared_inputs", False) else _shared_inputs(space)
        if restore:
            from ray import tune

            tuner = tune.Tuner.restore(str(Path(storage) / name) if not _is_uri(storage) else f"{storage}/{name}",
                                       trainable=_trainable(space, shared), resume_errored=True)
        else:
            tuner = _tuner(space, exp_dir, storage, name, store_root, shared, getattr(args, "max_concurrent", None))
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

        grid = tune.Tuner.restore(str(Path(storage) / name), trainable=_trainable(space, None)).get_results()
        write_results(grid, exp_dir, name)
    except Exception as e:  # best effort: the experiment state on disk is what resume uses
        print(f"(partial results not written: {e})", file=sys.stderr)


def cmd_resume(args) -> int:
    from search_spaces.loader import SpaceError, check_machine, validate

    exp_dir = Path(args.experiment).expanduser().resolve()
    meta_file = exp_dir / SPACE_COPY
    if not meta_file.is_file():
        print(f"error: {exp_dir} is not an experiment directory (no {SPACE_COPY})", file=sys.stderr)
        return EXIT_BAD_INPUT
    meta = json.loads(meta_file.read_text())
    try:
        space = validate(Path(meta["space"]["path"]), meta["space"]["raw"])
        for note in check_machine(space, args.gpus, local=not args.address):
            print(f"note: {note}")
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if space.raw.get("proxy") is not None:
        print(f"error: a proxy-guided experiment resumes by running it again: `run_search.py run {space.path} "
              f"--overwrite` (every ticket already made is taken from the store)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _fit(space, exp_dir, meta["storage"], meta["name"], Path(meta["store_root"]), args, restore=True)


def cmd_report(args) -> int:
    exp_dir = Path(args.experiment)
    if not (exp_dir / "results.parquet").is_file() and not (exp_dir / "results.csv").is_file():
        print(f"error: no results in {exp_dir}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from analysis.report import write_report

    print(write_report(exp_dir))
    return EXIT_OK


def cmd_list(args) -> int:
    import yaml

    from search_spaces.loader import list_spaces

    for p in list_spaces():
        desc = (yaml.safe_load(p.read_text()) or {}).get("description", "").strip().splitlines()
        print(f"{p.stem:<22} {desc[0] if desc else ''}")
    return EXIT_OK


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args = _parser().parse_args(argv)
    return {"run": cmd_run, "resume": cmd_resume, "report": cmd_report, "list": cmd_list}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
