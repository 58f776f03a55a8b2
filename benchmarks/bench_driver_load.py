"""Driver load of a long sweep of cheap trials (issue 15): does a 1,000-trial Ray Tune run finish on one machine, how
does the driver's memory grow with the number of finished trials, and what does Tune cost per trial?

The sweep: stage ``evaluate``, method ``omp``, a grid of ``--trials`` sparsities in [0.05, 0.95] (each a ticket of
its own) on the tiny smoke model (``search_spaces.smoke.smoke_model_dir()``: 2 layers, hidden 32), 2 validation
blocks of 32 tokens, FIFO, 4 concurrent trials of 1 CPU each on a local Ray with 4 logical CPUs. A trial makes the
OMP ticket (magnitude masks), stores it, measures its MLM/KD loss and reports once: nearly all of its wall time is
Ray Tune's own bookkeeping.

It runs ``run_search.main(["run", SPACE, ...])`` in this process, so this process *is* the driver; a thread samples
its RSS (psutil, every 0.5 s) with the number of finished trials, and the RSS of the local Ray's GCS server. A trial
counts as finished when its ticket is in the store (``<storage>/tickets/<id>/``, renamed into place after the ticket
was made and evaluated; the trial's one report follows within milliseconds): Tune's own ``result.json`` files reach
the storage dir only when the driver syncs them, at the end of a short run. Reported: RSS at the first sample with
>= 100 and >= N trials finished (and every 10 %), the growth per 100 trials between them, and the overhead per
trial (sweep wall time / trials). psutil is Ray's vendored copy (ray/thirdparty_files), not a project dependency.

    python benchmarks/bench_driver_load.py [--trials 1000] [--concurrent 4] [--keep DIR] [--out FILE]
                                           [--no-tune-metric-stats]

What grows (measured, tracemalloc in the driver + the diagnostic flag): the driver's RSS grows linearly with the
number of *trials* (~0.1 MiB each), not with the number of results: Tune keeps every Trial for the experiment
snapshot, resume and the ResultGrid, and per trial a fixed-size record of each numeric result key (max, min, avg,
last, last-5/last-10 averages and their two deques; ~28 keys here, the trial's numeric config values included) plus
its cached JSON state. ``--no-tune-metric-stats`` patches Tune's per-key statistics out of this driver (measurement
only, not a setting for real runs) to show their share. No Tune env knob changes it: TUNE_RESULT_BUFFER_LENGTH is
already 1 and only buffers several results of one running trial; an evaluate trial writes no checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from readme_section import Recorder  # noqa: E402


def build_space(path: Path, n: int, concurrent: int) -> Path:
    from search_spaces.smoke import smoke_model_dir

    grid = [round(0.05 + 0.9 * i / max(n - 1, 1), 6) for i in range(n)]
    assert len(set(grid)) == n
    space = {
        "description": f"bench_driver_load: {n} cheap OMP evaluate trials on the tiny smoke model",
        "stage": "evaluate",
        "model": str(smoke_model_dir()),
        "ticket": {"method": "omp", "sparsity": {"grid": grid},
                   "text": {"source": "embedded", "block_size": 32, "max_blocks": 16}},
        "eval": {"eval_blocks": 2, "batch_size": 2, "head_steps": 2},
        "tune": {"metric": "kd_loss", "mode": "min", "scheduler": "fifo", "searcher": "grid",
                 "max_concurrent": concurrent, "max_failures": 0},
        "resources": {"cpu": 1},
        "device": "cpu",
    }
    path.write_text(yaml.safe_dump(space))
    return path


class Sampler(threading.Thread):
    """(seconds, finished trials, driver RSS, GCS RSS) every ``every`` seconds until stopped."""

    def __init__(self, tickets: Path, every: float = 0.5):
        super().__init__(daemon=True)
        import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)
        import psutil

        self.psutil, self.me = psutil, psutil.Process()
        self.tickets, self.every = tickets, every
        self.rows: list[tuple[float, int, int, int]] = []
        self.gcs = None
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def finished(self) -> int:
        try:  # finished tickets: <id>/ (temp dirs, locks and corrupt ones moved aside all have a dot in the name)
            return sum(1 for e in os.scandir(self.tickets) if "." not in e.name and e.is_dir())
        except OSError:
            return 0

    def gcs_rss(self) -> int:
        if self.gcs is None:
            for c in self.me.children(recursive=False):
                try:
                    if c.name() == "gcs_server":
                        self.gcs = c
                except self.psutil.Error:
                    pass
        try:
            return self.gcs.memory_info().rss if self.gcs else 0
        except self.psutil.Error:
            return 0

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        self.rows.append((time.perf_counter() - self.t0, self.finished(), self.me.memory_info().rss, self.gcs_rss()))

    def at(self, n: int) -> tuple[float, int, int, int] | None:
        """The first sample with at least n trials finished."""
        return next((r for r in self.rows if r[1] >= n), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--keep", default=None, help="storage dir to keep (default: a temp dir, deleted)")
    ap.add_argument("--out", default=None, help="also write the table to this file (for readme_section.py)")
    ap.add_argument("--no-tune-metric-stats", action="store_true",
                    help="diagnostic: skip Tune's per-trial statistics of every numeric result key in this driver "
                         "(a patch of Tune internals; shows what reporting fewer numeric keys would save)")
    args = ap.parse_args()
    if args.no_tune_metric_stats:
        from ray.tune.trainable import metadata

        metadata._TrainingRunMetadata.update_metric = lambda self, *a, **k: None
    out = Recorder()

    import run_search

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_load"))
    root.mkdir(parents=True, exist_ok=True)
    space = build_space(root / "load.yaml", args.trials, args.concurrent)
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        # token auth stays on (init_ray's default), with a token of the benchmark's own rather than ~/.ray/auth_token
        import secrets

        token = root / "ray_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    sampler = Sampler(root / "storage" / "tickets")
    rss0 = sampler.me.memory_info().rss
    sampler.start()
    t0 = time.perf_counter()
    try:
        code = run_search.main(["run", str(space), "--storage", str(root / "storage"), "--name", "load",
                                "--cpus", str(args.concurrent), "--overwrite"])
    finally:
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        sampler.sample()
    import ray

    ray.shutdown()

    n_done = sampler.rows[-1][1]
    first = next((r for r in sampler.rows if r[1] >= 1), None)  # the sweep proper: from the first finished trial
    mib = 1 << 20
    out(f"bench_driver_load: {args.trials} OMP evaluate trials on the tiny smoke model, {args.concurrent} concurrent "
        f"on a local Ray with {args.concurrent} CPUs; run_search exit {code}; {n_done} trials finished")
    out(f"TUNE_RESULT_BUFFER_LENGTH={os.environ.get('TUNE_RESULT_BUFFER_LENGTH', '(unset)')}"
        + ("; Tune's per-key metric statistics patched out (diagnostic)" if args.no_tune_metric_stats else ""))
    out("")
    out(f"{'finished':>9} {'t (s)':>8} {'driver RSS (MiB)':>17} {'GCS RSS (MiB)':>14}")
    out(f"{'start':>9} {0:8.0f} {rss0 / mib:17.0f} {'':>14}")
    marks = sorted({1, 100, *[round(args.trials * k / 10) for k in range(1, 11)], args.trials})
    for m in marks:
        r = sampler.at(m)
        if r:
            out(f"{m:>9} {r[0]:8.0f} {r[2] / mib:17.0f} {r[3] / mib:14.0f}")
    peak = max(r[2] for r in sampler.rows)
    out(f"{'peak':>9} {'':>8} {peak / mib:17.0f} {max(r[3] for r in sampler.rows) / mib:14.0f}")
    out("")
    a, b = sampler.at(100), sampler.at(args.trials)
    if a and b and b[1] > a[1]:
        out(f"driver RSS at 100 finished: {a[2] / mib:.0f} MiB; at {b[1]}: {b[2] / mib:.0f} MiB; growth "
            f"{(b[2] - a[2]) / mib / (b[1] - a[1]) * 100:.1f} MiB per 100 trials "
            f"(GCS: {(b[3] - a[3]) / mib / (b[1] - a[1]) * 100:.1f} MiB per 100)")
    out(f"wall {wall:.0f} s for {n_done} trials: {wall / max(n_done, 1):.2f} s per trial end to end"
        + (f"; {(b[0] - first[0]) / max(b[1] - first[1], 1):.2f} s per trial in the sweep proper "
           f"(first to last finished trial, {args.concurrent} at a time)" if b and first else ""))
    out.write(args.out, "this machine's CPU")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if code == 0 and n_done >= args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
