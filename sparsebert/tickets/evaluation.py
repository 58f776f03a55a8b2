"""Pre-training quality of a model or ticket (the proxy): MLM loss with a fixed masking seed, KD loss against the
dense teacher. Deterministic: the same model and data give identical numbers run to run."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from contextlib import contextmanager

import torch
from torch import nn

from sparsebert.models.objectives import kd_loss, kd_mse_loss, mlm_loss_at
from sparsebert.text.batching import mlm_targets
from sparsebert.engine.runtime import CPU, Runtime, prefetch

#: masking seed of every MLM evaluation (SPEC: "15 % masking with a fixed seed")
EVAL_MASK_SEED = 1234
#: evaluate_mlm settings of the reference's eval_mlm.py: transformers' set_seed(42) before the masking collator
#: (TrainingArguments.seed default 42), and Trainer._prediction_loop's eval_loss = np.mean of per-batch mean losses
REFERENCE_MLM_EVAL = {"seed": 42, "reduction": "batch_mean"}
#: evaluate_kd settings of the reference's eval_kd.py (do_eval): per-batch losses over all padded positions, averaged
#: over batches
REFERENCE_KD_EVAL = {"exclude_padding": False, "reduction": "batch_mean"}
MLM_REDUCTIONS = ("token", "batch_mean")
KD_REDUCTIONS = ("examples", "batch_mean")


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


def _split(chunk):
    """(input_ids, extra model kwargs) of an eval chunk: a block tensor or padded sequences."""
    if isinstance(chunk, torch.Tensor):
        return chunk, {}
    rows = chunk.rows() if hasattr(chunk, "rows") else {k: v.long() for k, v in chunk.items()}
    return rows.pop("input_ids"), rows


def _model_kwargs(model, extra: dict) -> dict:
    """The batch's attention_mask / token_type_ids, those ``model``'s forward accepts."""
    if not extra:
        return {}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {k: v for k, v in extra.items() if k == "attention_mask"}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(extra)
    return {k: v for k, v in extra.items() if k in params}


def _chunks(blocks, batch_size: int) -> list:
    if isinstance(blocks, Mapping):
        from sparsebert.text.kd_data import PaddedSequences

        blocks = PaddedSequences(dict(blocks))
    return [blocks[i : i + batch_size] for i in range(0, len(blocks), batch_size)]


def evaluate_mlm(
    model, blocks, tokenizer, batch_size: int = 16, seed: int = EVAL_MASK_SEED,
    mlm_probability: float = 0.15, runtime: Runtime = CPU, reduction: str = "token",
) -> dict[str, float]:
    """Mean cross-entropy over masked positions of ``blocks`` ([N, T] tensor, or padded KD sequences whose
    attention_mask is passed to the model; padding is never masked). Fixed masking drawn on the CPU from ``seed``
    (the same masks on every device). Sums stay on the device; one read at the end.

    ``reduction``: ``"token"`` (ours: every masked token weighs the same) or ``"batch_mean"`` (the reference's
    Trainer: the mean over batches of each batch's mean loss; batches without a masked token are skipped).
    :data:`REFERENCE_MLM_EVAL` holds the reference's settings."""
    from sparsebert.text.batching import MLMMasker, mask_tokens

    if reduction not in MLM_REDUCTIONS:
        raise ValueError(f"reduction must be one of {MLM_REDUCTIONS}, got {reduction!r}")
    g = torch.Generator().manual_seed(seed)
    total, count, t0 = torch.zeros((), device=runtime.device, dtype=torch.float64), 0, time.perf_counter()
    n_batches = 0
    masker = MLMMasker(tokenizer, mlm_probability)  # one collator and special-token tensor for every chunk
    with eval_mode(model):
        batches = []
        for chunk in _chunks(blocks, batch_size):
            ids, extra = _split(chunk)
            ids, labels = mask_tokens(ids, tokenizer, generator=g, masker=masker)
            positions, targets = mlm_targets(labels)
            count += len(targets)
            if reduction == "batch_mean" and len(targets) == 0:
                continue
            n_batches += 1
            batches.append({"input_ids": ids, "positions": positions, "targets": targets, **extra})
        for b in prefetch(iter(batches), runtime):
            kw = _model_kwargs(model, {k: v for k, v in b.items() if k not in ("input_ids", "positions", "targets")})
            with runtime.autocast():
                out = model(b["input_ids"], **kw)
                s = mlm_loss_at(model, out.last_hidden_state, b["positions"], b["targets"],
                                reduction="sum" if reduction == "token" else "mean")
            total += s.double()
    denom = count if reduction == "token" else n_batches
    return {"mlm_loss": float(total) / max(denom, 1), "mlm_tokens": count, "mlm_eval_s": time.perf_counter() - t0}


def evaluate_kd(student, teacher, blocks, batch_size: int = 16, runtime: Runtime = CPU,
                exclude_padding: bool = True, reduction: str = "examples") -> dict[str, float]:
    """KD losses of ``student`` against the dense ``teacher`` on ``blocks`` ([N, T] tensor, or padded KD sequences
    whose attention_mask (and token_type_ids) go to both models), over the layer outputs (embeddings excluded):

    * ``kd_loss_cos`` (ours, the training objective): mean over layers of the token mean of 1 - cosine;
    * ``kd_loss_mse`` (the reference's eval_kd.py ``full_mse``): mean over layers of the mean squared difference
      over tokens and hidden dims;
    * ``kd_loss``: the same number as ``kd_loss_cos`` (what most callers read).

    ``exclude_padding``: True (ours) averages over real tokens; False (the reference) over every position of the
    padded sequence (blocks have no padding: no difference). ``reduction``: ``"examples"`` (ours: per-batch losses
    weighted by batch size) or ``"batch_mean"`` (the reference: plain mean over batches).
    :data:`REFERENCE_KD_EVAL` holds the reference's settings."""
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KD_REDUCTIONS}, got {reduction!r}")
    dev = runtime.device
    cos, mse = torch.zeros((), device=dev, dtype=torch.float64), torch.zeros((), device=dev, dtype=torch.float64)
    n, t0 = 0, time.perf_counter()
    batches = []
    for chunk in _chunks(blocks, batch_size):
        ids, extra = _split(chunk)
        batches.append({"input_ids": ids, **extra})
    with eval_mode(student, teacher):
        for b in prefetch(iter(batches), runtime):
            ids = b["input_ids"]
            extra = {k: v for k, v in b.items() if k != "input_ids"}
            mask = extra.get("attention_mask") if exclude_padding else None
            kw_s, kw_t = _model_kwargs(student, extra), _model_kwargs(teacher, extra)
            kw = {k: v for k, v in kw_s.items() if k in kw_t}  # both models see the same inputs
            with runtime.autocast():
                hs = student(ids, output_hidden_states=True, **kw).hidden_states
                ht = teacher(ids, output_hidden_states=True, **kw).hidden_states
                w = len(ids) if reduction == "examples" else 1
                cos += kd_loss(hs, ht, mask).double() * w
                mse += kd_mse_loss(hs, ht, mask).double() * w
            n += w
    out_cos = float(cos) / max(n, 1)
    return {"kd_loss": out_cos, "kd_loss_cos": out_cos, "kd_loss_mse": float(mse) / max(n, 1),
            "kd_eval_s": time.perf_counter() - t0}
