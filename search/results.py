"""One row per trial -- the results schema every consumer reads (``analysis`` reads these files) -- written as
``results.parquet`` + ``results.csv``, and the summary printed at the end of a run.

The files are written atomically (temporary file, fsync, rename) and never replaced by a table that finished
fewer trials (that one goes to ``results.partial.parquet|csv``); a full disk is a :class:`ResultsWriteError`
naming the file, which the commands report as an infrastructure error (exit 3)."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

from . import EXIT_FAILED, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK
from .trial_list import ticket_config

#: per-trial columns taken from the trial's last report (besides every numeric metric as ``metric/<name>``)
RESULT_COLUMNS = ("label", "ticket_id", "ticket_path", "mlm_loss", "kd_loss", "kd_loss_mse", "task", "score", "best_score",
                  "time_total_s", "training_iteration", "startup_s", "find_s", "ticket_made", "cached", "step",
                  "total_steps", "device", "precision", "mlm_head_sha256")
TICKET_KEYS = ("model", "method", "init", "objective", "sparsity", "steps")
CONFIG = "config/"


def config_columns(cfg: dict | None) -> dict:
    """Every value of a trial's config, flattened: ``config/<section>.<key>`` (``config/transfer.lr``,
    ``config/ticket.reset_every``, ``config/ticket.text.source``, ``config/eval.eval_blocks``, ``config/stage``).
    The ticket is the space's ticket section overlaid with the trial's variant (as the trial builds it), a value
    set per task is the trial's task's, a list (or an empty mapping) is its JSON text. For a PBT trial the config
    is its last one (the values it ended with)."""
    import json

    from sparsebert.transfer.per_task import resolve_config

    cfg = resolve_config(dict(cfg or {}))
    top = {k: v for k, v in cfg.items() if k != "variant"}
    if "ticket" in cfg or "variant" in cfg:
        top["ticket"] = ticket_config(cfg)
    out: dict = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            out[CONFIG + prefix] = json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else v

    walk("", top)
    return out


def _one_type_per_config_column(df):
    """A config column whose values mix kinds (numbers and text, e.g. ``eval_every: auto`` vs 50) becomes text:
    parquet holds one type per column."""
    import numbers

    for c in [c for c in df.columns if str(c).startswith(CONFIG)]:
        vals = [v for v in df[c] if v is not None and not (isinstance(v, float) and v != v)]
        kinds = {bool if isinstance(v, bool) else numbers.Number if isinstance(v, numbers.Number) else str
                 for v in vals}
        if len(kinds) > 1 or kinds - {bool, numbers.Number, str}:
            df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and v != v) else str(v))
    return df


def _trial_states(result_grid) -> dict:
    """path -> (config, Tune status) of every trial Tune knows (a trial that never reported has no config in its
    result; the status tells a trial the scheduler stopped from one an interrupted driver left unfinished)."""
    ea = getattr(result_grid, "_experiment_analysis", None)
    try:
        return {str(t.path): (t.config, getattr(t, "status", None)) for t in (getattr(ea, "trials", None) or [])}
    except Exception:  # noqa: BLE001 -- best effort: a private attribute of Tune's
        return {}


def _saved_statuses(exp_dirs) -> dict[str, str]:
    """trial_id -> status in the newest saved Tune state of each experiment dir: after a graceful stop (a first
    Ctrl-C or SIGTERM) Tune's live trials read TERMINATED, while the saved state, which a resume starts from, keeps
    the unfinished ones RUNNING. Empty where there is no readable state (the local executor, a damaged file)."""
    out: dict[str, str] = {}
    for d in exp_dirs:
        states = sorted(Path(d).glob("experiment_state-*.json"))
        if not states:
            continue
        try:
            for entry in json.loads(states[-1].read_text()).get("trial_data", []):
                t = json.loads(entry[0]) if isinstance(entry, list) else entry
                out[str(t["trial_id"])] = str(t.get("status"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def results_frame(result_grid, experiment: str):
    """One row per trial: config (every value, as ``config/...`` columns), final and best metrics, ticket path,
    status and error."""

    import pandas as pd

    rows = []
    known = _trial_states(result_grid)
    saved = _saved_statuses({Path(str(r.path)).parent for r in result_grid if getattr(r, "path", None)})
    for r in result_grid:
        m = dict(r.metrics or {})
        known_cfg, tune_status = known.get(str(r.path), (None, None))
        tune_status = saved.get(str(m.get("trial_id")), tune_status)  # the state a resume starts from
        cfg = r.config or known_cfg or {}
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
            if stopped and tune_status in ("RUNNING", "PAUSED", "PENDING"):
                stopped = "PAUSED"  # not the scheduler's decision: the driver was interrupted; resume continues it
            row["status"] = "PAUSED" if stopped == "PAUSED" else "EARLY_STOPPED" if stopped else "TERMINATED"
            row["error"] = None
        ticket = ticket_config(cfg)
        for k in TICKET_KEYS:
            row[k] = m.get(k, ticket.get(k))
        row["ticket_seed"] = m.get("ticket_seed", ticket.get("seed"))
        tseed = m.get("transfer_seed", (cfg.get("transfer") or {}).get("seed"))
        row["seed"] = tseed if row["stage"] == "transfer" else row["ticket_seed"]
        for k in RESULT_COLUMNS:
            row[k] = m.get(k)
        if row["task"] is None and cfg.get("transfer"):
            row["task"] = cfg["transfer"].get("task")
        skip = set(row) | {"config", "date", "hostname", "pid", "timestamp", "done", "time_this_iter_s",
                           "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint"}
        for k, v in m.items():
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"metric/{k}"] = v
        row["node_ip"] = m.get("node_ip")
        row.update(config_columns(cfg))
        if r.metrics_dataframe is not None and "score" in getattr(r.metrics_dataframe, "columns", []):
            s = r.metrics_dataframe["score"].dropna()
            row["best_score"] = float(s.max()) if len(s) else row["best_score"]
        rows.append(row)
    df = _one_type_per_config_column(pd.DataFrame(rows))
    if "best_score" in df:
        df["best_score"] = pd.to_numeric(df["best_score"], errors="coerce")
    return df


class ResultsWriteError(OSError):
    """The results table could not be written (disk full, read-only, ...): the message names the file; the files
    that were there before are unchanged."""


PARTIAL = "results.partial"  # a table with fewer finished trials than the one on disk goes here, beside it


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_pair(df, stem: Path) -> list[Path]:
    """``stem.parquet`` and ``stem.csv``, atomically: both written to temporary files and fsynced, then renamed
    over the old pair -- a crash or a full disk leaves the old files as they were (never half a file)."""
    out = [stem.with_name(stem.name + ".parquet"), stem.with_name(stem.name + ".csv")]
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in out]
    current = out[0]
    try:
        for target, tmp in zip(out, tmps):
            current = target
            with open(tmp, "wb") as f:
                if target.suffix == ".parquet":
                    df.to_parquet(f, index=False)
                else:
                    f.write(df.to_csv(index=False).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        for target, tmp in zip(out, tmps):
            current = target
            os.replace(tmp, target)
        _fsync_dir(stem.parent)
    except BaseException as e:
        for tmp in tmps:  # free the space a half-written temporary file holds
            try:
                tmp.unlink()
            except OSError:
                pass
        if not isinstance(e, OSError):
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e)
        what = "no space left on device" if full else (e.strerror or str(e))
        raise ResultsWriteError(e.errno, f"cannot write {current}: {what}" + (
            f" (the previous {current.name} is unchanged)" if current.exists() else "")) from e
    return out


def _finished_on_disk(exp_dir: Path) -> tuple[set, int, str | None]:
    """(trial ids, count) of the TERMINATED trials in the results already in ``exp_dir`` (an intact copy), and a
    note when the files there are damaged."""
    from analysis.results_io import ResultsDamaged, read_results_files

    try:
        old, _, _ = read_results_files(exp_dir)
    except ResultsDamaged as e:
        return set(), 0, str(e)
    if old is None or "status" not in old:
        return set(), 0, None
    done = old[old["status"].astype(str) == "TERMINATED"]
    ids = set(done["trial_id"].dropna().astype(str)) if "trial_id" in done else set()
    return ids, len(done), None


def write_results(result_grid, exp_dir: Path, experiment: str):
    """Write the table of ``result_grid`` as ``results.parquet`` + ``results.csv`` in ``exp_dir`` (atomically) and
    return it. Never replaces a table with one that has fewer finished (TERMINATED) trials, or loses one of them:
    the new table then goes beside it as ``results.partial.parquet|csv`` (said on stderr; ``df.attrs["kept"]``
    holds the reason, and :func:`summarize` returns EXIT_INFRA). Raises :class:`ResultsWriteError` when the disk
    is full (or the files cannot be written otherwise), naming the file."""
    df = results_frame(result_grid, experiment)
    exp_dir = Path(exp_dir)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsWriteError(e.errno, f"cannot create {exp_dir}: {e.strerror or e}") from e
    old_ids, old_n, damaged = _finished_on_disk(exp_dir)
    done = df[df["status"] == "TERMINATED"] if len(df) else df
    new_ids = set(done["trial_id"].dropna().astype(str)) if len(df) else set()
    lost = old_ids - new_ids
    if len(done) < old_n or lost:
        reason = (f"the new table has {len(done)} finished trial(s), {exp_dir / 'results.parquet'} has {old_n}"
                  + (f" ({len(lost)} of them not finished in the new one, e.g. {sorted(lost)[0]})" if lost else ""))
        paths = _write_pair(df, exp_dir / PARTIAL)
        print(f"warning: {reason}: kept results.parquet and results.csv; the new table is in {paths[0]} "
              f"(and .csv)", file=sys.stderr)
        df.attrs["kept"] = reason
        df.attrs["results_file"] = str(paths[0])
        return df
    if damaged:
        print(f"warning: {damaged}: replacing them with the new table", file=sys.stderr)
    paths = _write_pair(df, exp_dir / "results")
    df.attrs["results_file"] = str(paths[0])
    return df


def fmt_duration(s: float) -> str:
    """Seconds as a person reads them: ``42 s``, ``3.5 min``."""
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def summarize(df, exp_dir: Path, wall: float) -> int:
    n = len(df)
    by = df["status"].value_counts().to_dict() if n else {}
    print(f"\n== {n} trials in {wall:.0f}s: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(by.items())))
    print(f"== results: {df.attrs.get('results_file') or exp_dir / 'results.parquet'} (and .csv)")
    from analysis.config_keys import short, varying_keys

    cols = [c for c in ("label", "sparsity", "task", "status", "mlm_loss", "kd_loss", "best_score", "time_total_s")
            if c in df and df[c].notna().any()]
    keys = varying_keys(df, shown=cols)  # the searched values: two trials never print as one row
    at = cols.index("status") if "status" in cols else len(cols)
    cols = cols[:at] + keys + cols[at:]
    if n:
        print(df[cols].rename(columns={k: short(k) for k in keys}).to_string(
            index=False, float_format=lambda x: f"{x:.4g}"))
    if n and "stage" in df:
        cut = df[df["stage"].isin(["find", "evaluate"]) & (df["status"] == "EARLY_STOPPED")]
        if len(cut):
            print(f"== {len(cut)} ticket-finding trial(s) stopped by the scheduler before their ticket was made "
                  "(no ticket); their mask-training state stays in the store's partial/ and resumes if run again")
    paused = int((df["status"] == "PAUSED").sum()) if n else 0
    if paused:
        print(f"== {paused} trial(s) interrupted part-way (PAUSED, not a scheduler's decision): "
              f"`run_search.py resume {exp_dir}` continues them from their checkpoints")
    failed = df[df["status"] == "ERROR"] if n else df
    for _, row in failed.iterrows():
        print(f"!! trial {row['trial_id']} failed: {row['error']}")
    if df.attrs.get("kept"):
        print(f"!! results.parquet was kept: {df.attrs['kept']}; the experiment state in {exp_dir} may be "
              "damaged (this run's table is in results.partial.parquet)")
        return EXIT_INFRA
    return EXIT_FAILED if len(failed) else EXIT_INTERRUPTED if paused else EXIT_OK
