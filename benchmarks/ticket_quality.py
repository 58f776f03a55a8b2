"""Pre-training quality of every kind of ticket on the embedded model, at equal step budgets (issues 2 and 3).

For sparsity 0.5 and 0.7: held-out MLM loss (fitted head, fixed masking) and KD loss (vs the dense model) of
Dense, OMP, random, IMP, TAMT-MLM, TAMT-KD and TAMT-MLM+KD. IMP prunes 10 % every ``--interval`` steps (so 0.5 costs
5 intervals, 0.7 seven); each TAMT variant gets the same number of steps as IMP at that sparsity.

    python benchmarks/ticket_quality.py [--interval 20] [--batch 8] [--block 64] [--eval-blocks 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from sparsebert.tickets.finders import FinderSpec, finder_spec
from sparsebert.tickets.pipeline import EvalSpec, SharedText, TicketStore, evaluate_ticket


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded-minilm")
    ap.add_argument("--interval", type=int, default=20, help="IMP steps between prunings")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--eval-blocks", type=int, default=64)
    ap.add_argument("--tamt-lr", type=float, default=2e-3)
    ap.add_argument("--imp-lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=5e-5, help="TAMT-MLM head lr (the scores' lr is far higher)")
    ap.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--compare-reference", action="store_true",
                    help="also find and evaluate every ticket with preset: reference's knobs, side by side")
    ap.add_argument("--out", default=None, help="also write the table to this file (for readme_section.py)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    text = {"source": "embedded", "block_size": args.block}
    from search_spaces.presets import PRESETS

    ref = PRESETS["reference"]
    configs = {"ours": ({}, EvalSpec(eval_blocks=args.eval_blocks, text=text))}
    if args.compare_reference:
        configs["reference"] = (ref["ticket"], EvalSpec(eval_blocks=args.eval_blocks, text=text, **ref["eval"]))
    shared = SharedText()
    store = TicketStore(tempfile.mkdtemp(prefix="ticket-quality-"))
    quiet = lambda msg: None  # noqa: E731
    rows = []
    sparsities = [float(s) for s in args.sparsities.split(",")]

    only = set(filter(None, args.only.split(",")))

    def run(spec: FinderSpec, label: str):
        if only and label not in only:
            return
        for name, (knobs, es) in configs.items():
            s = finder_spec({**knobs, **{k: v for k, v in spec.canonical().items() if k not in ("method", "data_order")},
                             "method": spec.method.value}) if knobs else spec
            t0 = time.perf_counter()
            ticket, made = store.get_or_make(s, es, shared, log=quiet)
            # a ticket from the store (the same spec under both configs: Dense, OMP) is measured with this EvalSpec
            m = ticket.meta.metrics if made else evaluate_ticket(ticket, s, es, shared, log=quiet)
            rows.append((label + ("" if name == "ours" else " (ref)"), spec.sparsity, m["mlm_loss"], m["kd_loss"],
                         ticket.meta.steps, time.perf_counter() - t0, m.get("mlm_eval_s", 0) + m.get("kd_eval_s", 0)))
            print(f"  {label:<12} {name:<9} s={spec.sparsity}: mlm {m['mlm_loss']:.3f} kd {m['kd_loss']:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)

    base = dict(model=args.model, text=text, batch_size=args.batch, seed=0)
    run(finder_spec(dict(method="dense", sparsity=0.0, **base)), "Dense")
    # IMP first: one run to the highest sparsity stores every lower one as its own ticket
    imp = dict(method="imp", imp_interval=args.interval, lr=args.imp_lr, **base)
    run(finder_spec(dict(sparsity=max(sparsities), **imp)), "IMP")
    for s in sparsities:
        if s != max(sparsities):
            run(finder_spec(dict(sparsity=s, **imp)), "IMP")
        budget = round(s * 10) * args.interval
        run(finder_spec(dict(method="omp", sparsity=s, **base)), "OMP")
        run(finder_spec(dict(method="random", sparsity=s, **base)), "Random")
        for obj, label in (("mlm", "TAMT-MLM"), ("kd", "TAMT-KD"), ("mlm_kd", "TAMT-MLM+KD")):
            run(finder_spec(dict(method="tamt", objective=obj, sparsity=s, steps=budget, lr=args.tamt_lr,
                                 reset_every=10, head_lr=args.head_lr if obj != "kd" else None, **base)), label)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from readme_section import Recorder

    rec = Recorder()  # the table also goes to --out
    rec(f"\nmodel {args.model}, text block {args.block}, eval {args.eval_blocks} held-out blocks; "
          f"IMP interval {args.interval} (lr {args.imp_lr}), TAMT lr {args.tamt_lr} (head {args.head_lr}), "
          f"batch {args.batch}")
    rec(f"{'ticket':<19}{'sparsity':>9}{'MLM loss':>10}{'KD loss':>10}{'steps':>7}{'find+eval s':>13}{'eval s':>8}")
    for label, s, mlm, kd, steps, total, ev in sorted(rows, key=lambda r: (r[1], r[3])):
        rec(f"{label:<19}{s:>9.1f}{mlm:>10.3f}{kd:>10.4f}{steps:>7}{total:>13.1f}{ev:>8.1f}")
    if args.compare_reference:
        rec("(ref): preset reference -- dense MLM decoder in training and evaluation, tau 0.01 until the first "
              "reset, int(n*s), BertAdam, IMP pruning first without rewinding; MLM loss: seed 42, mean of batch "
              "means; KD loss: padding included")
    rec.write(args.out, "the CPU, one torch thread")


if __name__ == "__main__":
    main()
