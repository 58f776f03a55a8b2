"""The README's demo numbers, from a demo run's own files: run ``make demo``'s sweep, time it, write the section.

    python benchmarks/demo_readme.py [--storage results] [--no-run] [--tests-log LOG] [--readme README.md]

Runs ``run_search.py run demo --overwrite`` with a fresh ticket store (unless ``--no-run``: then the last timed run is used), records its wall
time and machine in ``<storage>/demo/demo_run.json``, and writes between ``<!-- generated:demo -->`` markers: the
command, the machine, the wall time, and one row per trial from ``results.parquet`` (MLM / KD loss, best score,
ASHA's stops, start-up and ticket-making seconds). ``--tests-log``: a pytest log whose last line is
``N passed in S s`` adds the suite's time on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from readme_section import update  # noqa: E402


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.python_implementation()} "
            f"{platform.python_version()}")


def run(storage: Path) -> dict:
    import tempfile

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="demo-tickets-") as fresh:  # every ticket made, as on a first run
        p = subprocess.run([sys.executable, str(REPO / "run_search.py"), "run", "demo", "--storage", str(storage),
                            "--name", "demo", "--overwrite", "--tickets", fresh], cwd=REPO)
    info = {"rc": p.returncode, "wall_s": time.time() - t0, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    (storage / "demo" / "demo_run.json").write_text(json.dumps(info, indent=1))
    return info


def tests_line(log: Path) -> str:
    m = re.search(r"(\d+) passed.* in ([\d.]+)s", log.read_text())
    if not m:
        raise SystemExit(f"{log}: no 'N passed in S s' line")
    return f"The test suite (`make test`'s pytest run): {m.group(1)} tests passed in {float(m.group(2)) / 60:.1f} min."


def section(exp: Path, info: dict, tests: str | None) -> str:
    df = pd.read_parquet(exp / "results.parquet")
    stopped = int((df["status"] == "EARLY_STOPPED").sum())
    rows = []
    for _, r in df.sort_values(["sparsity", "label"]).iterrows():
        status = {"EARLY_STOPPED": "stopped by ASHA", "TERMINATED": "finished"}.get(r["status"], r["status"])
        rows.append(f"| {r['label']} | {r['sparsity']:g} | {r['mlm_loss']:.3f} | {r['kd_loss']:.4f} | "
                    f"{r['best_score']:.3f} | {status} | {r['startup_s']:.1f} | {r['find_s']:.1f} |")
    out = [f"`make demo` (`run_search.py run demo`) on {info['machine']}, {info['date']}: {len(df)} trials in "
           f"{info['wall_s'] / 60:.1f} min wall with a fresh ticket store (every ticket made), Ray start and set-up "
           f"included; ASHA stopped {stopped} of them early, "
           "so their scores are lower bounds.", "",
           "| ticket | sparsity | MLM loss | KD loss | best polarity acc. | status | start-up s (ticket making included) | ticket making s |",
           "|---|---|---|---|---|---|---|---|", *rows]
    if tests:
        out += ["", tests]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default=str(REPO / "results"))
    ap.add_argument("--no-run", action="store_true", help="use the last timed run")
    ap.add_argument("--tests-log", default=None)
    ap.add_argument("--readme", default=str(REPO / "README.md"))
    args = ap.parse_args()
    storage = Path(args.storage).resolve()
    info = json.loads((storage / "demo" / "demo_run.json").read_text()) if args.no_run else run(storage)
    if info.get("rc") not in (0, None):
        raise SystemExit(f"the demo run failed (exit {info['rc']})")
    text = section(storage / "demo", info, tests_line(Path(args.tests_log)) if args.tests_log else None)
    print(text)
    update(Path(args.readme), "demo", text)


if __name__ == "__main__":
    main()
