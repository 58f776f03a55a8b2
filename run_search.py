#!/usr/bin/env python
"""Lottery-ticket search for BERT on Ray Tune.

    run_search.py run SPACE [--smoke] [--storage DIR|URI] [--name NAME] [--address ADDR] [--cpus N] [--gpus N]
                      [--dry-run] [--executor ray|local [--workers N] [--shard K/N] [--exclude K=V,...]]
    run_search.py resume EXPERIMENT_DIR [--executor local ...]
                                               continue an interrupted experiment (errored trials retried)
    run_search.py report EXPERIMENT_DIR [--best-by KEY] [--group-by KEY]
                                               tables, correlations, figures, report.md; rows are keyed by
                                               every searched config value (KEY: e.g. transfer.lr)
    run_search.py list                         the search spaces shipped in search_spaces/
    run_search.py export TICKET [--store DIR] [--out DIR] [--overwrite]
                                               a ticket as a Hugging Face model dir (masks baked in)
    run_search.py tickets [STORE]              the tickets of a store (default results/) and who used them

SPACE is a YAML file or the name of one in search_spaces/ (e.g. `demo`). Tickets are content-addressed in
<tickets>/tickets/<id>/ (default: the storage dir), so no finder config is trained twice across experiments that
share it. Results: <storage>/<name>/results.parquet and .csv (one row per trial), written at the end of a run, on
resume, and on Ctrl-C.

Devices: a space's `device` (auto | cpu | cuda | cuda:N | mps) and `precision` (auto | fp32 | bf16 | fp16) say where
each trial computes; `resources: {gpu: 0.25}` packs four trials on one GPU. With auto, a trial that reserves a GPU
uses the one Ray made visible to it, in bf16 where the GPU supports it; otherwise the CPU in fp32.

Ray: without --address (or RAY_ADDRESS) a local Ray starts bound to loopback (127.0.0.1: no port open to other
machines) with token auth on (Ray's default; the token is ~/.ray/auth_token, created 0600 if missing; an explicit
RAY_AUTH_MODE / RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH is respected). Other local tools reach it at 127.0.0.1:PORT
with RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. With --address the cluster's own auth applies (start
clusters with RAY_AUTH_MODE=token and share one token file, see docs/clusters.md). Multi-node runs need --storage on a path
(or URI) every node can reach.

Executors: `ray` (default) runs the trials as a Ray Tune experiment (schedulers, searchers, clusters). `local` runs a
grid space's trials to the end in a pool of worker processes on this machine without importing Ray (a GPU box
without Ray; see search/local.py); `--shard K/N` runs one part, and `resume --executor local --shard ...` the next
part in the same directory. Both write the same results files.

Exit codes: 0 all trials finished; 1 some trials failed; 2 bad input (nothing was run or written);
3 Ray/infrastructure error; 130 interrupted (partial results written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK  # noqa: E402,F401


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray: a Ray Tune experiment (default); local: worker processes on this machine, no Ray "
                        "(grid spaces, fifo scheduler)")
    p.add_argument("--workers", type=int, default=None,
                   help="local executor: concurrent trials (default: CPUs / resources.cpu, capped at GPUs / "
                        "resources.gpu where trials reserve a GPU)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="local executor: run only the K-th of N parts (whole tickets per part)")
    p.add_argument("--exclude", action="append", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="local executor: leave out the trials matching every pair (e.g. transfer.task=sst2,"
                        "transfer.seed=2); repeatable; they stay pending for a later run")


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
    _executor_args(r)
    r.add_argument("--dry-run", action="store_true", help="validate and print the trial count; run nothing")
    r.add_argument("--verbose", action="store_true",
                   help="Tune's own console output and every trial's log lines, instead of the compact live view "
                        "(the logs are always in <experiment>/<trial>/log.txt)")
    r.add_argument("--overwrite", action="store_true", help="delete an existing experiment of the same name")
    r.add_argument("--no-shared-inputs", action="store_true",
                   help="let every trial tokenize its own text instead of receiving it through the object store "
                        "(for measuring start-up cost)")
    res = sub.add_parser("resume", help="resume an interrupted experiment")
    res.add_argument("experiment", help="the experiment directory (<storage>/<name>)")
    res.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    res.add_argument("--cpus", type=int, default=None)
    res.add_argument("--gpus", type=int, default=None)
    _executor_args(res)
    rep = sub.add_parser("report", help="write the analysis report of an experiment")
    rep.add_argument("experiment")
    rep.add_argument("--exclude-stopped", action="store_true",
                     help="leave out transfer trials the scheduler (ASHA) stopped early (default: keep and mark them)")
    rep.add_argument("--best-by", action="append", default=None, metavar="KEY",
                     help="a searched config key (e.g. transfer.lr or config/transfer.lr): per ticket and task, keep "
                          "only the trials of its value with the best mean score over seeds (default: every value "
                          "is its own row); repeatable")
    rep.add_argument("--group-by", action="append", default=None, metavar="KEY",
                     help="a searched config key: add a section of scores per value of KEY (per ticket and task, and "
                          "per task over tickets with the best value marked); repeatable")
    sub.add_parser("list", help="list the search spaces")
    ex = sub.add_parser("export", help="export a ticket as a Hugging Face model directory (masks baked in)")
    ex.add_argument("ticket", metavar="TICKET", help="ticket id in the store, or a ticket directory")
    ex.add_argument("--store", default="results", metavar="DIR", help="ticket store dir holding tickets/<id>/ (default results/)")
    ex.add_argument("--out", default=None, metavar="DIR", help="output directory (default exported/<id>)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    tk = sub.add_parser("tickets", help="list the tickets of a store and the experiments that used them")
    tk.add_argument("store", nargs="?", default="results", metavar="STORE", help="ticket store dir (default results/)")
    return p


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ["SPARSEBERT_VERBOSE"] = "1"
    from search import experiment

    return {"run": experiment.cmd_run, "resume": experiment.cmd_resume, "report": experiment.cmd_report,
            "list": experiment.cmd_list, "export": experiment.cmd_export,
            "tickets": experiment.cmd_tickets}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
