"""IMP on the pre-training task (SPEC.md "Baselines"), as a :class:`~sparsebert.engine.training.Recipe`.

MLM training of the full weights; every ``interval`` (P) steps prune ``prune_step`` (10 %) of the original weights
of every matrix by magnitude of the current trained weights, save the ticket, rewind every weight (encoder and MLM
head) to the pre-trained values and reset the optimizer and LR schedule. After k intervals the sparsity is
``prune_step * k``, so sparsity 0.7 costs 7·P steps of training with the ticket saved at step 7·P. (The reference
counts 0.1·(k+1) after k intervals because its first pruning precedes training; we prune only after training.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch.nn.utils import parametrize

from sparsebert.text.batching import pretraining_batches
from sparsebert.tickets.evaluation import evaluate_mlm
from sparsebert.tickets.finder_base import FindContext, TrainedSpec
from sparsebert.engine.knobs import knob
from sparsebert.tickets.masking import apply_masks, mask_params
from sparsebert.models.loading import PretrainingModel
from sparsebert.models.objectives import ObjectiveConfig, mlm_loss_at
from sparsebert.tickets.pruning import magnitude_masks
from sparsebert.models.registry import prunable_modules
from sparsebert.engine.runtime import CPU, Runtime, to_cpu
from sparsebert.tickets.ticket import Method, Ticket, TicketMeta


#: fraction of the original weights pruned per round
PRUNE_STEP = 0.1


@dataclass
class IMPSpec(TrainedSpec):
    """Iterative magnitude pruning on MLM with rewinding: 10 % of the original weights every ``imp_interval``. The
    spec is the config."""

    method: ClassVar[Method] = Method.IMP
    styles: ClassVar[dict[str, str]] = {"IMP": "tab:green"}
    order: ClassVar[int] = 2
    needs_mlm_head: ClassVar[bool] = True
    late_fields: ClassVar[tuple[str, ...]] = ("optimizer", "weight_decay", "dense_decoder", "schedule_steps",
                                              "prune_first", "rewind")
    imp_interval: int = knob(2792, "MLM steps between 10 % prunings", min=1)
    prune_first: bool = knob(False, "prune before each interval: 0.7 costs 6 intervals (the reference's code), not 7")
    rewind: str = knob("pretrained", "after each pruning: pretrained (ours) | encoder | none (the reference's code)",
                       choices=("pretrained", "encoder", "none"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if abs(round(self.sparsity * 10) - self.sparsity * 10) > 1e-6:
            raise ValueError(f"IMP reaches multiples of 0.1 only, got sparsity {self.sparsity}")
        if round(self.sparsity * 10) < 1:  # no pruning round: no ticket (the dense model is method 'dense')
            raise ValueError(f"IMP needs a sparsity > 0 (0.1-0.9, a multiple of its 0.1 pruning step; the unpruned "
                             f"model is method 'dense'), got {self.sparsity}")

    @classmethod
    def display(cls, init=None, objective=None) -> str:
        obj = (objective or "").lower()
        return "IMP" if obj in ("", "mlm") else f"IMP-{obj.upper()}"

    def columns(self):
        return {"init": None, "objective": "mlm", "steps": self.run_steps()}

    def rounds(self) -> int:
        return int(round(self.sparsity / PRUNE_STEP))

    def run_steps(self) -> int:
        """The one formula of IMP's cost: one interval per pruning round (one fewer with prune_first)."""
        return (self.rounds() - (1 if self.prune_first else 0)) * self.imp_interval

    def eval_every(self) -> int:
        return self.imp_interval

    def find(self, ctx: FindContext):
        method = IMP(ctx.model, self, ctx.tokenizer, ctx.blocks("train"), ctx.blocks("validation")[
            : min(ctx.eval_blocks, 32)], runtime=ctx.runtime)
        self._train(method, self.run_steps(), ctx)
        own = round(self.sparsity, 6)
        for s, t in method.tickets.items():  # every sparsity passed on the way is a ticket of its own spec
            if s != own:
                ctx.emit(dataclasses.replace(self, sparsity=s), t)
        return method.tickets[own]


