"""Proxy-guided ticket search (issue 7): score every candidate by its pre-training loss, fine-tune only the best.

A space opts in with a top-level ``proxy:`` section (the fields of :class:`sparsebert.proxy.ProxyRule`), e.g.

    proxy: {rule: topk, metric: kd_loss, k: 1, by: sparsity}

and ``stage: transfer`` (its ``transfer`` section is what stage 2 runs). Then ``run_search.py run SPACE`` runs:

1. ``<name>-stage1``: the space's tickets (ticket x variants) through the **evaluate** trainable -- each ticket is
   found (or taken from the content-addressed store) and scored by its MLM and KD loss; no fine-tuning.
2. the rule on stage 1's results: ``topk`` keeps the k best per group; ``halving`` gives each ticket a step
   budget that follows its proxy rank (its ``transfer.max_steps``; 0 -> not fine-tuned).
3. ``<name>-stage2``: the **transfer** trainable on the selected tickets only (a Tune grid over the selected ticket
   dicts x the space's transfer section); their tickets come from the store for free.

Both Tune experiments live inside the experiment directory (``<storage>/<name>/<name>-stage1`` and ``-stage2``), so
``--overwrite`` clears them with it. Written there: ``results.parquet``/``.csv`` (one row per trial of both stages;
``stage`` is ``evaluate`` or ``transfer``; every row carries its ticket's ``proxy_value``, ``proxy_rank``,
``selected`` and ``budget``) and ``proxy_selection.csv`` (one row per candidate ticket). Exit codes as
run_search.py's. ``run_search.py resume`` does not apply to a proxy experiment: rerun it (``--overwrite``) with the
same ``--storage``/``--tickets`` -- every ticket found before is reused from the store.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from search_spaces.space import Space, SpaceError
from search_spaces.proxy_rules import check_space
from sparsebert.proxy import ProxyRule, select
from sparsebert.engine.fsutil import atomic_write

from . import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INFRA, EXIT_INTERRUPTED
from .results import results_frame, summarize
from .trial_list import ticket_config
from .resume_checks import is_uri
from .tuner import build_tuner, init_ray, shared_inputs

SELECTION_FILE = "proxy_selection.csv"
SELECTION_COLUMNS = ["ticket_id", "label", "method", "init", "objective", "steps", "sparsity", "ticket_seed",
                     "status", "mlm_loss", "kd_loss", "proxy_metric", "proxy_value", "proxy_rank", "selected", "budget",
                     "best_score", "ticket_config"]


class _BudgetOf:
    """``tune.sample_from``: the fine-tuning budget (transfer.max_steps) of the trial's ticket."""

    def __init__(self, budgets: dict[str, int]):
        self.budgets = budgets

    def __call__(self, spec) -> int:
        from sparsebert.tickets.finders import finder_spec

        return int(self.budgets[finder_spec(dict(spec.config["ticket"])).ticket_id])


def _ticket_dicts(grid) -> list[dict[str, Any]]:
    """The concrete ticket dict of every trial, in the result grid's (= results_frame's) order."""
    out = []
    for r in grid:
        cfg = r.config or {}
        out.append(ticket_config(cfg))
    return out


def _stage1_space(space: Space, rule: ProxyRule) -> Space:
    from search_spaces.space import ticket_points

    tune_cfg = {**space.tune, "metric": rule.metric, "mode": rule.mode, "scheduler": {"type": "fifo"}}
    s1 = dataclasses.replace(space, stage="evaluate", transfer={}, tune=tune_cfg)
    if ticket_points(s1) is not None:  # an explicit ticket grid: repeats would score the same tickets again
        s1.tune["num_samples"] = 1
    return s1


def _stage2_space(space: Space, rule: ProxyRule, selected: pd.DataFrame) -> Space:
    points = [json.loads(s) for s in selected["ticket_config"]]
    transfer = dict(space.transfer)
    if rule.rule == "halving":
        from ray import tune

        transfer["max_steps"] = tune.sample_from(_BudgetOf(dict(zip(selected["ticket_id"],
                                                                    selected["budget"].astype(int)))))
    tune_cfg = {**space.tune, "num_samples": space.tune["num_samples"]}
    return dataclasses.replace(space, stage="transfer", ticket={}, variants=points, transfer=transfer, tune=tune_cfg)


def _fit_stage(s, exp_dir: Path, stage_storage: str, stage_name: str, store_root: Path, shared, args):
    grid = build_tuner(s, exp_dir, stage_storage, stage_name, store_root, shared,
                  getattr(args, "max_concurrent", None)).fit()
    if grid.num_terminated + grid.num_errors < len(grid):
        # Tune catches Ctrl-C itself and returns the unfinished trials: a stage cut short must not go on
        raise _StageInterrupted(grid)
    return grid


class _StageInterrupted(KeyboardInterrupt):
    def __init__(self, grid):
        super().__init__()
        self.grid = grid


def _write(df: pd.DataFrame, exp_dir: Path, selection: pd.DataFrame | None) -> None:
    atomic_write(exp_dir / "results.parquet", lambda fh: df.to_parquet(fh, index=False))
    atomic_write(exp_dir / "results.csv", df.to_csv(index=False).encode("utf-8"))
    if selection is not None:
        sel = selection.assign(selected=selection["selected"].map({True: "yes", False: "no"}))
        sel[[c for c in SELECTION_COLUMNS if c in sel]].to_csv(exp_dir / SELECTION_FILE, index=False)


