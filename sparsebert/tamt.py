"""TAMT: task-agnostic mask training (SPEC.md "Mask training"), as a :class:`~sparsebert.training.Recipe`.

Pre-trained weights are frozen; each prunable matrix gets a score tensor S (a :class:`ScoreMask`), the forward uses
W * 1[S > tau] with a straight-through gradient to S. Init from the OMP or a random mask (kept 0.02, pruned 0,
tau 0.01). Sparsity is held exactly per matrix by resetting tau to the k-th smallest score every ``reset_every``
steps and before every save (the reference), or by an exact top-k binarizer every step.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.utils import parametrize

from .batching import pretraining_batches
from .evaluation import evaluate_kd, evaluate_mlm
from .masking import Binarizer, ScoreMask, apply_score_masks, current_masks
from .models import PretrainingModel
from .objectives import Objective, ObjectiveConfig, kd_loss, mlm_loss_at
from .pruning import check_sparsity, magnitude_masks, random_masks
from .registry import prunable_weights
from .runtime import CPU, Runtime, to_cpu
from .ticket import Method, Ticket, TicketMeta


class MaskInit(str, enum.Enum):
    OMP = "omp"
    RANDOM = "random"


@dataclass
class TAMTConfig:
    """Mask-training knobs. Paper preset: :func:`paper_tamt`."""

    sparsity: float = field(default=0.7, metadata={"help": "per-matrix sparsity of the ticket"})
    init: MaskInit = field(default=MaskInit.OMP, metadata={"help": "initial mask: omp | random"})
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    binarizer: Binarizer = field(
        default=Binarizer.THRESHOLD,
        metadata={"help": "threshold: 1[S>tau], tau reset every reset_every steps (reference) | topk: exact"},
    )
    reset_every: int = field(default=100, metadata={"help": "K: steps between threshold resets (ref 1000 MLM/100 KD)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step (reference 16)"})
    init_seed: int = field(default=0, metadata={"help": "seed of the random mask init"})
    save_at: tuple[int, ...] = field(default=(), metadata={"help": "steps at which to save a ticket (plus the end)"})
    eval_blocks: int = field(default=64, metadata={"help": "held-out blocks for the evaluation during training"})
    eval_batch_size: int = field(default=16, metadata={"help": "batch size of evaluation"})
    reset_at_init: bool = field(default=True, metadata={"help": (
        "reset tau to the k-th smallest score at init (ours: tau = 0, exact sparsity from step 1) | false: tau "
        "stays 0.01 until the first reset (the reference's code)")})
    count_rule: str = field(default="round", metadata={"help": (
        "pruned count per matrix at a threshold reset: round(n*s) (ours, every method) | floor: int(n*s) (the "
        "reference's TAMT)")})
    dense_decoder: bool = field(default=False, metadata={"help": (
        "the MLM decoder uses the dense pre-trained embedding (the reference's code) instead of the masked one")})
    teacher_train_mode: bool = field(default=False, metadata={"help": (
        "run the KD teacher in train mode, dropout on (the reference's code) instead of eval mode")})
    schedule_steps: int = field(default=0, metadata={"help": (
        "length of the linear LR decay (0: the run's last step; the reference decays over 2 epochs of its data)")})
    head_lr: float | None = field(default=None, metadata={
        "help": "lr of the MLM head in TAMT-MLM (None: the scores' lr, as the reference); short budgets that raise "
                "the scores' lr should keep the head's small, or the mask fits a head that evaluation does not use"})

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        self.init = MaskInit(self.init)
        if isinstance(self.objective, dict):
            self.objective = ObjectiveConfig(**self.objective)
        if self.binarizer not in [b.value for b in Binarizer]:
            raise ValueError(f"binarizer must be 'threshold' or 'topk', got {self.binarizer!r}")
        self.binarizer = Binarizer(self.binarizer)
        if self.reset_every < 1:
            raise ValueError("reset_every must be >= 1")
        self.save_at = tuple(sorted(int(s) for s in self.save_at))
        if self.count_rule not in ("round", "floor"):
            raise ValueError(f"count_rule must be 'round' or 'floor', got {self.count_rule!r}")


class TAMT:
    """The TAMT method for :func:`sparsebert.training.train`."""

    def __init__(
        self,
        model: PretrainingModel,
        cfg: TAMTConfig,
        tokenizer,
        train_blocks: torch.Tensor,
        eval_blocks: torch.Tensor,
        model_name: str,
        ticket_dir: str | Path | None = None,
        seed: int = 0,
        runtime: Runtime = CPU,
        on_snapshot=None,
    ):
        self.on_snapshot = on_snapshot  # (step, Ticket) for every save_at step: a sibling ticket, stored at once
        self.model, self.cfg, self.tokenizer, self.runtime = model, cfg, tokenizer, runtime
        self.train_blocks, self.eval_blocks = train_blocks, eval_blocks[: cfg.eval_blocks]
        self.model_name, self.seed = model_name, seed
        self.ticket_dir = Path(ticket_dir) if ticket_dir else None
        self.objective = cfg.objective.objective
        if self.objective.uses_mlm and not model.head_pretrained:
            raise ValueError("TAMT-MLM needs a pre-trained (or fitted) MLM head; see sparsebert.mlm_head")
        for p in model.parameters():
            p.requires_grad_(False)
        # the dense teacher: a frozen copy made before masks are applied; its mode is set once (evaluation restores it)
        self.teacher = copy.deepcopy(model.base).train(cfg.teacher_train_mode) if self.objective.uses_kd else None
        weights = prunable_weights(model.base)
        if cfg.init is MaskInit.OMP:
            init = magnitude_masks(weights, cfg.sparsity)
        else:
            init = random_masks({n: w.shape for n, w in weights.items()}, cfg.sparsity, cfg.init_seed)
        self.scores: dict[str, ScoreMask] = apply_score_masks(model.base, init, cfg.sparsity, cfg.binarizer,
                                                              cfg.reset_at_init, cfg.count_rule)
        model.dense_decoder = cfg.dense_decoder
        self.head = model.head_params() if self.objective.uses_mlm else []
        for p in self.head:
            p.requires_grad_(True)
        self.saved: dict[int, Path] = {}
        model.to(runtime.device)  # scores, thresholds and head go with it (fp32); the teacher too
        if self.teacher is not None:  # held in bf16 under bf16 (it never trains: half the reads, no casts per step)
            self.teacher.to(runtime.device, dtype=torch.bfloat16 if runtime.dtype == torch.bfloat16 else None)
        # static shapes (compiled step, CUDA): a fixed count of MLM positions per batch; the compiled step's models
        self.static = runtime.static_shapes
        self.step_model = runtime.compiled(model)
        self.step_teacher = runtime.compiled(self.teacher) if self.teacher is not None else None

    # ---- Recipe protocol ----------------------------------------------------------------------------------------
    def parameters(self):
        groups = [{"params": [s.scores for s in self.scores.values()]}]
        if self.head:
            groups.append({"params": self.head, **({"lr": self.cfg.head_lr} if self.cfg.head_lr else {})})
        return groups

    def models(self):
        return [self.model]

    def schedule_steps(self):
        return self.cfg.schedule_steps or None

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """CPU batches: the block slice, MLM-masked here (seeded by the step) when the objective uses MLM."""
        return pretraining_batches(self.train_blocks, self.cfg.batch_size, self.seed, start_step,
                                   self.tokenizer if self.objective.uses_mlm else None,
                                   self.cfg.objective.mlm_probability, static_positions=self.static)

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        oc, ids = self.cfg.objective, batch["input_ids"]
        self.runtime.mark_step()
        with parametrize.cached():  # each masked matrix (incl. the tied decoder) computed once per step
            out = self.step_model(ids, attention_mask=batch.get("attention_mask"),
                             token_type_ids=batch.get("token_type_ids"), output_hidden_states=self.objective.uses_kd)
            parts: dict[str, torch.Tensor] = {}
            if self.objective.uses_mlm:
                parts["mlm"] = mlm_loss_at(self.model, out.last_hidden_state, batch["positions"], batch["targets"])
        if self.objective.uses_kd:
            with torch.no_grad():
                teacher_hidden = self.step_teacher(ids, attention_mask=batch.get("attention_mask"),
                                              token_type_ids=batch.get("token_type_ids"),
                                              output_hidden_states=True).hidden_states
            parts["kd"] = kd_loss(out.hidden_states, teacher_hidden)
        if self.objective is Objective.MLM_KD:
            loss = oc.mlm_weight * parts["mlm"] + oc.kd_weight * parts["kd"]
        else:
            (loss,) = parts.values()
        return loss, {f"train_{k}_loss": v.detach() for k, v in parts.items()}

    def after_step(self, step: int) -> bool:
        if self.cfg.binarizer == "threshold" and step % self.cfg.reset_every == 0:
            self.reset_thresholds()
        if step in self.cfg.save_at:
            self.save_ticket(step)
        return False

    def evaluate(self, step: int) -> dict[str, float]:
        out: dict[str, float] = {"actual_sparsity": self.actual_sparsity()}
        if self.teacher is not None:
            out.update(evaluate_kd(self.model, self.teacher, self.eval_blocks, self.cfg.eval_batch_size,
                                   runtime=self.runtime))
        if self.model.head_pretrained:
            out.update(evaluate_mlm(self.model, self.eval_blocks, self.tokenizer, self.cfg.eval_batch_size,
                                    runtime=self.runtime))
        return out

    def state_dict(self) -> dict[str, Any]:
        return to_cpu({
            "scores": {k: s.scores for k, s in self.scores.items()},
            "thresholds": {k: s.threshold for k, s in self.scores.items()},
            "head": self.model.head_state(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, s in self.scores.items():
                s.scores.copy_(state["scores"][k])
                s.threshold.copy_(state["thresholds"][k])
            self.model.load_head_state(state["head"], "TAMT checkpoint")  # load_state_dict copies to the device

    # ---- tickets ------------------------------------------------------------------------------------------------
    def reset_thresholds(self) -> None:
        for s in self.scores.values():
            s.reset_threshold()

    def actual_sparsity(self) -> float:
        kept = sum(int(s.binary_mask().sum()) for s in self.scores.values())
        total = sum(s.scores.numel() for s in self.scores.values())
        return 1.0 - kept / total

    def ticket(self, step: int) -> Ticket:
        """The current mask as a ticket, exactly at the target sparsity (thresholds reset first)."""
        self.reset_thresholds()
        meta = TicketMeta(
            model=self.model_name, method=Method.TAMT, sparsity=self.cfg.sparsity,
            init=self.cfg.init.value, objective=self.objective.value, steps=step, seed=self.seed,
            config=_jsonable(self.cfg),
        )
        return Ticket(current_masks(self.model.base), meta)

    def save_ticket(self, step: int) -> Ticket:
        """A snapshot at ``step`` that leaves the run as it was (the threshold reset a ticket needs is undone), so
        the snapshot equals the same step of any run with the same schedule. (The reference resets tau at every
        save and so changes its run's later steps.)"""
        saved = {k: (s.scores.detach().clone(), s.threshold.clone()) for k, s in self.scores.items()}
        t = self.ticket(step)
        with torch.no_grad():
            for k, s in self.scores.items():
                s.scores.copy_(saved[k][0])
                s.threshold.copy_(saved[k][1])
        if self.on_snapshot is not None:
            self.on_snapshot(step, t)
        if self.ticket_dir is not None:
            self.saved[step] = t.save(self.ticket_dir / f"step{step}")
        return t


def _jsonable(obj) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    return obj


#: the reference's per-sparsity step budgets (matching IMP's cost), SPEC.md
PAPER_STEPS = {0.2: 3000, 0.3: 6000, 0.4: 8000, 0.5: 11000, 0.6: 14000, 0.7: 17000, 0.8: 20000, 0.9: 22000}
#: the reference's "steps" study save points
PAPER_SAVE_AT = (1000, 2000, 3000, 5000, 10000, 20000, 25000)


def paper_tamt(objective: str, sparsity: float, init: str = "omp"):
    """The reference configuration (SPEC.md): returns (TAMTConfig, TrainConfig)."""
    from .training import TrainConfig

    obj = Objective(objective)
    cfg = TAMTConfig(
        sparsity=sparsity, init=MaskInit(init), objective=ObjectiveConfig(objective=obj),
        binarizer="threshold", reset_every=100 if obj is Objective.KD else 1000, batch_size=16,
    )
    train = TrainConfig(
        steps=PAPER_STEPS.get(round(sparsity, 1), 22000), lr=2e-5 if obj is Objective.KD else 5e-5,
        weight_decay=0.0, grad_clip=1.0, schedule="linear", warmup_steps=0, eval_every=1000,
    )
    return cfg, train
