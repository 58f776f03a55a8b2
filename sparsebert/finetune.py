"""Downstream transfer: fine-tune a model with a ticket's mask fixed (SPEC.md "Downstream transfer"), as a
:class:`~sparsebert.training.Method` of the one training loop.

The ticket is applied through the one mask mechanism with the pruned entries of the stored weights zeroed, so
pruned weights are exactly zero before and after every optimizer step (their gradient is masked to zero; AdamW's
update of a zero-gradient, zero-valued entry is zero); surviving weights start from the pre-trained values. A
dense run is the same code with no ticket. The best dev score over evaluations is tracked (the reference reports
the best dev score).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification
from datasets.utils import logging as datasets_logging
from transformers import logging as hf_logging

from . import squad
from .masking import apply_masks
from .metrics import compute_task_metrics, main_score, squad_metrics
from .models import resolve
from .tasks import TaskSpec, data_collator, get_task, load_task, tokenize_task
from .ticket import Ticket
from .training import TrainConfig


@dataclass
class FinetuneConfig:
    """Downstream task and data knobs (optimisation knobs live in TrainConfig)."""

    task: str = field(default="polarity", metadata={"help": "mnli qqp qnli sst2 cola stsb mrpc rte squad polarity"})
    data_dir: str | None = field(default=None, metadata={"help": "local GLUE/SQuAD dir (None: hub / embedded)"})
    max_length: int = field(default=128, metadata={"help": "max tokens (SQuAD: 384)"})
    stride: int = field(default=128, metadata={"help": "SQuAD window stride"})
    batch_size: int = field(default=32, metadata={"help": "train batch (reference 32; SQuAD 16)"})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch"})
    epochs: float = field(default=3.0, metadata={"help": "epochs over the train split (reference 3; SQuAD 2)"})
    max_steps: int = field(default=0, metadata={"help": "if > 0, overrides epochs"})
    subset_size: int | None = field(default=None, metadata={"help": "few-shot: seeded subset of the train split"})
    max_eval_examples: int | None = field(default=None, metadata={"help": "first N of each eval split (smoke)"})

    def __post_init__(self) -> None:
        get_task(self.task)  # unknown task -> ValueError listing the valid names


def paper_finetune(task: str) -> tuple[FinetuneConfig, TrainConfig]:
    """The reference fine-tuning protocol (SPEC.md)."""
    spec = get_task(task)
    if spec.kind == "span":
        return (FinetuneConfig(task=spec.name, max_length=384, stride=128, batch_size=16, epochs=2.0),
                TrainConfig(lr=3e-5, eval_every=1000, weight_decay=0.0, warmup_steps=0))
    return (FinetuneConfig(task=spec.name, max_length=128, batch_size=32, epochs=3.0),
            TrainConfig(lr=2e-5, eval_every=500 if spec.name == "mnli" else 50, weight_decay=0.0, warmup_steps=0))


def index_batches(n: int, batch_size: int, seed: int, start_step: int) -> Iterator[list[int]]:
    """Shuffled epochs of ``range(n)`` (epoch e permuted with seed + e); the batch at step k is a function of k."""
    per_epoch = math.ceil(n / batch_size)
    step = start_step
    while True:
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for p in range(pos, per_epoch):
            yield perm[p * batch_size : (p + 1) * batch_size]
            step += 1


class FineTune:
    def __init__(
        self, model_name: str, cfg: FinetuneConfig, tokenizer, ticket: Ticket | None = None, seed: int = 0,
        datasets=None,
    ):
        self.spec: TaskSpec = get_task(cfg.task)
        self.cfg, self.tokenizer, self.seed, self.ticket = cfg, tokenizer, seed, ticket
        raw = datasets if datasets is not None else load_task(
            self.spec.name, cfg.data_dir, subset_size=cfg.subset_size, seed=seed,
            max_eval_examples=cfg.max_eval_examples,
        )
        self.raw = raw
        datasets_logging.disable_progress_bar()
        tok = tokenize_task(self.spec, raw, tokenizer, max_length=cfg.max_length, stride=cfg.stride)
        self.train_ds = tok[self.spec.train_split]
        self.eval_ds = {s: tok[s] for s in self.spec.eval_splits if s in tok}
        if not self.eval_ds:
            raise ValueError(f"{self.spec.name}: no evaluation split loaded")
        self.collate = data_collator(tokenizer)
        torch.manual_seed(seed)  # the task head's initialisation
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            if self.spec.kind == "span":
                self.model = AutoModelForQuestionAnswering.from_pretrained(resolve(model_name))
            else:
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    resolve(model_name), num_labels=self.spec.num_labels
                )
        finally:
            hf_logging.set_verbosity(verbosity)
        if ticket is not None:
            apply_masks(self.model, ticket, zero_pruned=True)
        self.best: dict[str, Any] = {"best_score": -math.inf, "best_step": 0}

    def num_steps(self) -> int:
        if self.cfg.max_steps:
            return self.cfg.max_steps
        return int(math.ceil(len(self.train_ds) / self.cfg.batch_size) * self.cfg.epochs)

    # ---- Method protocol ----------------------------------------------------------------------------------------
    def parameters(self):
        return list(self.model.parameters())

    def models(self):
        return [self.model]

    def schedule_steps(self):
        return None

    def _batch(self, ds, idx: list[int]) -> dict[str, torch.Tensor]:
        rows = ds.select(idx) if len(idx) else ds
        feats = [{k: v for k, v in r.items() if k not in ("example_id", "offset_mapping")} for r in rows]
        return self.collate(feats)

    def batches(self, start_step: int):
        for idx in index_batches(len(self.train_ds), self.cfg.batch_size, self.seed, start_step):
            yield self._batch(self.train_ds, idx)

    def loss(self, batch, step):
        return self.model(**batch).loss, {}

    def after_step(self, step):
        return False

    @torch.no_grad()
    def _predict(self, ds):
        self.model.eval()
        outs = []
        for i in range(0, len(ds), self.cfg.eval_batch_size):
            b = self._batch(ds, list(range(i, min(i + self.cfg.eval_batch_size, len(ds)))))
            b.pop("labels", None)
            b.pop("start_positions", None)
            b.pop("end_positions", None)
            out = self.model(**b)
            if self.spec.kind == "span":
                outs.append((out.start_logits.numpy(), out.end_logits.numpy()))
            else:
                outs.append(out.logits.numpy())
        return outs

    def evaluate(self, step: int) -> dict[str, float]:
        per_split: dict[str, dict[str, float]] = {}
        for split, ds in self.eval_ds.items():
            outs = self._predict(ds)
            if self.spec.kind == "span":
                start = [row for s, _ in outs for row in s]
                end = [row for _, e in outs for row in e]
                preds = squad.postprocess_predictions(self.raw[split], ds, start, end)
                per_split[split] = squad_metrics(preds, self.raw[split])
            else:
                logits = np.concatenate(outs)
                per_split[split] = compute_task_metrics(self.spec.name, logits, np.asarray(ds["labels"]))
        score = main_score(self.spec.name, per_split)
        flat: dict[str, float] = {"score": score}
        for split, m in per_split.items():
            for k, v in m.items():
                flat[k if len(per_split) == 1 else f"{split}/{k}"] = v
        if score > self.best["best_score"]:
            self.best = {"best_score": score, "best_step": step, **{f"best/{k}": v for k, v in flat.items()}}
        return {**flat, **self.best}

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}, "best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.best = dict(state["best"])
