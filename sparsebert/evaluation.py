"""Pre-training quality of a model or ticket (the proxy): MLM loss with a fixed masking seed, KD loss against the
dense teacher. Deterministic: the same model and data give identical numbers run to run."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import nn

from .objectives import kd_loss, mlm_loss_at, mlm_targets
from .runtime import CPU, Runtime, prefetch

#: masking seed of every MLM evaluation (SPEC: "15 % masking with a fixed seed")
EVAL_MASK_SEED = 1234


@contextmanager
def eval_mode(*models: nn.Module):
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was in zip(models, modes):
            m.train(was)


def evaluate_mlm(
    model, blocks: torch.Tensor, tokenizer, batch_size: int = 16, seed: int = EVAL_MASK_SEED,
    mlm_probability: float = 0.15, runtime: Runtime = CPU,
) -> dict[str, float]:
    """Token-weighted mean cross-entropy over masked positions of ``blocks`` [N, T] (fixed masking, drawn on the
    CPU: the same masks on every device). Sums stay on the device; one read at the end."""
    from .batching import mask_tokens

    g = torch.Generator().manual_seed(seed)
    total, count, t0 = torch.zeros((), device=runtime.device, dtype=torch.float64), 0, time.perf_counter()
    with eval_mode(model):
        batches = []
        for i in range(0, len(blocks), batch_size):
            ids, labels = mask_tokens(blocks[i : i + batch_size], tokenizer, generator=g, mlm_probability=mlm_probability)
            positions, targets = mlm_targets(labels)
            batches.append({"input_ids": ids, "positions": positions, "targets": targets})
            count += len(targets)
        for b in prefetch(iter(batches), runtime):
            with runtime.autocast():
                out = model(b["input_ids"])
                s = mlm_loss_at(model, out.last_hidden_state, b["positions"], b["targets"], reduction="sum")
            total += s.double()
    return {"mlm_loss": float(total) / max(count, 1), "mlm_tokens": count, "mlm_eval_s": time.perf_counter() - t0}


def evaluate_kd(student, teacher, blocks: torch.Tensor, batch_size: int = 16, runtime: Runtime = CPU
                ) -> dict[str, float]:
    """Mean KD loss (1 - cosine per layer and token) of ``student`` against the dense ``teacher`` on ``blocks``."""
    total, n, t0 = torch.zeros((), device=runtime.device, dtype=torch.float64), 0, time.perf_counter()
    chunks = [blocks[i : i + batch_size] for i in range(0, len(blocks), batch_size)]
    with eval_mode(student, teacher):
        for ids in prefetch(iter(chunks), runtime):
            with runtime.autocast():
                hs = student(ids, output_hidden_states=True).hidden_states
                ht = teacher(ids, output_hidden_states=True).hidden_states
                total += kd_loss(hs, ht).double() * len(ids)
            n += len(ids)
    return {"kd_loss": float(total) / max(n, 1), "kd_eval_s": time.perf_counter() - t0}
