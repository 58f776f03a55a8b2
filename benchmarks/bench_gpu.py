"""Accelerator benchmark (issue 11): the project's own training loop and methods, timed side by side in one run.

1. Pre-training steps of a BERT-base-shaped model (bert-base-uncased's dimensions, random weights: speed does not
   depend on values) at 16 x 512: the dense MLM step (all weights train) vs TAMT-MLM, TAMT-KD, TAMT-MLM+KD steps
   (scores train; KD adds the dense teacher's forward), in bf16 and fp32; ms/step and ratios to the dense step.
2. MiniLM (the embedded model) fine-tuning steps/s at fixed 32 x 128 batches, and on the real polarity task with
   length-bucketed dynamic padding.
3. Packing: N fine-tuning processes sharing the device vs 1 (aggregate steps/s), as ``resources: {gpu: 1/N}`` runs
   them.

4. (issue 23) ``steps``: the project's fine-tuning step on a MiniLM-shaped model (random weights, 0.5 ticket baked),
   eager vs compiled (``torch.compile``, CUDA graphs), at a fixed 32 x 128 and on lengths like a GLUE task's
   (dynamic padding vs static shapes: widths multiples of 32, full batches).
5. (issue 23) ``padding``: the dynamic-padding experiment (eager). Hypothesis: a step over a new batch shape costs
   host work that a repeated shape does not (the caching allocator's new block sizes -> cudaMalloc, pinned host
   blocks of new sizes -> cudaHostAlloc, and HF's SDPA padding-mask check, a host sync per step when the mask has
   padding), so many shapes (one per distinct longest row) make a launch-bound step slower although it computes
   less. The part times fixed 32 x 128 / fixed 32 x 128 with a padding mask / dynamic / static widths and counts,
   per step, the CUDA runtime calls (cudaMalloc, cudaFree, cudaHostAlloc, synchronizations, copies) and kernels.
   Static shapes fix it if the dynamic run's extra calls and time vanish in the static run.

Without a CUDA device it runs the same table on the CPU with a small model and short batches, and says so. Needs
torch and transformers only (no Ray, no ``datasets``: parts 2-3 are skipped without them, parts 1, 4, 5 use random
weights and a stand-in BERT vocabulary when the embedded tokenizer is not there).

    python benchmarks/bench_gpu.py [--device auto] [--steps 15] [--warmup 3] [--packed 4] [--seconds 30]
           [--tokenizer embedded-minilm] [--minilm embedded-minilm] [--only pretrain,finetune,packed,steps,padding]
           [--no-compile] [--out FILE.md] [--json FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from readme_section import Recorder  # noqa: E402
from gpu_steps import MINILM, bench_padding, bench_steps, stand_in_tokenizer  # noqa: E402

from sparsebert.models.loading import PretrainingModel, load_tokenizer  # noqa: E402
from sparsebert.text.batching import mlm_batch, mlm_positions_cap, step_generator  # noqa: E402
from sparsebert.models.objectives import mlm_loss_at  # noqa: E402
from sparsebert.engine.runtime import Runtime, RuntimeConfig, resolve_runtime  # noqa: E402
from sparsebert.tickets.tamt import TAMT, TAMTSpec  # noqa: E402
from sparsebert.transfer.task_tensors import TaskTensors  # noqa: E402
from sparsebert.engine.training import RecipeDefaults, TrainConfig, train  # noqa: E402

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
CPU_SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def random_bert(shape: dict, seed: int = 0) -> PretrainingModel:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, **shape)
    base, head = BertModel(cfg, add_pooling_layer=True), BertForMaskedLM(cfg).cls
    head.predictions.decoder.weight = base.embeddings.word_embeddings.weight
    return PretrainingModel(base, head, head_pretrained=True)


class DenseMLM(RecipeDefaults):
    """The dense baseline: every weight trains on the MLM loss (the step TAMT is compared with)."""

    def __init__(self, model, tok, blocks, batch_size, runtime):
        self.model, self.tok, self.blocks, self.bs, self.runtime = model.to(runtime.device), tok, blocks, batch_size, runtime
        for p in model.parameters():
            p.requires_grad_(True)
        self.step_model = runtime.compiled(self.model)

    def parameters(self):
        return list(dict.fromkeys(self.model.parameters()))

    def models(self):
        return [self.model]


    def batches(self, start):
        step = start
        while True:
            i = (step * self.bs) % (len(self.blocks) - self.bs + 1)
            ids = self.blocks[i:i + self.bs]
            cap = mlm_positions_cap(*ids.shape) if self.runtime.static_shapes else 0
            yield mlm_batch(ids, self.tok, step_generator(0, step), positions_to=cap)
            step += 1

    def loss(self, b, step):
        self.runtime.mark_step()
        out = self.step_model(b["input_ids"])
        return mlm_loss_at(self.model, out.last_hidden_state, b["positions"], b["targets"]), {}






def time_method(method, rt: Runtime, steps: int, warmup: int) -> float:
    """Median ms/step of the project's training loop over ``steps`` timed steps after ``warmup``."""
    stamps: list[float] = []

    def on_step(step: int) -> None:
        rt.synchronize()
        stamps.append(time.perf_counter())

    train(method, TrainConfig(steps=warmup + steps, lr=1e-4, eval_every=0, log_every=0), on_step=on_step,
          log=lambda m: None)
    d = sorted(b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:]))
    return 1000 * d[len(d) // 2]


def bench_pretrain(args, device: torch.device, shape: dict, batch: int, seq: int) -> list[dict]:
    tok = stand_in_tokenizer(args.tokenizer)
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(1000, 30000, (batch * 4, seq), generator=g)
    blocks[:, 0], blocks[:, -1] = tok.cls_token_id, tok.sep_token_id
    rows = []
    for precision in ("bf16", "fp32"):
        rt = Runtime(device, {"bf16": torch.bfloat16, "fp32": torch.float32}[precision])
        if device.type == "cuda" and precision == "fp32":
            torch.set_float32_matmul_precision("high")
        dense = time_method(DenseMLM(random_bert(shape), tok, blocks, batch, rt), rt, args.steps, args.warmup)
        rows.append({"precision": precision, "step": "dense MLM", "ms": dense, "ratio": 1.0})
        for obj, label in (("mlm", "TAMT-MLM"), ("kd", "TAMT-KD"), ("mlm_kd", "TAMT-MLM+KD")):
            spec = TAMTSpec(model="bench", sparsity=0.7, objective=obj, batch_size=batch)
            m = TAMT(random_bert(shape), spec, tok, blocks, blocks[:1], runtime=rt)
            ms = time_method(m, rt, args.steps, args.warmup)
            rows.append({"precision": precision, "step": label, "ms": ms, "ratio": ms / dense})
            del m
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if precision == "bf16" and not args.no_compile:  # issue 23: compiled steps (static MLM position count)
            crt = Runtime(device, torch.bfloat16, compile=True)
            for label, make in (("dense MLM", lambda: DenseMLM(random_bert(shape), tok, blocks, batch, crt)),
                                ("TAMT-MLM", lambda: _tamt(shape, "mlm", batch, tok, blocks, crt)),
                                ("TAMT-KD", lambda: _tamt(shape, "kd", batch, tok, blocks, crt))):
                row = {"precision": "bf16 compiled", "step": label}
                try:
                    row["ms"] = time_method(make(), crt, args.steps, args.warmup + 5)
                    row["ratio"] = row["ms"] / dense
                except Exception as e:  # noqa: BLE001  (reported; the other variants still run)
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                torch._dynamo.reset()
    return rows


def _tamt(shape, obj, batch, tok, blocks, rt):
    spec = TAMTSpec(model="bench", sparsity=0.7, objective=obj, batch_size=batch)
    return TAMT(random_bert(shape), spec, tok, blocks, blocks[:1], runtime=rt)


def finetune_worker(args) -> dict:
    """One fine-tuning process (also the unit of the packing test): steps/s over ``--seconds`` after warm-up."""
    from sparsebert.transfer.finetune import FineTune, FinetuneConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rt = resolve_runtime(RuntimeConfig(device=args.device, precision=args.precision))
    tok = load_tokenizer(args.minilm)
    ft = FineTune(args.minilm, FinetuneConfig(task="polarity", batch_size=args.ft_batch, max_length=args.ft_seq,
                                              max_eval_examples=32), tok, runtime=rt)
    out = {"device": str(rt.device), "precision": rt.precision}
    real = ft.train_t
    n = len(real)
    fixed = TaskTensors({"input_ids": torch.randint(1000, 30000, (n, args.ft_seq)),
                         "attention_mask": torch.ones(n, args.ft_seq, dtype=torch.long)},
                        torch.full((n,), args.ft_seq), {"labels": real.targets["labels"]})
    for name, data in (("fixed", fixed), ("polarity", real)):
        ft.train_t = data
        stamps: list[float] = []

        def on_step(step, stamps=stamps):
            if step % 10 == 0:
                rt.synchronize()
                stamps.append(time.perf_counter())
                if stamps[-1] - stamps[0] > args.seconds:
                    raise StopIteration

        try:
            train(ft, TrainConfig(steps=10**7, lr=2e-5, eval_every=0, log_every=0), on_step=on_step,
                  log=lambda m: None)
        except StopIteration:
            pass
        s = stamps[1:] if len(stamps) > 2 else stamps
        out[f"{name}_steps_per_s"] = 10 * (len(s) - 1) / max(s[-1] - s[0], 1e-9)
    out["polarity_padding"] = real.padding_fraction(
        __import__("sparsebert.transfer.task_tensors", fromlist=["epoch_batches"]).epoch_batches(real.lengths, args.ft_batch,
                                                                                         0, 0))
    return out


def bench_packed(args, n: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--device", args.device, "--precision", args.precision,
           "--seconds", str(args.seconds), "--minilm", args.minilm, "--ft-batch", str(args.ft_batch),
           "--ft-seq", str(args.ft_seq)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for k in (1, n):
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(k)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        results[k] = sum(o["fixed_steps_per_s"] for o in outs)
    return {"one": results[1], "packed": results[n], "n": n, "ratio": results[n] / results[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="fine-tuning precision (pre-training runs bf16 and fp32)")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per pre-training variant (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--packed", type=int, default=4, help="processes sharing the device in the packing test")
    ap.add_argument("--seconds", type=float, default=30, help="timed seconds per fine-tuning measurement")
    ap.add_argument("--tokenizer", default="embedded-minilm", help="bert-base-uncased vocabulary (MiniLM's)")
    ap.add_argument("--minilm", default="embedded-minilm", help="the MiniLM to fine-tune (name or local dir)")
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--ft-seq", type=int, default=128)
    ap.add_argument("--only", default="pretrain,finetune,packed,steps,padding")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    ap.add_argument("--ft-steps", type=int, default=200, help="timed steps per variant of parts steps/padding")
    ap.add_argument("--json", default=None, help="also write every part's numbers here (rewritten after each)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="also write the table to this file (for readme_section.py)")
    args = ap.parse_args()
    rec = Recorder()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        sys.stdout.write(json.dumps(finetune_worker(args)) + "\n")
        return
    rt = resolve_runtime(RuntimeConfig(device=args.device))
    gpu = rt.device.type == "cuda"
    torch.set_num_threads(1 if not gpu else torch.get_num_threads())
    if gpu:
        shape, batch, seq = BERT_BASE, 16, 512
        rec(f"device: {rt.describe()}; BERT-base shape at {batch} x {seq}")
    else:
        shape, batch, seq = CPU_SHAPE, 8, 128
        args.steps, args.warmup = min(args.steps, 4), min(args.warmup, 1)
        rec(f"device: {rt.describe()} -- NO CUDA DEVICE: a small model ({shape['num_hidden_layers']} layers, hidden "
              f"{shape['hidden_size']}) at {batch} x {seq}, one thread; the targets are GPU figures")
    parts = args.only.split(",")
    result: dict = {"device": rt.describe(), "argv": sys.argv[1:]}
    try:
        import datasets  # noqa: F401  (parts finetune/packed tokenize the polarity task with it)
        load_tokenizer(args.minilm)
    except Exception as e:  # noqa: BLE001
        skipped = [p for p in ("finetune", "packed") if p in parts]
        if skipped:
            rec(f"skipped {', '.join(skipped)}: {type(e).__name__}: {e} (they need datasets and the embedded MiniLM)")
        parts = [p for p in parts if p not in skipped]
    ft_shape, ft_batch, ft_seq = (MINILM, args.ft_batch, args.ft_seq) if gpu else (CPU_SHAPE, 8, 64)
    if "steps" in parts:
        rows_ = bench_steps(args, rt, ft_batch, ft_seq, ft_shape)
        rec(f"\nfine-tuning steps ({rt.describe()}, MiniLM shape, random weights, baked 0.5 ticket, "
            f"{ft_batch} x {ft_seq}):")
        for r in rows_:
            rec(f"  {r['variant']:<20}{'compiled' if r['compiled'] else 'eager':<10}" +
                (f"{r['steps_per_s']:>8.1f} steps/s (warm-up {r['warmup_s']:.0f} s)" if "error" not in r
                 else f"failed: {r['error']}"))
        rec("targets: >= 300 steps/s compiled, >= 100 eager at 32 x 128 bf16; GLUE-like lengths at least as fast")
        result["steps"] = rows_
        write_json(args.json, result)
        rec.write(args.out, rt.describe())
    if "padding" in parts:
        rows_ = bench_padding(args, rt, ft_batch, ft_seq, ft_shape)
        rec(f"\ndynamic-padding experiment (eager; CUDA runtime calls per step):")
        for r in rows_:
            rec(f"  {r['variant']:<22}" + (f"{r['steps_per_s']:>8.1f} steps/s  {r['shapes']:>3} shapes  "
                                           f"{r['per_step']}" if "error" not in r else f"failed: {r['error']}"))
        result["padding"] = rows_
        write_json(args.json, result)
        rec.write(args.out, rt.describe())
    if "pretrain" in parts:
        rows = bench_pretrain(args, rt.device, shape, batch, seq)
        rec(f"\n{'precision':<10}{'step':<14}{'ms/step':>10}{'x dense':>10}")
        for r in rows:
            if "error" in r:
                rec(f"{r['precision']:<10}{r['step']:<14}  failed: {r['error']}")
            else:
                rec(f"{r['precision']:<10}{r['step']:<14}{r['ms']:>10.1f}{r['ratio']:>10.2f}")
        result["pretrain"] = rows
        write_json(args.json, result)
        rec("targets (bf16, BERT-base, 16 x 512): TAMT-KD <= 1.30x dense, TAMT-MLM <= 1.15x")
        rec.write(args.out, rt.describe())  # after each part: a run cut short keeps what it measured
    if "finetune" in parts:
        out = finetune_worker(args)
        rec(f"\nMiniLM fine-tuning ({out['device']}, {out['precision']}): {out['fixed_steps_per_s']:.1f} steps/s at "
              f"{args.ft_batch} x {args.ft_seq}; {out['polarity_steps_per_s']:.1f} steps/s on polarity with "
              f"length-bucketed dynamic padding ({100 * out['polarity_padding']:.1f} % padding)")
        rec("target: >= 100 steps/s at 32 x 128 bf16 on an H100-class GPU")
        result["finetune"] = out
        write_json(args.json, result)
        rec.write(args.out, rt.describe())
    if "packed" in parts:
        n = args.packed if gpu else 2
        p = bench_packed(args, n)
        rec(f"\npacking: {n} processes {p['packed']:.1f} steps/s aggregate vs 1 process {p['one']:.1f}: "
              f"{p['ratio']:.2f}x" + ("" if gpu else " (CPU: one thread each, as many processes as cores)"))
        rec("target: 4 packed trials >= 2.5x one (GPU)")
        result["packed"] = p
        write_json(args.json, result)
    rec.write(args.out, rt.describe())


def write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
