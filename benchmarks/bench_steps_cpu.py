"""Issue 23 on the CPU: what a training step costs the host, and how many batch shapes an epoch brings.

1. Steps of a tiny model with MiniLM's layout (6 layers, BERT vocabulary, hidden 32) at batch 4 x 16, where compute
   is negligible and a step's time is dispatch and Python: aten ops (counted by a TorchDispatchMode: one per kernel-level op) and median ms per
   step for a plain Hugging Face loop (AdamW foreach) and the project's fine-tuning step through ``train()``: dense,
   masked (a 0.5 ticket as parametrizations, the earlier path) and baked (the ticket's zeros in the weights, pruned
   gradients zeroed by one foreach multiply), eager and compiled (``torch.compile``, inductor on the CPU: compile
   time is reported apart).
2. Distinct batch shapes per epoch of SST-2 and CoLA (real GLUE train files, batch 32, max_length 128, length
   buckets 50): dynamic padding (before) vs static shapes (widths padded to multiples of 32, last batch filled).

    python benchmarks/bench_steps_cpu.py [--glue /work/shared/data/glue] [--steps 30] [--warmup 5]
           [--only steps,shapes] [--no-compile] [--out FILE.json]

``--out`` is rewritten after each part (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from readme_section import Recorder  # noqa: E402

from sparsebert.transfer.finetune import FineTune, FinetuneConfig  # noqa: E402
from sparsebert.models.loading import load_tokenizer, tiny_model_dir  # noqa: E402
from sparsebert.tickets.pruning import omp_ticket  # noqa: E402
from sparsebert.engine.runtime import Runtime  # noqa: E402
from sparsebert.transfer.task_tensors import TaskTensors, shape_count  # noqa: E402
from sparsebert.engine.training import TrainConfig, train  # noqa: E402

BATCH, SEQ = 4, 16
say = Recorder()  # print, kept for --md


def write(out: str | None, result: dict) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)


def count_aten(run) -> int:
    """aten ops dispatched while ``run()`` executes, counted by a TorchDispatchMode as each reaches the kernel level:
    on a GPU each is (at least) one launch. The count the issue's table was made with."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return Count.n


def fixed_data(n: int, labels: torch.Tensor) -> TaskTensors:
    g = torch.Generator().manual_seed(0)
    return TaskTensors({"input_ids": torch.randint(1000, 30000, (n, SEQ), generator=g),
                        "attention_mask": torch.ones(n, SEQ, dtype=torch.long)},
                       torch.full((n,), SEQ), {"labels": labels[:n] % 2})


