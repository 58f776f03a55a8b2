"""TAMT: task-agnostic mask training (SPEC.md "Mask training"), as a :class:`~sparsebert.engine.training.Recipe`.

Pre-trained weights are frozen; each prunable matrix gets a score tensor S (a :class:`ScoreMask`), the forward uses
W * 1[S > tau] with a straight-through gradient to S. Init from the OMP or a random mask (kept 0.02, pruned 0,
tau 0.01). Sparsity is held exactly per matrix by resetting tau to the k-th smallest score every ``reset_every``
steps and before every save (the reference), or by an exact top-k binarizer every step.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch.nn.utils import parametrize

from sparsebert.text.batching import pretraining_batches
from sparsebert.tickets.evaluation import evaluate_kd, evaluate_mlm
from sparsebert.tickets.finder_base import OBJECTIVE_NAMES, FindContext, TrainedSpec, to_enum
from sparsebert.engine.knobs import knob, like
from sparsebert.tickets.masking import Binarizer, ScoreMask, apply_score_masks, current_masks
from sparsebert.models.loading import PretrainingModel
from sparsebert.models.objectives import Objective, ObjectiveConfig, kd_loss, mlm_loss_at
from sparsebert.tickets.pruning import magnitude_masks, random_masks
from sparsebert.models.registry import prunable_weights
from sparsebert.engine.runtime import CPU, Runtime, to_cpu
from sparsebert.tickets.ticket import Method, Ticket, TicketMeta


class MaskInit(str, enum.Enum):
    OMP = "omp"
    RANDOM = "random"


#: the reference's per-sparsity step budgets (matching IMP's cost), SPEC.md; ``steps: paper``
PAPER_STEPS = {0.2: 3000, 0.3: 6000, 0.4: 8000, 0.5: 11000, 0.6: 14000, 0.7: 17000, 0.8: 20000, 0.9: 22000}
#: the reference's "steps" study save points
PAPER_SAVE_AT = (1000, 2000, 3000, 5000, 10000, 20000, 25000)
#: MLM masking rate of every MLM objective
MLM_PROBABILITY = ObjectiveConfig().mlm_probability


@dataclass
class TAMTSpec(TrainedSpec):
    """Task-agnostic mask training: scores over frozen weights, MLM / KD / MLM+KD loss. The spec is the config."""

    method: ClassVar[Method] = Method.TAMT
    styles: ClassVar[dict[str, str]] = {"TAMT-MLM": "tab:red", "TAMT-KD": "tab:blue", "TAMT-MLM+KD": "tab:purple"}
    order: ClassVar[int] = 1
    late_fields: ClassVar[tuple[str, ...]] = ("optimizer", "weight_decay", "dense_decoder", "reset_at_init",
                                              "count_rule", "teacher_train_mode")
    init: MaskInit = knob(MaskInit.OMP, "initial mask: omp | random")
    objective: Objective = like(ObjectiveConfig, "objective")
    steps: int | str = knob(100, "optimizer steps, or 'paper': the reference's budget for the sparsity", min=0)
    binarizer: Binarizer = knob(Binarizer.THRESHOLD, "threshold (reference) | topk")
    reset_every: int = knob(100, "steps between threshold resets", min=1)
    mlm_weight: float = like(ObjectiveConfig, "mlm_weight")
    kd_weight: float = like(ObjectiveConfig, "kd_weight")
    head_lr: float | None = knob(None, "TAMT-MLM: lr of the MLM head (None: lr)", above=0)
    reset_at_init: bool = knob(True, "tau reset to the k-th smallest score at init (false: the reference's 0.01)")
    count_rule: str = knob("round", "pruned count: round(n*s) (ours) | floor: int(n*s) (the reference's)",
                           choices=("round", "floor"))
    teacher_train_mode: bool = knob(False, "KD teacher with dropout on (the reference's)")
    save_at: list = knob(help="steps at which the run also stores a ticket (each its own spec)", factory=list)

    def __post_init__(self) -> None:
        self.init = to_enum(MaskInit, self.init, "init")
        self.objective = to_enum(Objective, self.objective, "objective")
        self.binarizer = to_enum(Binarizer, self.binarizer, "binarizer")
        if self.steps == "paper":
            if round(self.sparsity, 1) not in PAPER_STEPS:
                raise ValueError(f"steps 'paper' is defined for sparsity 0.2-0.9, got {self.sparsity}")
            self.steps = PAPER_STEPS[round(self.sparsity, 1)]
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer or 'paper', got {self.steps!r}")
        if not isinstance(self.save_at, (list, tuple)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.save_at):
            raise ValueError(f"save_at steps must be >= 1, got {self.save_at}")
        self.save_at = sorted(set(self.save_at))
        super().__post_init__()

    @classmethod
    def display(cls, init=None, objective=None) -> str:
        obj = (objective or "").lower()
        name = OBJECTIVE_NAMES.get(obj, obj.upper())
        return (f"TAMT-{name}" if name else "TAMT") + (" (random init)" if (init or "omp").lower() == "random" else "")

    @property
    def needs_mlm_head(self) -> bool:  # type: ignore[override]
        return self.objective.uses_mlm

    def run_steps(self) -> int:
        return max([self.steps, *self.save_at]) if self.steps in self.save_at else self.steps

    def run_spec(self) -> "TAMTSpec":
        return dataclasses.replace(self, steps=self.run_steps())

    def horizon(self) -> int:
        """Where the linear LR decay reaches 0: schedule_steps, else the end of the run."""
        return self.schedule_steps or self.run_steps()

    def canonical(self) -> dict[str, Any]:
        d = super().canonical()
        if self.horizon() != self.steps:  # a snapshot of a longer schedule is another ticket than a run ending here
            d["schedule_steps"] = self.horizon()
        return d

    def _in_id(self, name: str) -> bool:
        if name in ("save_at", "schedule_steps"):  # save points add outputs; the horizon enters via canonical()
            return False
        if name in ("mlm_weight", "kd_weight"):
            return self.objective is Objective.MLM_KD
        if name == "head_lr":  # absent unless it matters: ids of tickets made before it existed stay valid
            return self.objective is not Objective.KD and self.head_lr is not None
        return super()._in_id(name)

    def columns(self):
        return {"init": self.init.value, "objective": self.objective.value, "steps": self.steps}

    def eval_every(self) -> int:
        return max(self.steps // 4, 1)

    def find(self, ctx: FindContext):
        steps = self.run_steps()

        def snapshot(step: int, ticket: Ticket) -> None:
            ctx.emit(dataclasses.replace(self, steps=step), ticket)

        method = TAMT(ctx.model, self, ctx.tokenizer, ctx.blocks("train"), ctx.blocks("validation")[
            : min(ctx.eval_blocks, 32)], runtime=ctx.runtime, on_snapshot=snapshot)
        self._train(method, steps, ctx)
        return method.ticket(steps)


class TAMT:
    """The TAMT method for :func:`sparsebert.engine.training.train`."""

    def __init__(
        self,
        model: PretrainingModel,
        spec: TAMTSpec,
        tokenizer,
        train_blocks: torch.Tensor,
        eval_blocks: torch.Tensor,
        ticket_dir: str | Path | None = None,
        runtime: Runtime = CPU,
        on_snapshot=None,
        eval_batch_size: int = 16,
    ):
        """``eval_blocks``: the held-out blocks evaluated during training (all of them)."""
        self.on_snapshot = on_snapshot  # (step, Ticket) for every save_at step: a sibling ticket, stored at once
        self.model, self.cfg, self.tokenizer, self.runtime = model, spec, tokenizer, runtime
        self.train_blocks, self.eval_blocks, self.eval_batch_size = train_blocks, eval_blocks, eval_batch_size
        self.model_name, self.seed = spec.model, spec.seed
        self.save_at = {s for s in spec.save_at if s < spec.run_steps()}  # the run's last step is its own ticket
        self.ticket_dir = Path(ticket_dir) if ticket_dir else None
        self.objective = spec.objective
        cfg = spec
        if self.objective.uses_mlm and not model.head_pretrained:
            raise ValueError("TAMT-MLM needs a pre-trained (or fitted) MLM head; see sparsebert.tickets.mlm_head")
        for p in model.parameters():
            p.requires_grad_(False)
        # the dense teacher: a frozen copy made before masks are applied; its mode is set once (evaluation restores it)
        self.teacher = copy.deepcopy(model.base).train(cfg.teacher_train_mode) if self.objective.uses_kd else None
        weights = prunable_weights(model.base)
        if cfg.init is MaskInit.OMP:
            init = magnitude_masks(weights, cfg.sparsity)
        else:
            init = random_masks({n: w.shape for n, w in weights.items()}, cfg.sparsity, cfg.seed)
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
                                   self.tokenizer if self.objective.uses_mlm else None, MLM_PROBABILITY,
                                   static_positions=self.static)

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        oc, ids = self.cfg, batch["input_ids"]
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
        if step in self.save_at:
            self.save_ticket(step)
        return False

    def evaluate(self, step: int) -> dict[str, float]:
        out: dict[str, float] = {"actual_sparsity": self.actual_sparsity()}
        if self.teacher is not None:
            out.update(evaluate_kd(self.model, self.teacher, self.eval_blocks, self.eval_batch_size,
                                   runtime=self.runtime))
        if self.model.head_pretrained:
            out.update(evaluate_mlm(self.model, self.eval_blocks, self.tokenizer, self.eval_batch_size,
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
            config=self.cfg.canonical(),
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
