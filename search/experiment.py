"""The commands of ``run_search.py``: run a space, resume an experiment, report on one, list the spaces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import EXIT_BAD_INPUT, EXIT_OK
from .driver import DriverBusy, clean_leftovers, clear_experiment, driver_lock, experiment_files
from .resume_checks import is_uri
from .tuner import fit


def _check_executor(space, args) -> str | None:
    """The executor's own refusals, before anything is written (None: fine; else the message, printed)."""
    from search_spaces.space import SpaceError

    msg = None
    if getattr(args, "executor", "ray") != "local":
        if getattr(args, "shard", None) or getattr(args, "exclude", None):
            msg = "--shard and --exclude need --executor local"
    else:
        from .trial_list import check_local, parse_exclude, parse_shard

        try:
            check_local(space)
            parse_shard(args.shard)
            parse_exclude(args.exclude)
        except SpaceError as e:
            msg = str(e)
    if msg:
        print(f"error: {msg}", file=sys.stderr)
    return msg


def _execute(space, exp_dir, storage, name, store_root, args, restore: bool) -> int:
    if getattr(args, "executor", "ray") == "local":
        from .local import run_local

        return run_local(space, exp_dir, name, store_root, args.workers, args.shard, args.exclude)
    return fit(space, exp_dir, storage, name, store_root, args, restore=restore)

SPACE_COPY = "space.json"


