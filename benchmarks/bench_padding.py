"""Fine-tuning input pipeline on the CPU (issue 11): time per epoch, side by side in one run, of

* ``before``: the previous pipeline -- per step ``Dataset.select`` + a dict comprehension + ``DataCollatorWithPadding``
  on random batches (padding to the longest row of the batch);
* ``plain``: the tensor pipeline, same random batches (``length_buckets: 1``): one index op and a slice per step;
* ``bucketed``: the tensor pipeline with length bucketing (``length_buckets: 50``, the default);
* ``padded128``: every batch padded to max_length 128 (what a fixed-shape pipeline does).

MiniLM (the embedded model), batch 32, max_length 128, one thread, real SST-2 / CoLA train files. Each variant times
``--steps`` optimizer steps (median step time, times steps per epoch), plus one pass over the dev split.

    python benchmarks/bench_padding.py [--glue ../shared/data/glue] [--tasks sst2,cola] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from readme_section import Recorder  # noqa: E402

from sparsebert.transfer.finetune import FineTune, FinetuneConfig  # noqa: E402
from sparsebert.models.loading import load_tokenizer  # noqa: E402
from sparsebert.transfer.task_tensors import epoch_batches, eval_order, batches_per_epoch  # noqa: E402


def old_batch(ds, idx, collate):
    rows = ds.select(idx)
    return collate([{k: v for k, v in r.items() if k not in ("example_id", "offset_mapping")} for r in rows])


def time_steps(ft: FineTune, batch_fn, n: int) -> float:
    opt = torch.optim.AdamW(ft.model.parameters(), lr=2e-5)
    ft.model.train()
    times = []
    for k in range(n + 2):
        t0 = time.perf_counter()
        batch = batch_fn(k)
        loss = ft.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def time_eval(ft: FineTune, batches) -> float:
    ft.model.eval()
    t0 = time.perf_counter()
    for b in batches:
        ft.model(**b)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glue", default=str(REPO.parent / "shared" / "data" / "glue"))
    ap.add_argument("--tasks", default="sst2,cola")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--model", default="embedded-minilm")
    ap.add_argument("--out", default=None, help="also write the table to this file (for readme_section.py)")
    args = ap.parse_args()
    out = Recorder()
    torch.set_num_threads(1)
    from transformers import DataCollatorWithPadding

    tok = load_tokenizer(args.model)
    collate = DataCollatorWithPadding(tok)
    out(f"MiniLM, batch 32, max_length 128, 1 thread, {args.steps} timed steps per variant\n")
    out(f"{'task':<6}{'variant':<11}{'ms/step':>9}{'padding':>9}{'epoch train':>13}{'dev pass':>10}{'speed-up':>10}")
    for task in args.tasks.split(","):
        ft = FineTune(args.model, FinetuneConfig(task=task, data_dir=args.glue, batch_size=32, max_length=128), tok)
        data, dev = ft.train_t, ft.eval_t["validation"]
        n_epoch = batches_per_epoch(len(data), 32)
        plain = epoch_batches(data.lengths, 32, 0, 0, buckets=1)
        bucketed = epoch_batches(data.lengths, 32, 0, 0, buckets=50)
        full = {k: torch.nn.functional.pad(v, (0, 128 - v.shape[1]), value=tok.pad_token_id if k == "input_ids"
                                           else 0) for k, v in data.inputs.items()}
        dev_plain = [dev.batch(torch.arange(i, min(i + 64, len(dev))), False) for i in range(0, len(dev), 64)]
        variants = {
            "before": (lambda k: old_batch(ft.train_ds, plain[k].tolist(), collate), plain,
                       [old_batch(ft.eval_ds["validation"], list(range(i, min(i + 64, len(dev)))), collate)
                        for i in range(0, len(dev), 64)]),
            "plain": (lambda k: data.batch(plain[k]), plain, dev_plain),
            "bucketed": (lambda k: data.batch(bucketed[k]), bucketed,
                         [dev.batch(i, False) for i in eval_order(dev.lengths, 64)]),
            "padded128": (lambda k: {**{c: v[plain[k]] for c, v in full.items()},
                                     **{c: v[plain[k]] for c, v in data.targets.items()}}, None, None),
        }
        base = None
        for name, (fn, batches, dev_batches) in variants.items():
            ms = time_steps(ft, fn, args.steps)
            pad = data.padding_fraction(batches) if batches is not None else 1 - float(data.lengths.float().mean()) / 128
            dev_s = time_eval(ft, dev_batches) if dev_batches is not None else float("nan")
            epoch = ms * n_epoch
            base = base or epoch
            out(f"{task:<6}{name:<11}{1000 * ms:>9.0f}{100 * pad:>8.1f}%{epoch:>12.0f}s{dev_s:>9.1f}s"
                  f"{base / epoch:>9.2f}x")
        out()
    out.write(args.out, "the CPU, one torch thread")


if __name__ == "__main__":
    main()
