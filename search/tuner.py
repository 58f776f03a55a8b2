"""Ray and the Tuner: a local Ray (or a cluster), the trainable with its resources, tokenized inputs shared with
trials through the object store, and fit / resume of one Tune experiment."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import EXIT_INFRA, EXIT_INTERRUPTED
from .driver import sigterm_as_ctrl_c
from .local import EXIT_TERMINATED, Terminated
from .results import summarize, write_results
from .resume_checks import is_uri


def init_ray(address: str | None, cpus: int | None, gpus: int | None = None) -> None:
    """Join the cluster at ``address`` (its own auth applies), or start a local Ray that only this machine's
    loopback can reach and that refuses callers without its token.

    Local Ray: (1) token auth stays on (Ray 2.60's default when RAY_AUTH_MODE is unset; an explicit RAY_AUTH_MODE
    is respected). The token is Ray's default ``~/.ray/auth_token``, created here with mode 0600 in a 0700 dir when
    missing (Ray itself would write it with the umask's mode, usually 0644) and tightened to 0600 when others can
    read it; RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH, when set, are used as they are. (2) Every Ray server (GCS,
    raylet, object manager, runtime-env agent, driver and worker gRPC ports) binds 127.0.0.1 instead of all
    interfaces: Ray's local-only mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the default on macOS/Windows), in
    which ``_node_ip_address="127.0.0.1"`` stays loopback rather than being mapped to the outward address."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    mode = os.environ.get("RAY_AUTH_MODE")
    if (mode is None or mode.lower() == "token") and not (os.environ.get("RAY_AUTH_TOKEN")
                                                          or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        import secrets
        import stat

        token = Path.home() / ".ray" / "auth_token"
        token.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not token.is_file() or not token.read_text().strip():
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # 256 bits, the format of `ray get-auth-token --generate`
        if stat.S_IMODE(token.stat().st_mode) & 0o077:
            token.chmod(0o600)
            print(f"note: {token} was readable by other users; made it 0600", file=sys.stderr)
    # local-only Ray: read at import by ray._private.ray_constants (ray may be imported already), and in the env for
    # the processes Ray starts
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    from . import ray_leftovers

    ray_leftovers.clean()  # what a SIGKILLed driver's local Ray left running (its agents outlive it by a minute)
    ray.init(num_cpus=cpus or os.cpu_count(), num_gpus=gpus, include_dashboard=False, log_to_driver=True,
             _node_ip_address="127.0.0.1")
    try:
        ray_leftovers.register(ray._private.worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 -- a private attribute of Ray's: then nothing is recorded
        pass


def shared_inputs(space):
    """Tokenized text for every (model, text) the space's tickets read (any finder whose spec reads text) and are
    evaluated on: built once, shared."""
    from search_spaces.space import _expand
    from sparsebert.tickets.finders import finder_spec
    from sparsebert.tickets.pipeline import EvalSpec, SharedText, ensure_head
    from sparsebert.engine.runtime import CPU, DeviceUnavailable, resolve_runtime

    try:  # the driver fits the MLM head on the space's device when it has one (a cluster's driver may not)
        runtime = resolve_runtime(space.runtime)
    except DeviceUnavailable:
        runtime = CPU
    shared, heads = SharedText(), set()
    for variant in space.variants or [{}]:
        for point in _expand({**space.ticket, **variant}):
            spec = finder_spec(point)
            ev = EvalSpec(**{"text": point.get("text"), **space.eval})
            text = spec.train_text()
            if text is not None:
                shared.get(spec.model, text, "train")
                shared.get(spec.model, text, "validation")
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

    from .trial_list import ticket_config, ticket_label

    cfg = trial.config or {}
    t = ticket_config(cfg)
    bits = [re.sub(r"[^A-Za-z0-9+.-]+", "-", ticket_label(t)).strip("-"),
            f"s{t.get('sparsity')}" if t.get("sparsity") is not None else "",
            str((cfg.get("transfer") or {}).get("task", "")) if isinstance(cfg.get("transfer"), dict) else ""]
    return "_".join(b for b in bits if b) + f"_{trial.trial_id}"


def _console(space) -> dict:
    """The compact live view (search/live_view.py) with Tune's own output off; ``--verbose``
    (SPARSEBERT_VERBOSE=1) gives Tune's output and the trials' log lines instead."""
    if os.environ.get("SPARSEBERT_VERBOSE") == "1":
        return {}
    from .live_view import LiveView

    # Tune's advice to checkpoint less often, printed at every snapshot of short trials: not for this console
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return {"verbose": 0, "callbacks": [LiveView(space.metric, space.mode)]}


def checkpoint_config(space):
    """Which checkpoints Tune keeps. Without PBT the last one is enough (resume). Under PBT all of them: a trial
    in the lower quantile is restarted from the path of a donor's checkpoint, but it may wait (paused, or pending
    for a free slot) while the donor reports on, and the donor's checkpoint manager deletes by its own count
    (``num_to_keep``) with no knowledge of that pending clone ("Could not recover from checkpoint as it does not
    exist on storage anymore"). No finite count is safe, so none is deleted: the disk holds every report's
    checkpoint of every trial (model + optimizer each); the experiment directory can be pruned once it is done."""
    from ray.tune import CheckpointConfig

    return CheckpointConfig(num_to_keep=None if space.tune["scheduler"]["type"] == "pbt" else 1)


def build_tuner(space, exp_dir: Path, storage: str, name: str, store_root: Path, shared, max_concurrent,
                configs: list[dict] | None = None):
    """The space's Tuner; with ``configs``, a Tune run of exactly those trial configs (a resume without Tune's
    state, :mod:`search.rerun`)."""
    from ray import tune
    from ray.tune import FailureConfig, RunConfig

    from .tune_space import param_space, scheduler, searcher

    if configs is not None:
        from .rerun import FixedConfigs

        params, search_alg, n = {}, FixedConfigs(configs), len(configs)
    else:
        params, search_alg, n = param_space(space, store_root), searcher(space), space.tune["num_samples"]
    return tune.Tuner(
        trainable(space, shared),
        param_space=params,
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=scheduler(space), search_alg=search_alg,
            num_samples=n, reuse_actors=True,
            trial_dirname_creator=trial_name, trial_name_creator=trial_name,
            max_concurrent_trials=max_concurrent or space.tune.get("max_concurrent"),
        ),
        run_config=RunConfig(
            name=name, storage_path=storage, **_console(space),
            failure_config=FailureConfig(max_failures=space.tune["max_failures"]),
            checkpoint_config=checkpoint_config(space),
        ),
    )


def fit(space, exp_dir, storage, name, store_root, args, restore: bool) -> int:
    from .results import ResultsWriteError
    from .resume_checks import (TUNER_PKL, FileGuard, experiment_state_damage, kept_note, tune_state_damage,
                                tuner_pkl_damage)

    t0 = time.time()
    exp_dir = Path(exp_dir)
    # the Tune experiment: a local one is the directory itself (resume: where it is now), a URI one <storage>/<name>
    path = f"{storage}/{name}" if is_uri(storage) else str(exp_dir)
    local = not is_uri(storage)
    rebuild, fresh = False, None  # fresh: the plan of a resume without Tune's state (search/rerun.py)
    if restore and local and FileGuard.recover(exp_dir / TUNER_PKL):
        print(f"note: {exp_dir / TUNER_PKL} was put back from the copy a previous run kept", file=sys.stderr)
    if restore and local:
        damage = tune_state_damage(exp_dir)  # named before Ray starts; nothing in it is unpickled here
        if damage and tuner_pkl_damage(exp_dir) and not experiment_state_damage(exp_dir):
            # tuner.pkl (the Tuner's settings) is rebuilt from the space; the trials come from the whole state
            from sparsebert.engine.fsutil import move_aside

            bad = exp_dir / TUNER_PKL
            moved = f", moved aside to {move_aside(bad)}" if bad.exists() else ""
            print(f"note: {damage}{moved}; rebuilding it from the space, the trials from "
                  f"{sorted(exp_dir.glob('experiment_state-*.json'))[-1].name}", file=sys.stderr)
            rebuild = True
        elif damage:
            note = _from_trial_dirs(exp_dir, name, hint=False)
            fresh = _without_state(space, exp_dir, store_root, damage, note)
            if fresh is None:
                print(f"error: cannot resume {exp_dir}: its Tune state is damaged: {damage}; "
                      f"{note or kept_note(exp_dir)}", file=sys.stderr)
                return EXIT_INFRA
            if fresh.refused:
                print(f"error: cannot resume the unfinished trials of {exp_dir}: its Tune state is damaged "
                      f"({damage}) and {fresh.refused}; {note or kept_note(exp_dir)}", file=sys.stderr)
                return EXIT_INFRA
            if not fresh.configs:  # every trial finished: the results from their directories are the results
                try:
                    return summarize(write_results(_trial_dirs(exp_dir), exp_dir, name), exp_dir, time.time() - t0)
                except ResultsWriteError as e:
                    print(f"error: {e}; the trials' own directories are kept", file=sys.stderr)
                    return EXIT_INFRA
    with sigterm_as_ctrl_c() as term:  # handled like Ctrl-C until the results are written
        guard = FileGuard(exp_dir / TUNER_PKL) if local and fresh is None else None  # never leave it cut short
        try:
            init_ray(args.address, args.cpus, getattr(args, "gpus", None))
            term.arm()  # again: ray.init installs its own SIGTERM handler (a stack dump, then abort)
            shared = None if getattr(args, "no_shared_inputs", False) else shared_inputs(space)
            if fresh is not None:
                from .rerun import set_aside

                aside = set_aside(exp_dir, fresh)
                print(f"note: the damaged Tune state and the {len(fresh.unfinished)} unfinished trial dir(s) are "
                      f"in {aside}; a fresh Tune run in {exp_dir} runs {len(fresh.configs)} trial(s)",
                      file=sys.stderr)
                tuner = build_tuner(space, exp_dir, storage, name, store_root, shared,
                                    getattr(args, "max_concurrent", None), configs=fresh.configs)
            elif restore:
                from ray import tune

                if rebuild:
                    build_tuner(space, exp_dir, storage, name, store_root, shared,
                                getattr(args, "max_concurrent", None))
                    guard = FileGuard(exp_dir / TUNER_PKL)
                try:
                    tuner = tune.Tuner.restore(path, trainable=trainable(space, shared), resume_errored=True)
                    if guard is not None:
                        guard.detach()  # read: now a rewrite by Tune cannot cut the good copy short
                except Exception as e:  # noqa: BLE001 -- a state the checks above could not see is damaged
                    print(f"error: cannot resume {path}: Tune cannot restore its state ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}){_full(exp_dir)}; "
                          f"{_kept(exp_dir, name)}", file=sys.stderr)
                    return EXIT_INFRA
            else:
                tuner = build_tuner(space, exp_dir, storage, name, store_root, shared,
                                    getattr(args, "max_concurrent", None))
            grid = tuner.fit()
        except KeyboardInterrupt as e:  # Ctrl-C twice (Tune's first one stops it gracefully), or before Tune ran
            print(f"\n{'terminated (SIGTERM)' if isinstance(e, Terminated) else 'interrupted'}: resume with "
                  f"`run_search.py resume {exp_dir}`", file=sys.stderr)
            _write_partial(storage, name, exp_dir, space)
            return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
        except Exception as e:  # Ray could not run the experiment at all (or its state could not be written)
            print(f"error: {type(e).__name__}: {e}{_full(exp_dir)}; {_kept(exp_dir, name) if local else ''}",
                  file=sys.stderr)
            return EXIT_INFRA
        finally:
            if guard is not None and guard.restore():
                print(f"note: {exp_dir / TUNER_PKL} was cut short while Tune rewrote it; the good copy is back",
                      file=sys.stderr)
        try:
            df = write_results(_carried(grid, exp_dir), exp_dir, name)
        except ResultsWriteError as e:  # e.g. the disk is full: the files there before are unchanged
            print(f"error: {e}; the trials' own directories and the Tune state are kept: free space, then "
                  f"`run_search.py resume {exp_dir}`", file=sys.stderr)
            return EXIT_INFRA
        code = summarize(df, exp_dir, time.time() - t0)
        if term:  # Tune stopped gracefully on SIGTERM: the trials in flight kept their latest checkpoints
            print(f"terminated (SIGTERM): Tune stopped the trials in flight and saved its state; `run_search.py "
                  f"resume {exp_dir}` runs what did not finish", file=sys.stderr)
            return code if code == EXIT_INFRA else EXIT_TERMINATED
        return code


def _full(exp_dir: Path) -> str:
    """`` (no space left on device ...)`` when the disk of ``exp_dir`` is full: what Tune's own error hides."""
    from .resume_checks import disk_full

    why = disk_full(exp_dir) if Path(exp_dir).is_dir() else None
    return f" -- ENOSPC: {why}" if why else ""


def _from_trial_dirs(exp_dir: Path, name: str, hint: bool = True) -> str | None:
    """Write the results from the trials' own directories (whatever Tune's state says); a sentence on what was
    written, or None when there is no Ray trial directory (or nothing could be written)."""
    from .resume_checks import ray_trial_results
    from .results import ResultsWriteError

    found = ray_trial_results(Path(exp_dir))
    if not found:
        return None
    try:
        df = write_results(found, exp_dir, name)
    except ResultsWriteError as e:
        return f"the results could not be written from the {len(found)} trial directories either ({e})"
    done = int((df["status"] == "TERMINATED").sum())
    where = df.attrs.get("results_file") or Path(exp_dir) / "results.parquet"
    return (f"the results of the {len(found)} trial directories ({done} finished) are in {where}"
            + (f"; `run_search.py resume {exp_dir}` runs the rest" if hint else ""))


def _kept(exp_dir: Path, name: str) -> str:
    from .resume_checks import kept_note

    return _from_trial_dirs(exp_dir, name) or kept_note(exp_dir)


def _write_partial(storage, name, exp_dir, space) -> None:
    try:
        from ray import tune

        path = f"{storage}/{name}" if is_uri(storage) else str(exp_dir)
        grid = tune.Tuner.restore(path, trainable=trainable(space, None)).get_results()
        write_results(grid if is_uri(storage) else _carried(grid, exp_dir), exp_dir, name)
    except Exception as e:  # the Tune state cannot be read back: the trials' own directories can
        note = None if is_uri(storage) else _from_trial_dirs(Path(exp_dir), name)
        print(note or f"(partial results not written: {e})", file=sys.stderr)


def _carried(grid, exp_dir: Path):
    """``grid`` plus the trials carried over from a Tune state that was lost (``carried_trials.json``)."""
    if not (Path(exp_dir) / "carried_trials.json").is_file():
        return grid
    from .rerun import with_carried

    return with_carried(grid, exp_dir)


def _trial_dirs(exp_dir: Path) -> list:
    from .resume_checks import ray_trial_results

    return ray_trial_results(Path(exp_dir))


def _without_state(space, exp_dir: Path, store_root, damage: str, note: str | None):
    """The plan of a resume that does without the damaged Tune state (:func:`search.rerun.plan`), said on stderr;
    None when ``exp_dir`` holds no trace of a Ray Tune run (then there is nothing to resume this way)."""
    from .resume_checks import STATE_GLOB, TUNER_PKL

    traces = [exp_dir / TUNER_PKL, exp_dir / "carried_trials.json", *exp_dir.glob(STATE_GLOB),
              *exp_dir.glob("*/params.json")]
    if not any(p.exists() for p in traces):
        return None
    from .rerun import plan

    p = plan(space, exp_dir, store_root)
    if p.refused:
        return p
    print(f"note: {damage}; resuming without Tune's state: "
          f"{note + '; ' if note else ''}{len(p.finished)} finished trial(s) are kept as they are (not run again), "
          f"{len(p.configs)} trial(s) still to run", file=sys.stderr)
    for n in p.notes:
        print(f"note: {n}", file=sys.stderr)
    return p