def plain_loop(model_dir: str, compiled: bool, steps: int, warmup: int) -> dict:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.config.problem_type = "single_label_classification"
    model.train()
    step_model = torch.compile(model, dynamic=False) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, foreach=True)
    data = fixed_data(BATCH * (steps + warmup + 2), torch.arange(BATCH * (steps + warmup + 2)))

    def step(i: int) -> None:
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % len(data)
        loss = step_model(**data.batch(idx)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step(0)
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    stamps = []
    for i in range(steps):
        t = time.perf_counter()
        step(warmup + i)
        stamps.append(time.perf_counter() - t)
    ops = None if compiled else (count_aten(lambda: [step(i) for i in range(6)]) - count_aten(lambda: step(0))) // 5
    return {"ms": 1000 * sorted(stamps)[len(stamps) // 2], "aten_ops": ops, "first_step_s": first}


def project_step(model_dir: str, tok, glue: str, mask: str | None, compiled: bool, steps: int, warmup: int
                 ) -> dict:
    ticket = None
    if mask is not None:
        from transformers import AutoModel

        ticket = omp_ticket(AutoModel.from_pretrained(model_dir), model_dir, 0.5)
    rt = Runtime(torch.device("cpu"), torch.float32, compile=compiled)
    cfg = FinetuneConfig(task="sst2", data_dir=glue, subset_size=64, max_eval_examples=8, batch_size=BATCH,
                         max_length=SEQ, mask_mode=mask or "baked", static_shapes=True, pad_multiple=SEQ)
    ft = FineTune(model_dir, cfg, tok, ticket=ticket, runtime=rt)
    ft.train_t = fixed_data(BATCH * 64, ft.train_t.targets["labels"].repeat(8))
    stamps: list[float] = []

    def on_step(step: int) -> None:
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    train(ft, TrainConfig(steps=1, lr=2e-5, eval_every=0, log_every=0), log=lambda m: None)
    first = time.perf_counter() - t0
    train(ft, TrainConfig(steps=warmup + steps, lr=2e-5, eval_every=0, log_every=0), on_step=on_step,
          log=lambda m: None)
    d = sorted(b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:]))
    def run(n: int):  # aten ops of n steps through train(); the per-step count is the difference 6 - 1
        return lambda: train(ft, TrainConfig(steps=n, lr=2e-5, eval_every=0, log_every=0), log=lambda m: None)

    ops = None if compiled else (count_aten(run(6)) - count_aten(run(1))) // 5  # inductor kernels are no aten ops
    return {"ms": 1000 * d[len(d) // 2], "aten_ops": ops, "first_step_s": first}


def bench_steps(args, result: dict) -> None:
    tok = load_tokenizer("embedded-minilm")
    model_dir = str(tiny_model_dir(Path(tempfile.mkdtemp()) / "tiny6", "bert", hidden=32, layers=6, heads=2,
                                   intermediate=64))
    rows = result.setdefault("steps", [])
    modes = [False] + ([] if args.no_compile else [True])
    for compiled in modes:
        for name in ("plain HF loop", "project dense", "project masked", "project baked"):
            if name == "plain HF loop":
                r = plain_loop(model_dir, compiled, args.steps, args.warmup)
            else:
                mask = {"project dense": None, "project masked": "parametrized", "project baked": "baked"}[name]
                r = project_step(model_dir, tok, args.glue, mask, compiled, args.steps, args.warmup)
            rows.append({"step": name, "compiled": compiled, **r})
            ops = "n/a" if r["aten_ops"] is None else r["aten_ops"]
            say(f"{name:<16}{'compiled' if compiled else 'eager':<10}{ops:>8} aten ops"
                  f"{r['ms']:>9.2f} ms/step  (first step {r['first_step_s']:.1f} s)", flush=True)
            write(args.out, result)
            torch._dynamo.reset()


def bench_shapes(args, result: dict) -> None:
    tok = load_tokenizer("embedded-minilm")
    model_dir = str(tiny_model_dir(Path(tempfile.mkdtemp()) / "tiny", "bert"))
    out = result.setdefault("shapes", {})
    for task in ("sst2", "cola"):
        cfg = FinetuneConfig(task=task, data_dir=args.glue, batch_size=32, max_length=128, max_eval_examples=8)
        data = FineTune(model_dir, cfg, tok).train_t
        before = shape_count(data, 32)
        after = shape_count(data, 32, multiple=32, fill_last=True)
        out[task] = {"rows": len(data), "batches": -(-len(data) // 32), "before": before, "after": after}
        say(f"{task}: {len(data)} rows, {out[task]['batches']} batches/epoch: {before} distinct batch shapes "
              f"with dynamic padding, {after} with static shapes (multiples of 32, last batch filled)", flush=True)
        write(args.out, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glue", default=os.environ.get("SPARSEBERT_GLUE", str(REPO.parent / "shared/data/glue")),
                    help="the GLUE TSV folder (default: ../shared/data/glue)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default="steps,shapes")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants (slow to compile here)")
    ap.add_argument("--out", default=None, help="JSON results, rewritten after each part")
    ap.add_argument("--md", default=None, help="the printed table with where it ran (for readme_section.py)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 torch thread",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "model": "BERT 6 layers, vocab 30522, hidden 32, batch 4 x 16, fp32"}
    parts = args.only.split(",")
    if "steps" in parts:
        bench_steps(args, result)
    if "shapes" in parts:
        bench_shapes(args, result)
    write(args.out, result)
    say.write(args.md, "the CPU, one torch thread")


if __name__ == "__main__":
    main()
