"""IMP on the pre-training task (SPEC.md "Baselines"), as a :class:`~sparsebert.training.Recipe`.

MLM training of the full weights; every ``interval`` (P) steps prune ``prune_step`` (10 %) of the original weights
of every matrix by magnitude of the current trained weights, save the ticket, rewind every weight (encoder and MLM
head) to the pre-trained values and reset the optimizer and LR schedule. After k intervals the sparsity is
``prune_step * k``, so sparsity 0.7 costs 7·P steps of training with the ticket saved at step 7·P. (The reference
counts 0.1·(k+1) after k intervals because its first pruning precedes training; we prune only after training.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.utils import parametrize

from .batching import pretraining_batches
from .evaluation import evaluate_mlm
from .masking import apply_masks, mask_params
from .models import PretrainingModel
from .objectives import mlm_loss_at
from .pruning import check_sparsity, magnitude_masks
from .registry import prunable_modules
from .runtime import CPU, Runtime, to_cpu
from .ticket import Method, Ticket, TicketMeta


@dataclass
class IMPConfig:
    interval: int = field(default=2792, metadata={"help": "P: MLM steps between prunings (ref 2792; 200-1396)"})
    prune_step: float = field(default=0.1, metadata={"help": "fraction of the original weights pruned per round"})
    target_sparsity: float = field(default=0.9, metadata={"help": "last sparsity to reach"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    mlm_probability: float = field(default=0.15, metadata={"help": "MLM masking rate"})
    eval_blocks: int = field(default=64, metadata={"help": "held-out blocks for evaluation"})
    eval_batch_size: int = field(default=16, metadata={"help": "batch size of evaluation"})
    prune_first: bool = field(default=False, metadata={"help": (
        "prune before each interval (the reference's code: 0.1 at step 0, sparsity 0.1(k+1) after k intervals, "
        "0.7 costs 6P) instead of after it (ours: 0.1k after k intervals, 0.7 costs 7P)")})
    rewind: str = field(default="pretrained", metadata={"help": (
        "after each pruning reset the weights to the pre-trained values: pretrained (ours and the paper: encoder "
        "and MLM head) | encoder (encoder only) | none (the reference's code: its rewind copies the trained "
        "weights onto themselves and never touches the head)")})
    schedule_steps: int = field(default=0, metadata={"help": (
        "length of the linear LR decay that restarts every round (0: one interval; the reference: 2 epochs)")})
    dense_decoder: bool = field(default=False, metadata={"help": (
        "the MLM decoder uses the dense embedding (the reference's code) instead of the masked one")})

    def __post_init__(self) -> None:
        check_sparsity(self.target_sparsity)
        if self.rewind not in ("pretrained", "encoder", "none"):
            raise ValueError(f"rewind must be pretrained, encoder or none, got {self.rewind!r}")
        if self.interval < 1:
            raise ValueError("interval must be >= 1")
        if not 0 < self.prune_step < 1:
            raise ValueError("prune_step must be in (0, 1)")

    def rounds(self) -> int:
        return int(round(self.target_sparsity / self.prune_step))

    def total_steps(self) -> int:
        return (self.rounds() - (1 if self.prune_first else 0)) * self.interval


class IMP:
    def __init__(
        self, model: PretrainingModel, cfg: IMPConfig, tokenizer, train_blocks: torch.Tensor,
        eval_blocks: torch.Tensor, model_name: str, ticket_dir: str | Path | None = None, seed: int = 0,
        runtime: Runtime = CPU,
    ):
        if not model.head_pretrained:
            raise ValueError("IMP trains with the MLM loss and needs a pre-trained (or fitted) MLM head")
        self.model, self.cfg, self.tokenizer, self.runtime = model, cfg, tokenizer, runtime
        model.to(runtime.device)
        model.dense_decoder = cfg.dense_decoder
        self.train_blocks, self.eval_blocks = train_blocks, eval_blocks[: cfg.eval_blocks]
        self.model_name, self.seed = model_name, seed
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
        if cfg.prune_first:  # the reference's first pruning (of the pre-trained weights) precedes any training
            self.prune_and_rewind(0)

    def _trainable(self):
        return list(dict.fromkeys(self.model.parameters()))

    def sparsity(self) -> float:
        return round(self.round * self.cfg.prune_step, 6)

    # ---- Recipe protocol ----------------------------------------------------------------------------------------
    def parameters(self):
        return self._trainable()

    def models(self):
        return [self.model]

    def schedule_steps(self):
        return self.cfg.schedule_steps or self.cfg.interval

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        return pretraining_batches(self.train_blocks, self.cfg.batch_size, self.seed, start_step, self.tokenizer,
                                   self.cfg.mlm_probability)

    def loss(self, batch: dict[str, torch.Tensor], step: int):
        with parametrize.cached():
            out = self.model(batch["input_ids"])
            loss = mlm_loss_at(self.model, out.last_hidden_state, batch["positions"], batch["targets"])
        return loss, {"train_mlm_loss": loss.detach()}

    def after_step(self, step: int) -> bool:
        if step % self.cfg.interval or self.round >= self.cfg.rounds():
            return False
        self.prune_and_rewind(step)
        return True

    def evaluate(self, step: int) -> dict[str, float]:
        out = {"actual_sparsity": self.sparsity(), "imp_round": self.round}
        out.update(evaluate_mlm(self.model, self.eval_blocks, self.tokenizer, self.cfg.eval_batch_size,
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
            seed=self.seed, config={"interval": self.cfg.interval, "prune_step": self.cfg.prune_step},
        )
        ticket = Ticket({k: m.clone() for k, m in masks.items()}, meta)
        self.tickets[s] = ticket
        if self.ticket_dir is not None:
            self.saved[s] = ticket.save(self.ticket_dir / f"sparsity{s:.1f}")
        return ticket
