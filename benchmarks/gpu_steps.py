"""Issue 23's parts of benchmarks/bench_gpu.py (``steps``, ``padding``): the project's fine-tuning step on a random
MiniLM-shaped classifier, eager vs compiled, fixed vs GLUE-like lengths (dynamic vs static shapes), and the
dynamic-padding experiment (CUDA runtime calls per step). torch and transformers only."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sparsebert.models.loading import load_tokenizer
from sparsebert.engine.runtime import Runtime
from sparsebert.transfer.task_tensors import TaskTensors
from sparsebert.engine.training import RecipeDefaults, TrainConfig, train

MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)

def stand_in_tokenizer(name: str):
    """The named tokenizer, or (not on this machine: the GPU box has no model cache) a BERT tokenizer over a stand-in
    30,522-entry vocabulary with BERT's special tokens (masking needs ids, not words)."""
    try:
        return load_tokenizer(name)
    except Exception:  # noqa: BLE001  (missing cache, no datasets, offline)
        import tempfile

        from transformers import BertTokenizerFast

        d = Path(tempfile.mkdtemp())
        words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        words += [f"w{i}" for i in range(30522 - len(words))]
        (d / "vocab.txt").write_text("\n".join(words) + "\n")
        return BertTokenizerFast(vocab_file=str(d / "vocab.txt"))


def glue_like_lengths(n: int, seed: int = 0, max_length: int = 128) -> torch.Tensor:
    """Row lengths shaped like a GLUE single-sentence task's (SST-2: median ~ 10 tokens, long tail to ~ 66)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.exp(torch.randn(n, generator=g) * 0.6 + 2.5) + 3).long().clamp(4, max_length)


class ClassifyStep(RecipeDefaults):
    """The project's fine-tuning step (``train()``, a baked 0.5 ticket, the runtime's compile) on a random
    MiniLM-shaped classifier over given rows: FineTune's step without its data loading (no ``datasets`` here)."""

    def __init__(self, data: TaskTensors, rt: Runtime, batch: int, static: bool, shape: dict = MINILM):
        from transformers import BertConfig, BertForSequenceClassification

        from sparsebert.tickets.masking import GradMask, bake_ticket
        from sparsebert.tickets.pruning import magnitude_masks
        from sparsebert.models.registry import prunable_weights

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2,
                         problem_type="single_label_classification", **shape)
        self.model = BertForSequenceClassification(cfg).to(rt.device)
        masks = magnitude_masks({k.removeprefix("bert."): w for k, w in prunable_weights(self.model).items()}, 0.5)
        self.grad_mask = GradMask(bake_ticket(self.model, masks))
        self.data, self.runtime, self.batch, self.static = data, rt, batch, static
        self.step_model = rt.compiled(self.model)

    def parameters(self):
        return list(self.model.parameters())

    def models(self):
        return [self.model]


    def batches(self, start):
        from sparsebert.transfer.task_tensors import train_batches

        return train_batches(self.data, self.batch, 0, start, 50, multiple=32 if self.static else 0,
                             fill_last=self.static)

    def loss(self, b, step):
        self.runtime.mark_step()
        return self.step_model(**b).loss, {}

    def after_backward(self):
        self.grad_mask()






def rows(n: int, lengths: torch.Tensor, seq: int, padding_mask: bool = False) -> TaskTensors:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (n, seq), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    if padding_mask:  # every row one padding token short: the mask has padding, the shape stays fixed
        mask[:, -1] = 0
    return TaskTensors({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)},
                       lengths, {"labels": torch.randint(0, 2, (n,), generator=g)})


def steps_per_s(method, rt: Runtime, steps: int, warmup: int) -> tuple[float, float]:
    """(steps/s over ``steps`` timed steps after ``warmup``, seconds of the warm-up (compiling included))."""
    stamps: list[float] = []

    def on_step(step: int) -> None:
        if step == warmup or step == warmup + steps:
            rt.synchronize()
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    train(method, TrainConfig(steps=warmup + steps, lr=2e-5, eval_every=0, log_every=0), on_step=on_step,
          log=lambda m: None)
    return steps / (stamps[1] - stamps[0]), stamps[0] - t0


def bench_steps(args, rt: Runtime, batch: int, seq: int, shape: dict) -> list[dict]:
    """Part 4: fine-tuning steps/s, eager vs compiled, fixed shape and GLUE-like lengths (dynamic vs static)."""
    n = batch * 400
    out = []
    variants = [("fixed", rows(n, torch.full((n,), seq), seq), False),
                ("glue-like dynamic", rows(n, glue_like_lengths(n, max_length=seq), seq), False),
                ("glue-like static", rows(n, glue_like_lengths(n, max_length=seq), seq), True)]
    for compiled in ([False] if args.no_compile else [False, True]):
        r = Runtime(rt.device, rt.dtype, compile=compiled)
        for name, data, static in variants:
            if compiled and not static and name != "fixed":
                continue  # a compiled step over dynamic widths compiles once per width: not a configuration we run
            row = {"variant": name, "compiled": compiled, "precision": r.precision}
            try:
                row["steps_per_s"], row["warmup_s"] = steps_per_s(ClassifyStep(data, r, batch, static, shape), r,
                                                                  args.ft_steps, args.warmup + (10 if compiled else 0))
            except Exception as e:  # noqa: BLE001  (a failing variant is reported, the others still run)
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            out.append(row)
            torch._dynamo.reset()
    return out


CUDA_CALLS = ("cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaStreamSynchronize", "cudaDeviceSynchronize",
              "cudaEventSynchronize", "cudaMemcpyAsync", "cudaLaunchKernel")


def bench_padding(args, rt: Runtime, batch: int, seq: int, shape: dict) -> list[dict]:
    """Part 5 (eager): steps/s and CUDA runtime calls per step, fixed vs padded-mask vs dynamic vs static."""
    from torch.profiler import ProfilerActivity, profile

    n = batch * 400
    lengths = glue_like_lengths(n, max_length=seq)
    variants = [("fixed", rows(n, torch.full((n,), seq), seq), False),
                ("fixed + padding mask", rows(n, torch.full((n,), seq), seq, padding_mask=True), False),
                ("dynamic", rows(n, lengths, seq), False), ("static (x32)", rows(n, lengths, seq), True)]
    out = []
    for name, data, static in variants:
        row: dict = {"variant": name}
        try:
            m = ClassifyStep(data, rt, batch, static, shape)
            row["steps_per_s"], _ = steps_per_s(m, rt, args.ft_steps, args.warmup)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device.type == "cuda" else [])
            k = 20
            with profile(activities=acts) as prof:
                train(m, TrainConfig(steps=k, lr=2e-5, eval_every=0, log_every=0), log=lambda x: None)
                rt.synchronize()
            counts: dict[str, int] = {}
            for e in prof.events():
                for c in CUDA_CALLS:
                    if e.name.startswith(c):
                        counts[c] = counts.get(c, 0) + 1
            row["per_step"] = {c: round(v / k, 2) for c, v in sorted(counts.items())}
            row["shapes"] = len({tuple(b["input_ids"].shape) for b, _ in zip(m.batches(0), range(400))})
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        out.append(row)
    return out

