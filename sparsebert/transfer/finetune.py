"""Downstream transfer: fine-tune a model with a ticket's mask fixed (SPEC.md "Downstream transfer"), as a
:class:`~sparsebert.engine.training.Recipe` of the one training loop.

The ticket is baked into the weights (``mask_mode: baked``, :func:`~sparsebert.tickets.masking.bake_ticket`): pruned entries
of the stored weights are zeroed and their gradients zeroed after every backward (one batched multiply), so pruned
weights are exactly zero before and after every optimizer step (AdamW's update of a zero-gradient, zero-valued entry
is zero, decoupled weight decay included) and the model is a plain one (nothing per step in the forward; what
``torch.compile`` handles best). ``mask_mode: parametrized`` is the earlier path (the one mask mechanism's
parametrizations; the same losses). Surviving weights start from the pre-trained values. A
dense run is the same code with no ticket. The best dev score over evaluations is tracked (the reference reports
the best dev score).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification
from transformers import logging as hf_logging

from sparsebert.transfer import squad
from sparsebert.tickets.masking import GradMask, apply_masks, bake_ticket, unparametrized_state
from sparsebert.transfer.metrics import squad_metrics
from sparsebert.models.loading import TRUST_REMOTE_CODE, model_path
from sparsebert.engine.runtime import CPU, Runtime, Switch, prefetch, switch, to_cpu
from sparsebert.transfer.task_tensors import TaskTensors, eval_batches, eval_order, train_batches
from sparsebert.transfer.task_data import load_task
from sparsebert.transfer.task_tokenize import tokenize_task
from sparsebert.transfer.tasks import TaskSpec, compute_task_metrics, get_task, main_score
from sparsebert.tickets.ticket import Ticket
from sparsebert.engine.knobs import check_knobs, knob
from sparsebert.engine.training import TrainConfig


#: select_split -> the MNLI eval split it names
SELECT_SPLITS = {"matched": "validation_matched", "mismatched": "validation_mismatched"}
#: tasks the reference evaluates every 500 steps (its run_glue scripts' --logging_steps 500: the big GLUE tasks)
LARGE_GLUE_TASKS = ("mnli", "qqp", "qnli")


def auto_eval_every(task: str) -> int:
    """The reference's evaluation cadence for ``task`` (``eval_every: auto``): its scripts pass
    ``--logging_steps 500`` for MNLI (shell_scripts/run_glue/*/mnli.sh; QQP and QNLI are large like MNLI: 500
    too), 50 for the small GLUE tasks (cola/mrpc/rte/sst-2/sts-b.sh), 1000 for SQuAD (run_squad/*.sh)."""
    spec = get_task(task)
    if spec.kind == "span":
        return 1000
    return 500 if spec.name in LARGE_GLUE_TASKS else 50


def selection_score(task: str | TaskSpec, per_split: dict[str, dict[str, float]], select_split: str = "matched"
                    ) -> float:
    """The score that picks the best evaluation: the task's :func:`~sparsebert.transfer.tasks.main_score`, except that for
    MNLI ``select_split`` names the split (matched: ours, mismatched: the reference's code)."""
    spec = get_task(task)
    if spec.name == "mnli":
        split = SELECT_SPLITS[select_split]
        if split not in per_split:
            raise KeyError(f"mnli: select_split {select_split!r} needs the {split} split, have {sorted(per_split)}")
        return main_score(spec, per_split[split])
    return main_score(spec, per_split)


class MaskMode(str, enum.Enum):
    BAKED = "baked"
    PARAMETRIZED = "parametrized"


@dataclass
class FinetuneConfig:
    """Downstream task and data knobs (optimisation knobs live in TrainConfig)."""

    task: str = knob("polarity", "mnli qqp qnli sst2 cola stsb mrpc rte squad polarity")
    data_dir: str | None = knob(None, "local GLUE/SQuAD dir (None: hub / embedded)")
    max_length: int = knob(128, "max tokens (SQuAD: 384)", min=1)
    stride: int = knob(128, "SQuAD windows: tokens shared (overlap) or the step between window starts (step)", min=1)
    stride_mode: str = knob("overlap", "SQuAD: overlap (ours, HF's stride) | step (the reference's doc_stride)",
                            choices=squad.STRIDE_MODES)
    select_split: str = knob("matched", "MNLI: the dev split that picks the best evaluation (the reference's: "
                             "mismatched)", choices=tuple(SELECT_SPLITS))
    batch_size: int = knob(32, "train batch (reference 32; SQuAD 16)", min=1)
    eval_batch_size: int = knob(64, "evaluation batch", min=1)
    epochs: float = knob(3.0, "epochs over the train split (reference 3; SQuAD 2)", above=0)
    max_steps: int = knob(0, "if > 0, overrides epochs", min=0)
    subset_size: int | None = knob(None, "few-shot: seeded subset of the train split", min=1)
    max_eval_examples: int | None = knob(None, "first N of each eval split (smoke)", min=1)
    length_buckets: int = knob(50, "length bucketing: rows sorted by length in chunks of batch_size x N (1: off)",
                               min=1)
    mask_mode: MaskMode = knob(MaskMode.BAKED, "baked: zeros in the weights, pruned grads zeroed | parametrized")
    static_shapes: Switch = knob(Switch.AUTO, "batch widths rounded to pad_multiple, full last batches "
                                       "| auto: where the runtime compiles or is CUDA")
    pad_multiple: int = knob(32, "static shapes: batch widths are multiples of this", min=1)

    def __post_init__(self) -> None:
        get_task(self.task)  # unknown task -> ValueError listing the valid names
        self.static_shapes = switch(self.static_shapes, "static_shapes")
        check_knobs(self)
        self.mask_mode = MaskMode(self.mask_mode)


#: keys of a space's ``transfer`` section that are TrainConfig fields (the rest are FinetuneConfig's)
TRAIN_KEYS = {"lr", "weight_decay", "grad_clip", "warmup_steps", "schedule", "eval_every", "eval_at_end", "seed"}


def resolve_eval_every(value: Any, task: str) -> int:
    """A transfer section's ``eval_every``: an integer >= 0, or ``auto`` (:func:`auto_eval_every` of the task)."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return auto_eval_every(task)
        raise ValueError(f"eval_every must be an integer >= 0 or 'auto' (500 for mnli/qqp/qnli, 1000 for squad, "
                         f"50 otherwise), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"eval_every must be an integer >= 0 or 'auto', got {value!r}")
    return value


def split_transfer(config: dict[str, Any]):
    """``transfer`` section -> (FinetuneConfig, TrainConfig); ``eval_every: auto`` and values set per task
    (:mod:`sparsebert.transfer.per_task`) are resolved for the task."""
    from sparsebert.transfer.per_task import resolve_per_task

    t = dict(resolve_per_task(config.get("transfer")) or {})
    train_kw = {k: t.pop(k) for k in list(t) if k in TRAIN_KEYS}
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = set(t) - known
    if unknown:
        raise ValueError(f"unknown transfer keys {sorted(unknown)}")
    ft = FinetuneConfig(**t)
    if "eval_every" in train_kw:
        train_kw["eval_every"] = resolve_eval_every(train_kw["eval_every"], ft.task)
    return ft, TrainConfig(**train_kw)


class FineTune:
    keeps_best = True  # the Recipe protocol: evaluate(step, track_best=False) leaves the best score alone

    def __init__(
        self, model_name: str, cfg: FinetuneConfig, tokenizer, ticket: Ticket | None = None, seed: int = 0,
        datasets=None, runtime: Runtime = CPU,
    ):
        self.runtime = runtime
        self.spec: TaskSpec = get_task(cfg.task)
        self.cfg, self.tokenizer, self.seed, self.ticket = cfg, tokenizer, seed, ticket
        raw = datasets if datasets is not None else load_task(
            self.spec.name, cfg.data_dir, subset_size=cfg.subset_size, seed=seed,
            max_eval_examples=cfg.max_eval_examples,
        )
        self.raw = raw
        #: malformed rows dropped from the task's files (wrong column count, unknown label), all splits
        self.bad_rows = int(sum((getattr(raw, "bad_rows", None) or {}).values()))
        from datasets.utils import logging as datasets_logging  # here: the module imports without `datasets`

        datasets_logging.disable_progress_bar()
        tok = tokenize_task(self.spec, raw, tokenizer, max_length=cfg.max_length, stride=cfg.stride,
                            stride_mode=cfg.stride_mode)
        self.train_ds = tok[self.spec.train_split]
        self.eval_ds = {s: tok[s] for s in self.spec.eval_splits if s in tok}
        if not self.eval_ds:
            raise ValueError(f"{self.spec.name}: no evaluation split loaded")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_t = TaskTensors.from_dataset(self.train_ds, pad_id)
        self.eval_t = {s: TaskTensors.from_dataset(ds, pad_id) for s, ds in self.eval_ds.items()}
        torch.manual_seed(seed)  # the task head's initialisation
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            if self.spec.kind == "span":
                self.model = AutoModelForQuestionAnswering.from_pretrained(model_path(model_name),
                                                                           trust_remote_code=TRUST_REMOTE_CODE)
            else:
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    model_path(model_name), num_labels=self.spec.num_labels, trust_remote_code=TRUST_REMOTE_CODE
                )
        finally:
            hf_logging.set_verbosity(verbosity)
        if self.spec.kind != "span" and self.model.config.problem_type is None:
            # what HF's forward sets on its first call (a compiled step would otherwise compile its first shape twice)
            self.model.config.problem_type = ("regression" if self.spec.num_labels == 1
                                              else "single_label_classification")
        self.model.to(runtime.device)
        self.grad_mask: GradMask | None = None
        if ticket is not None and cfg.mask_mode is MaskMode.PARAMETRIZED:
            apply_masks(self.model, ticket, zero_pruned=True)
        elif ticket is not None:
            self.grad_mask = GradMask(bake_ticket(self.model, ticket))
        static = cfg.static_shapes
        self.static = static is Switch.TRUE or (static is Switch.AUTO and runtime.static_shapes)
        self.multiple = cfg.pad_multiple if self.static else 0
        self.step_model = runtime.compiled(self.model)  # the model itself unless the runtime compiles
        self.best: dict[str, Any] = {"best_score": -math.inf, "best_step": 0}

    def num_steps(self) -> int:
        if self.cfg.max_steps:
            return self.cfg.max_steps
        return int(math.ceil(len(self.train_ds) / self.cfg.batch_size) * self.cfg.epochs)

    # ---- Recipe protocol ----------------------------------------------------------------------------------------
    def parameters(self):
        if self.grad_mask is None:
            return list(self.model.parameters())
        # baked: in the parametrized model's order (a masked module lists its weight after its other parameters),
        # so an optimizer state written by either path loads into the other
        masked = {id(p) for p in self.grad_mask.params}
        out: dict[int, torch.nn.Parameter] = {}
        for mod in self.model.modules():
            own = [p for p in mod._parameters.values() if p is not None]
            for p in sorted(own, key=lambda p: id(p) in masked):
                out.setdefault(id(p), p)
        return list(out.values())

    def models(self):
        return [self.model]

    def schedule_steps(self):
        return None

    def batches(self, start_step: int):
        yield from train_batches(self.train_t, self.cfg.batch_size, self.seed, start_step, self.cfg.length_buckets,
                                 multiple=self.multiple, fill_last=self.static)

    def loss(self, batch, step):
        self.runtime.mark_step()
        return self.step_model(**batch).loss, {}

    def after_backward(self):
        """The baked ticket's pruned gradients zeroed (one batched multiply); nothing for a dense run."""
        if self.grad_mask is not None:
            self.grad_mask()

    def after_step(self, step):
        return False

    @torch.no_grad()
    def _predict(self, split: str):
        """Outputs of the model on every row of ``split``, in the split's order, on the CPU: logits [N, C], or
        for spans a list of (start, end) per-row arrays (each as wide as its batch)."""
        data, rt = self.eval_t[split], self.runtime
        self.model.eval()
        order = eval_order(data.lengths, self.cfg.eval_batch_size)
        outs = []
        batches = eval_batches(data, order, self.cfg.eval_batch_size, self.multiple)
        for idx, b in zip(order, prefetch(batches, rt)):
            with rt.autocast():
                out = self.model(**b)
            n = len(idx)  # rows past it pad a static-shape batch
            outs.append((out.start_logits[:n].float(), out.end_logits[:n].float()) if self.spec.kind == "span"
                        else out.logits[:n].float())
        if self.spec.kind == "span":  # rows back in order; positions past a row's batch width are padding anyway
            start, end = [None] * len(data), [None] * len(data)
            for idx, (s, e) in zip(order, outs):
                s, e = s.cpu().numpy(), e.cpu().numpy()
                for j, row in enumerate(idx.tolist()):
                    start[row], end[row] = s[j], e[j]
            return start, end
        logits = torch.cat(outs).cpu()
        return torch.empty_like(logits).index_copy_(0, torch.cat(order), logits).numpy()

    def evaluate(self, step: int, track_best: bool = True) -> dict[str, float]:
        """Metrics of every eval split; ``score`` is :func:`selection_score`. ``track_best=False`` (the loop's extra
        evaluation at an off-cadence last step under ``eval_at_end: false``): reported, but not a best candidate."""
        per_split: dict[str, dict[str, float]] = {}
        for split, ds in self.eval_ds.items():
            if self.spec.kind == "span":
                start, end = self._predict(split)
                preds = squad.postprocess_predictions(self.raw[split], ds, start, end)
                per_split[split] = squad_metrics(preds, self.raw[split])
            else:
                labels = self.eval_t[split].targets["labels"].numpy()
                per_split[split] = compute_task_metrics(self.spec.name, self._predict(split), labels)
        return self.record(step, per_split, track_best)

    def record(self, step: int, per_split: dict[str, dict[str, float]], track_best: bool = True
               ) -> dict[str, float]:
        """Flatten one evaluation's per-split metrics and update the best one (strictly better score)."""
        score = selection_score(self.spec, per_split, self.cfg.select_split)
        flat: dict[str, float] = {"score": score}
        for split, m in per_split.items():
            for k, v in m.items():
                flat[k if len(per_split) == 1 else f"{split}/{k}"] = v
        if track_best and score > self.best["best_score"]:
            self.best = {"best_score": score, "best_step": step, **{f"best/{k}": v for k, v in flat.items()}}
        return {**flat, **self.best}

    def state_dict(self) -> dict[str, Any]:
        return {"model": to_cpu(self.model.state_dict()), "best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model_state = state["model"]
        if self.cfg.mask_mode is MaskMode.BAKED:  # a checkpoint of the parametrized path resumes here too
            model_state = unparametrized_state(model_state)
        self.model.load_state_dict(model_state)
        self.best = dict(state["best"])