def _annotate(df: pd.DataFrame, selection: pd.DataFrame | None) -> pd.DataFrame:
    """Every trial row gets its ticket's proxy value, rank, selected flag and budget."""
    if selection is None or df.empty:
        return df
    cols = ["proxy_metric", "proxy_value", "proxy_rank", "selected", "budget"]
    info = selection.dropna(subset=["ticket_id"]).drop_duplicates("ticket_id").set_index("ticket_id")[cols]
    out = df.drop(columns=[c for c in cols if c in df]).join(info, on="ticket_id")
    out["proxy_rank"] = out["proxy_rank"].astype("Int64")
    out["selected"] = out["selected"].astype("boolean")
    return out


def _trial_seconds(df: pd.DataFrame) -> float:
    return float(pd.to_numeric(df.get("time_total_s"), errors="coerce").fillna(0).sum()) if len(df) else 0.0


def run_proxy_search(space: Space, args, exp_dir: Path, storage: str, name: str, store_root: Path) -> int:
    """Run the two-stage proxy-guided search of ``space`` (see the module docstring). ``args`` needs
    ``address``, ``cpus`` and ``max_concurrent`` (``run_search.py run``'s arguments; missing ones default to None).
    Returns the exit code."""
    try:
        rule = check_space(space)
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    exp_dir = Path(exp_dir)
    stage_storage = f"{storage.rstrip('/')}/{name}" if is_uri(storage) else str(exp_dir)
    n1, n2 = f"{name}-stage1", f"{name}-stage2"
    max_steps = space.transfer.get("max_steps")
    max_steps = max_steps if isinstance(max_steps, int) and max_steps > 0 else None
    frames: list[pd.DataFrame] = []
    selection = None
    t0 = time.time()
    walls: dict[str, float] = {}
    try:
        init_ray(getattr(args, "address", None), getattr(args, "cpus", None), getattr(args, "gpus", None))
        shared = shared_inputs(space)
        print(f"proxy search: stage 1 ({n1}) scores every candidate ticket by {rule.metric}; rule {rule.rule}")
        t1 = time.time()
        grid1 = _fit_stage(_stage1_space(space, rule), exp_dir, stage_storage, n1, store_root, shared, args)
        walls["stage 1"] = time.time() - t1
        df1 = results_frame(grid1, n1)
        df1["ticket_config"] = [json.dumps(d, sort_keys=True, default=str) for d in _ticket_dicts(grid1)]
        frames.append(df1)
        cands = df1[df1["ticket_id"].notna()].drop_duplicates("ticket_id").reset_index(drop=True)
        if cands.empty or pd.to_numeric(cands[rule.metric], errors="coerce").isna().all():
            print(f"error: no candidate ticket has a {rule.metric}: nothing to select (see {exp_dir})",
                  file=sys.stderr)
            _write(pd.concat(frames, ignore_index=True), exp_dir, None)
            return EXIT_FAILED
        selection = select(cands, rule, max_steps)
        chosen = selection[selection["selected"]]
        print(f"proxy search: {len(chosen)} of {len(selection)} candidates selected "
              f"({rule.rule}, {rule.metric} {rule.mode}, by {rule.by}); stage 2 ({n2}) fine-tunes them")
        t2 = time.time()
        grid2 = _fit_stage(_stage2_space(space, rule, chosen), exp_dir, stage_storage, n2, store_root, shared, args)
        walls["stage 2"] = time.time() - t2
        df2 = results_frame(grid2, n2)
        df2["ticket_config"] = [json.dumps(d, sort_keys=True, default=str) for d in _ticket_dicts(grid2)]
        frames.append(df2)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted: rerun with --overwrite (tickets found so far are reused from {store_root})",
              file=sys.stderr)
        if isinstance(e, _StageInterrupted):
            stage_name = n1 if selection is None else n2
            part = results_frame(e.grid, stage_name)
            part["ticket_config"] = [json.dumps(d, sort_keys=True, default=str) for d in _ticket_dicts(e.grid)]
            frames.append(part)
        if frames:
            _write(_annotate(pd.concat(frames, ignore_index=True), selection), exp_dir, selection)
        return EXIT_INTERRUPTED
    except Exception as e:  # Ray could not run a stage at all
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        if frames:
            _write(_annotate(pd.concat(frames, ignore_index=True), selection), exp_dir, selection)
        return EXIT_INFRA
    df = _annotate(pd.concat(frames, ignore_index=True), selection)
    scores = df2.groupby("ticket_id")["best_score"].max() if len(df2) and "best_score" in df2 else pd.Series()
    selection["best_score"] = selection["ticket_id"].map(scores)
    _write(df, exp_dir, selection)
    code = summarize(df, exp_dir, time.time() - t0)
    _print_summary(selection, df1, df2, walls, rule, exp_dir)
    return code


def _print_summary(selection, df1, df2, walls, rule, exp_dir) -> None:
    s1, s2 = _trial_seconds(df1), _trial_seconds(df2)
    print(f"\n== proxy search ({rule.rule}, {rule.metric}, by {rule.by}): {len(selection)} candidates, "
          f"{int(selection['selected'].sum())} selected, {len(df2)} fine-tuning trial(s)")
    print(f"== trial-seconds: stage 1 (find + score) {s1:.0f} s ({walls.get('stage 1', 0):.0f} s wall), "
          f"stage 2 (fine-tune) {s2:.0f} s ({walls.get('stage 2', 0):.0f} s wall), total {s1 + s2:.0f} s")
    cols = [c for c in ("label", "sparsity", "steps", "proxy_value", "proxy_rank", "selected", "budget", "best_score")
            if c in selection]
    sel = selection.assign(selected=selection["selected"].map({True: "yes", False: "no"}))
    if "ticket_config" in sel:  # TAMT lr: the knob the label does not show
        sel["lr"] = [json.loads(c).get("lr") if m == "tamt" else None
                     for c, m in zip(sel["ticket_config"], sel["method"])]
        cols.insert(3, "lr")
    print(sel[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"== selection: {exp_dir / SELECTION_FILE}")