def cmd_run(args) -> int:
    from search_spaces.loader import check_machine, check_models, load_space
    from search_spaces.space import SpaceError, as_dict, finder_runs, grid_size

    try:
        space = load_space(args.space, smoke=args.smoke)
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    name = args.name or (space.name + ("-smoke" if args.smoke else ""))
    if is_uri(args.storage) and not args.tickets:
        print("error: --storage is a URI: pass --tickets DIR on storage every node can reach", file=sys.stderr)
        return EXIT_BAD_INPUT
    storage = args.storage if is_uri(args.storage) else str(Path(args.storage).expanduser().resolve())
    store_root = Path(args.tickets or storage).expanduser().resolve()
    exp_dir = store_root / name if is_uri(args.storage) else Path(storage) / name
    n = grid_size(space)
    print(f"space {space.path.name}: stage {space.stage}, {n} trial(s){' (smoke)' if args.smoke else ''}, "
          f"metric {space.metric} ({space.mode}), scheduler {space.tune['scheduler']['type']}, "
          f"searcher {space.tune['searcher']['type']}")
    for check in (lambda: check_machine(space, getattr(args, "gpus", None), local=not args.address,
                                        cpus=getattr(args, "cpus", None)),
                  lambda: check_models(space, local=not args.address)):  # models: configs only, never weights
        try:
            for note in check():
                print(f"note: {note}")
        except SpaceError as e:
            if not args.dry_run:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_BAD_INPUT
            print(f"note (a real run stops here): {e}")
    print(f"runtime: device {space.runtime['device']}, precision {space.runtime['precision']}, "
          f"per trial {space.resources}")
    if args.dry_run:
        tickets, runs, steps = finder_runs(space)
        print(f"tickets: {tickets} distinct, made by {runs} finder run(s) of {steps:,} training steps in all")
        return EXIT_OK
    if _check_executor(space, args) is not None:
        return EXIT_BAD_INPUT
    if exp_dir.exists() and experiment_files(exp_dir) and not args.overwrite:
        print(f"error: {exp_dir} exists: `run_search.py resume {exp_dir}` or pass --overwrite", file=sys.stderr)
        return EXIT_BAD_INPUT
    exp_dir.mkdir(parents=True, exist_ok=True)
    try:
        with driver_lock(exp_dir):  # held until the driver ends: a second driver on it is refused
            if experiment_files(exp_dir):
                if not args.overwrite:  # made by a driver that started meanwhile
                    print(f"error: {exp_dir} exists: `run_search.py resume {exp_dir}` or pass --overwrite",
                          file=sys.stderr)
                    return EXIT_BAD_INPUT
                clear_experiment(exp_dir)
            clean_leftovers(exp_dir, store_root)
            (exp_dir / SPACE_COPY).write_text(json.dumps(
                {"space": as_dict(space), "storage": storage, "store_root": str(store_root), "name": name},
                default=str, indent=2))
            if space.raw.get("proxy") is not None:  # two-stage, proxy-guided search (search_spaces/proxy_runner.py)
                from .proxy_search import run_proxy_search

                return run_proxy_search(space, args, exp_dir, storage, name, store_root)
            return _execute(space, exp_dir, storage, name, store_root, args, restore=False)
    except DriverBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def cmd_resume(args) -> int:
    from search_spaces.loader import SpaceError, check_machine, check_models, validate

    from .resume_checks import location, untrusted

    exp_dir = Path(args.experiment).expanduser().resolve()
    meta_file = exp_dir / SPACE_COPY
    if not meta_file.is_file():
        print(f"error: {exp_dir} is not an experiment directory (no {SPACE_COPY})", file=sys.stderr)
        return EXIT_BAD_INPUT
    bad = untrusted(exp_dir)  # before anything in it is read: Tune's restore unpickles (runs) what is there
    if bad:
        print(f"error: refusing to resume {exp_dir}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1
              else "") + "; restoring it would load code anyone who can write there may have put in it. If you "
              f"trust its contents: chown -R $USER {exp_dir} && chmod -R go-w {exp_dir}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        meta = json.loads(meta_file.read_text())
        raw, path = meta["space"]["raw"], Path(meta["space"]["path"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {meta_file} is damaged ({type(e).__name__}: {e}); nothing was run or written", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        space = validate(path, raw)
        for note in check_machine(space, args.gpus, local=not args.address, cpus=getattr(args, "cpus", None)) + \
                check_models(space, local=not args.address):
            print(f"note: {note}")
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if _check_executor(space, args) is not None:
        return EXIT_BAD_INPUT
    if space.raw.get("proxy") is not None:
        print(f"error: a proxy-guided experiment resumes by running it again: `run_search.py run {space.path} "
              f"--overwrite` (every ticket already made is taken from the store)", file=sys.stderr)
        return EXIT_BAD_INPUT
    storage, name, notes = location(exp_dir, meta)  # where it is now, not where space.json says it was made
    for note in notes:
        print(f"note: {note}")
    try:
        with driver_lock(exp_dir):  # held until the driver ends: a second driver on it is refused
            clean_leftovers(exp_dir, Path(meta["store_root"]) if not is_uri(meta["store_root"]) else None)
            return _execute(space, exp_dir, storage, name, Path(meta["store_root"]), args, restore=True)
    except DriverBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def cmd_report(args) -> int:
    from analysis.config_keys import UnknownKey
    from analysis.results_io import ResultsDamaged

    exp_dir = Path(args.experiment)
    if not (exp_dir / "results.parquet").is_file() and not (exp_dir / "results.csv").is_file():
        print(f"error: no results in {exp_dir}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from analysis.report import write_report

    try:
        keys = {k: getattr(args, k) for k in ("best_by", "group_by") if getattr(args, k, None)}
        print(write_report(exp_dir, exclude_stopped=getattr(args, "exclude_stopped", False), **keys))
    except (ResultsDamaged, UnknownKey) as e:  # no intact copy (a fallback only warns); a key the results lack
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_list(args) -> int:
    import yaml

    from search_spaces.loader import list_spaces

    for p in list_spaces():
        desc = (yaml.safe_load(p.read_text()) or {}).get("description", "").strip().splitlines()
        print(f"{p.stem:<22} {desc[0] if desc else ''}")
    return EXIT_OK


def cmd_export(args) -> int:
    from sparsebert.tickets.ticket import TicketError

    from .tickets import export_ticket

    try:
        out = export_ticket(args.ticket, args.out, store=args.store, overwrite=args.overwrite)
    except (TicketError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"exported ticket {args.ticket} to {out}")
    return EXIT_OK


def cmd_tickets(args) -> int:
    from .tickets import format_table, ticket_table

    try:
        df = ticket_table(args.store)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if df.empty:
        print(f"no tickets in {Path(args.store) / 'tickets'}")
        return EXIT_OK
    print(format_table(df))
    return EXIT_OK