class IMP:
    def __init__(
        self, model: PretrainingModel, spec: IMPSpec, tokenizer, train_blocks: torch.Tensor,
        eval_blocks: torch.Tensor, ticket_dir: str | Path | None = None, runtime: Runtime = CPU,
        eval_batch_size: int = 16,
    ):
        """``eval_blocks``: the held-out blocks evaluated during training (all of them)."""
        if not model.head_pretrained:
            raise ValueError("IMP trains with the MLM loss and needs a pre-trained (or fitted) MLM head")
        self.model, self.cfg, self.tokenizer, self.runtime = model, spec, tokenizer, runtime
        model.to(runtime.device)
        model.dense_decoder = spec.dense_decoder
        self.train_blocks, self.eval_blocks, self.eval_batch_size = train_blocks, eval_blocks, eval_batch_size
        self.model_name, self.seed = spec.model, spec.seed
        self.ticket_dir = Path(ticket_dir) if ticket_dir else None
        ones = {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in prunable_modules(model.base).items()}
        apply_masks(model.base, ones)
        # taken after the masks are registered, so the keys match (…parametrizations.weight.original)
        self.pretrained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.round = 0
        self.tickets: dict[float, Ticket] = {}
        self.saved: dict[float, Path] = {}
        for p in self._trainable():
            p.requires_grad_(True)
        if spec.prune_first:  # the reference's first pruning (of the pre-trained weights) precedes any training
            self.prune_and_rewind(0)

    def _trainable(self):
        return list(dict.fromkeys(self.model.parameters()))

    def sparsity(self) -> float:
        return round(self.round * PRUNE_STEP, 6)

    # ---- Recipe protocol ----------------------------------------------------------------------------------------
    def parameters(self):
        return self._trainable()

    def models(self):
        return [self.model]

    def schedule_steps(self):
        return self.cfg.schedule_steps or self.cfg.imp_interval

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        return pretraining_batches(self.train_blocks, self.cfg.batch_size, self.seed, start_step, self.tokenizer,
                                   ObjectiveConfig().mlm_probability)

    def loss(self, batch: dict[str, torch.Tensor], step: int):
        with parametrize.cached():
            out = self.model(batch["input_ids"])
            loss = mlm_loss_at(self.model, out.last_hidden_state, batch["positions"], batch["targets"])
        return loss, {"train_mlm_loss": loss.detach()}

    def after_step(self, step: int) -> bool:
        if step % self.cfg.imp_interval or self.round >= self.cfg.rounds():
            return False
        self.prune_and_rewind(step)
        return True

    def evaluate(self, step: int) -> dict[str, float]:
        out = {"actual_sparsity": self.sparsity(), "imp_round": self.round}
        out.update(evaluate_mlm(self.model, self.eval_blocks, self.tokenizer, self.eval_batch_size,
                                runtime=self.runtime))
        return out

    def state_dict(self) -> dict[str, Any]:
        masks = {k: p.mask for k, p in mask_params(self.model.base).items()}
        # the tickets of the rounds done so far (plain tensors and JSON-able metadata: weights_only loads them)
        tickets = {f"{s:.6f}": {"masks": dict(t.masks), "meta": t.meta.to_json()} for s, t in self.tickets.items()}
        return to_cpu({"round": self.round, "masks": masks, "weights": self.model.state_dict(), "tickets": tickets})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        with torch.no_grad():
            for k, p in mask_params(self.model.base).items():
                p.mask.copy_(state["masks"][k])
            self.model.load_state_dict(state["weights"])
        # a checkpoint written before tickets were kept in it has none: those rounds' tickets are not emitted
        self.tickets = {round(float(s), 6): Ticket({k: m.clone() for k, m in t["masks"].items()},
                                                   TicketMeta.from_json(t["meta"]))
                        for s, t in (state.get("tickets") or {}).items()}

    # ---- pruning ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prune_and_rewind(self, step: int) -> Ticket:
        self.round += 1
        s = self.sparsity()
        params = mask_params(self.model.base)
        modules = prunable_modules(self.model.base)
        # magnitude of the current trained, masked weights: pruned entries are 0 and stay pruned
        effective = {k: modules[k].weight.detach() for k in params}
        masks = magnitude_masks(effective, s)
        for k, p in params.items():
            p.mask.copy_(masks[k])  # copy_ converts dtype and device
        if self.cfg.rewind == "pretrained":  # rewind everything (encoder + head) to pre-trained
            self.model.load_state_dict(self.pretrained)
        elif self.cfg.rewind == "encoder":
            self.model.base.load_state_dict({k[len("base."):]: v for k, v in self.pretrained.items()
                                             if k.startswith("base.")})
        meta = TicketMeta(
            model=self.model_name, method=Method.IMP, sparsity=s, objective="mlm", steps=step,
            seed=self.seed, config={"interval": self.cfg.imp_interval, "prune_step": PRUNE_STEP},
        )
        ticket = Ticket({k: m.clone() for k, m in masks.items()}, meta)
        self.tickets[s] = ticket
        if self.ticket_dir is not None:
            self.saved[s] = ticket.save(self.ticket_dir / f"sparsity{s:.1f}")
        return ticket
