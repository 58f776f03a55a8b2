"""One row per trial -- the results schema every consumer reads (``analysis`` reads these files) -- written as
``results.parquet`` + ``results.csv``, and the summary printed at the end of a run."""

from __future__ import annotations

import os
from pathlib import Path

from . import EXIT_FAILED, EXIT_OK

#: per-trial columns taken from the trial's last report (besides every numeric metric as ``metric/<name>``)
RESULT_COLUMNS = ("label", "ticket_id", "ticket_path", "mlm_loss", "kd_loss", "kd_loss_mse", "task", "score", "best_score",
                  "time_total_s", "training_iteration", "startup_s", "find_s", "ticket_made", "cached", "step",
                  "total_steps", "device", "precision")
TICKET_KEYS = ("model", "method", "init", "objective", "sparsity", "steps")


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
