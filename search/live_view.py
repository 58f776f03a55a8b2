"""The console during a Ray Tune run: one compact table a person can read, instead of Tune's per-trial boxes.

Every ``every_s`` seconds (and when a trial ends) the view prints a header with the sweep's progress and ETA and one
row per running trial, then the trials that ended since the last print:

    == 12/28 trials ended (9 finished, 2 stopped early, 1 failed), 4 running, 12 pending · 4.1 min · ETA ~6 min
    trial                         phase        step        score    best     status
    TAMT-KD_s0.7_polarity_00003   fine-tune    40/60       0.7125   0.7450   RUNNING
    OMP_s0.5_polarity_00001       -            -           -        -        RUNNING (finding its ticket or starting)

Phases: ``find`` (a finder trial training its mask), ``fine-tune`` (a transfer trial), ``evaluate``; a trial that
has not reported yet is starting or finding its ticket. The ETA extrapolates the fraction done (ended trials plus
the running ones' step/total) over the elapsed time. Every trial's full log stays in ``<trial dir>/log.txt``;
``run_search.py run --verbose`` restores Tune's own output and the trial logs on the console.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback

from .results import fmt_duration

PHASES = {"find": "find", "transfer": "fine-tune", "evaluate": "evaluate"}


def _fmt(v: Any, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


class LiveView(Callback):
    def __init__(self, metric: str, mode: str, every_s: float = 15.0, stream=None, max_rows: int = 20):
        self.metric, self.mode, self.every_s, self.max_rows = metric, mode, every_s, max_rows
        self.stream = stream  # None: sys.stdout at print time (Tune pickles its callbacks with the experiment)
        self.t0 = time.time()
        self.last_print = 0.0
        self.best: dict[str, float] = {}
        self.reported_end: set[str] = set()
        self.last_state: tuple = ()

    # ---- Tune hooks
    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if isinstance(v, (int, float)):
            old = self.best.get(trial.trial_id)
            better = old is None or (v > old if self.mode == "max" else v < old)
            self.best[trial.trial_id] = v if better else old

    def on_step_end(self, iteration, trials, **info):
        ended_now = [t for t in trials if self._ended(t) and t.trial_id not in self.reported_end]
        quiet = time.time() - self.last_print
        # nothing new (e.g. trials finding their tickets): repeat the view at most once a minute
        if ended_now or (quiet >= self.every_s and (self._state(trials) != self.last_state or quiet >= 60)):
            self.print(trials)

    def on_experiment_end(self, trials, **info):
        if any(t.trial_id not in self.reported_end for t in trials):
            self.print(trials, final=True)

    # ---- the view
    @staticmethod
    def _ended(t) -> bool:
        return t.status in ("TERMINATED", "ERROR")

    @staticmethod
    def _stopped_early(t) -> bool:
        r = t.last_result or {}
        total, step = r.get("total_steps"), r.get("step")
        return t.status == "TERMINATED" and total is not None and step is not None and step < total

    @staticmethod
    def _fraction(t) -> float:
        if t.status in ("TERMINATED", "ERROR"):
            return 1.0
        r = t.last_result or {}
        total, step = r.get("total_steps"), r.get("step")
        return min(1.0, step / total) if total and step is not None else 0.0

    def header(self, trials) -> str:
        n = len(trials)
        ended = [t for t in trials if self._ended(t)]
        failed = sum(t.status == "ERROR" for t in ended)
        stopped = sum(self._stopped_early(t) for t in ended)
        running = sum(t.status == "RUNNING" for t in trials)
        pending = sum(t.status in ("PENDING", "PAUSED") for t in trials)
        elapsed = time.time() - self.t0
        frac = sum(self._fraction(t) for t in trials) / max(n, 1)
        eta = f"ETA ~{fmt_duration(elapsed * (1 - frac) / frac)}" if 0 < frac < 1 else ("done" if frac >= 1 else "ETA -")
        parts = [f"{len(ended) - failed - stopped} finished"]
        if stopped:
            parts.append(f"{stopped} stopped early")
        if failed:
            parts.append(f"{failed} failed")
        return (f"== {len(ended)}/{n} trials ended ({', '.join(parts)}), {running} running, {pending} pending · "
                f"{fmt_duration(elapsed)} · {eta}")

    def row(self, t) -> str:
        r = t.last_result or {}
        name = str(t)[:34]
        status = "STOPPED EARLY" if self._stopped_early(t) else ("FAILED" if t.status == "ERROR" else t.status)
        if not r or not r.get("training_iteration"):
            return f"  {name:<34} {'-':<10} {'-':<11} {'-':<8} {'-':<8} {status}" + (
                " (finding its ticket or starting)" if t.status == "RUNNING" else "")
        phase = PHASES.get(r.get("stage"), r.get("stage") or "-")
        step = f"{r['step']}/{r['total_steps']}" if r.get("step") is not None and r.get("total_steps") else "-"
        return (f"  {name:<34} {phase:<10} {step:<11} {_fmt(r.get(self.metric)):<8} "
                f"{_fmt(self.best.get(t.trial_id)):<8} {status}")

    @staticmethod
    def _state(trials) -> tuple:
        return tuple((t.trial_id, t.status, (t.last_result or {}).get("training_iteration")) for t in trials)

    def print(self, trials, final: bool = False) -> None:
        self.last_print, self.last_state = time.time(), self._state(trials)
        lines = [self.header(trials)]
        show = [t for t in trials if t.status == "RUNNING"]
        ended_now = [t for t in trials if self._ended(t) and t.trial_id not in self.reported_end]
        if final:  # the summary table after the run lists every trial
            show, ended_now = [], []
        if show or ended_now:
            lines.append(f"  {'trial':<34} {'phase':<10} {'step':<11} {self.metric[:8]:<8} {'best':<8} status")
        for t in show[: self.max_rows]:
            lines.append(self.row(t))
        if len(show) > self.max_rows:
            lines.append(f"  … {len(show) - self.max_rows} more")
        for t in ended_now:
            lines.append(self.row(t))
        self.reported_end.update(t.trial_id for t in trials if self._ended(t))
        print("\n".join(lines), file=self.stream or sys.stdout, flush=True)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None}
