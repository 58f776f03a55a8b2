"""From a finder spec to a stored, evaluated ticket: content-addressed, locked, resumable. No Ray here.

A :class:`FinderSpec` says how a ticket is found (model, method, sparsity and the method's knobs). Its
canonical form (fields irrelevant to the method dropped) is hashed into the ticket id, so the same spec is never
trained twice in one experiment or across experiments that share a :class:`TicketStore` root. Making a ticket
takes a file lock (concurrent trials wait rather than duplicate work) and checkpoints into the store, so a crashed
trial's retry resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .data import TextDataConfig, tokenized_blocks
from .evaluation import evaluate_kd, evaluate_mlm
from .masking import apply_masks
from .models import load_pretraining_model, load_tokenizer
from .objectives import Objective, ObjectiveConfig
from .pruning import check_sparsity, dense_ticket, omp_ticket, random_ticket
from .runtime import CPU, Runtime
from .ticket import Method, Ticket, config_hash
from .training import TrainConfig, train

NEEDS = {
    Method.DENSE: set(),
    Method.OMP: {"scope"},
    Method.RANDOM: {"scope", "seed"},
    Method.TAMT: {"init", "objective", "steps", "lr", "batch_size", "binarizer", "reset_every", "seed",
                  "mlm_weight", "kd_weight", "text", "head_lr"},
    Method.IMP: {"imp_interval", "lr", "batch_size", "seed", "text"},
}


@dataclass
class FinderSpec:
    """How a ticket is found. Irrelevant fields (e.g. ``steps`` for OMP) do not enter the ticket id."""

    model: str = field(default="embedded-minilm", metadata={"help": "hub name, local dir or 'embedded-minilm'"})
    method: Method = field(default=Method.OMP, metadata={"help": "dense | omp | random | imp | tamt"})
    sparsity: float = field(default=0.5, metadata={"help": "fraction of prunable weights removed, in [0, 1)"})
    scope: str = field(default="per_matrix", metadata={"help": "OMP/random: per_matrix | global"})
    seed: int = field(default=0, metadata={"help": "random mask seed / TAMT-IMP data and dropout seed"})
    init: str = field(default="omp", metadata={"help": "TAMT mask init: omp | random"})
    objective: str = field(default="kd", metadata={"help": "TAMT loss: mlm | kd | mlm_kd"})
    steps: int | str = field(default=100, metadata={
        "help": "TAMT optimizer steps, or 'paper': the reference's per-sparsity budget (0.5 -> 11k, 0.7 -> 17k)"})
    lr: float = field(default=2e-5, metadata={"help": "TAMT (scores) / IMP (weights) learning rate"})
    batch_size: int = field(default=16, metadata={"help": "TAMT/IMP sequences per step"})
    head_lr: float | None = field(default=None, metadata={"help": "TAMT-MLM: lr of the MLM head (None: lr)"})
    binarizer: str = field(default="threshold", metadata={"help": "TAMT: threshold (reference) | topk"})
    reset_every: int = field(default=100, metadata={"help": "TAMT: steps between threshold resets"})
    mlm_weight: float = field(default=1.0, metadata={"help": "TAMT-MLM+KD: weight of the MLM loss"})
    kd_weight: float = field(default=1.0, metadata={"help": "TAMT-MLM+KD: weight of the KD loss"})
    imp_interval: int = field(default=2792, metadata={"help": "IMP: MLM steps between 10 % prunings"})
    text: dict = field(default_factory=lambda: {"source": "embedded", "block_size": 128},
                       metadata={"help": "pre-training text: TextDataConfig fields"})

    def __post_init__(self) -> None:
        self.method = Method(self.method)
        check_sparsity(self.sparsity)
        if self.steps == "paper" and self.method is not Method.TAMT:
            self.steps = 0  # only TAMT has a step budget of its own
        if self.steps == "paper":
            from .tamt import PAPER_STEPS

            if round(self.sparsity, 1) not in PAPER_STEPS:
                raise ValueError(f"steps 'paper' is defined for sparsity 0.2-0.9, got {self.sparsity}")
            self.steps = PAPER_STEPS[round(self.sparsity, 1)]
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer or 'paper', got {self.steps!r}")
        if self.method is Method.DENSE and self.sparsity != 0:
            raise ValueError("method 'dense' has sparsity 0")
        ObjectiveConfig(objective=self.objective)
        if self.init not in ("omp", "random"):
            raise ValueError(f"init must be 'omp' or 'random', got {self.init!r}")
        if self.scope not in ("per_matrix", "global"):
            raise ValueError(f"scope must be 'per_matrix' or 'global', got {self.scope!r}")
        if self.method is Method.IMP and abs(round(self.sparsity * 10) - self.sparsity * 10) > 1e-6:
            raise ValueError(f"IMP reaches multiples of 0.1 only, got sparsity {self.sparsity}")
        unknown = set(self.text) - {f.name for f in dataclasses.fields(TextDataConfig)}
        if unknown:
            raise ValueError(f"unknown text keys {sorted(unknown)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinderSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ticket keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)

    def canonical(self) -> dict[str, Any]:
        keep = NEEDS[self.method] | {"model", "method", "sparsity"}
        d = {k: v for k, v in dataclasses.asdict(self).items() if k in keep}
        d["method"] = self.method.value
        if self.method is Method.TAMT and Objective(self.objective) is not Objective.MLM_KD:
            d.pop("mlm_weight"), d.pop("kd_weight")
        if self.method is Method.TAMT and (self.objective == "kd" or self.head_lr is None):
            d.pop("head_lr")  # absent unless it matters: old ticket ids stay valid
        if "text" in d:
            d["text"] = {k: v for k, v in sorted(d["text"].items()) if k != "cache_dir"}
        return d

    @property
    def ticket_id(self) -> str:
        return config_hash(self.canonical())

    def label(self) -> str:
        """Human-readable method label: TAMT-KD, TAMT-MLM+KD (random init), IMP, OMP, Random, Dense."""
        if self.method is Method.TAMT:
            obj = {"mlm": "MLM", "kd": "KD", "mlm_kd": "MLM+KD"}[self.objective]
            return f"TAMT-{obj}" + (" (rand init)" if self.init == "random" else "")
        return {Method.IMP: "IMP", Method.OMP: "OMP", Method.RANDOM: "Random", Method.DENSE: "Dense"}[self.method]

    def text_config(self) -> TextDataConfig:
        return TextDataConfig(**self.text)


@dataclass
class EvalSpec:
    """How a ticket's pre-training losses (the proxy) are measured."""

    eval_blocks: int = field(default=64, metadata={"help": "validation blocks for MLM/KD loss"})
    batch_size: int = field(default=16, metadata={"help": "evaluation batch"})
    head_steps: int = field(default=100, metadata={"help": "steps to fit an MLM head if the model has none"})


class SharedText:
    """Tokenized train/validation blocks for one text config, built once (driver) and shared with trials."""

    def __init__(self, blocks: dict[str, dict[str, torch.Tensor]] | None = None):
        self.blocks = blocks or {}

    @staticmethod
    def key(model: str, text: dict) -> str:
        return config_hash({"model": model, **text})

    def get(self, model: str, text: dict, split: str) -> torch.Tensor:
        k = self.key(model, text)
        if k not in self.blocks or split not in self.blocks[k]:
            cfg = TextDataConfig(**text)
            self.blocks.setdefault(k, {})[split] = tokenized_blocks(cfg, load_tokenizer(model), split)
        return self.blocks[k][split]


class TicketStore:
    """``<root>/tickets/<id>/`` (finished tickets), ``<root>/partial/<id>/`` (resumable state), locks beside."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "tickets").mkdir(parents=True, exist_ok=True)
        (self.root / "partial").mkdir(parents=True, exist_ok=True)

    def path(self, spec: FinderSpec) -> Path:
        return self.root / "tickets" / spec.ticket_id

    def has(self, spec: FinderSpec) -> bool:
        return (self.path(spec) / "ticket.json").is_file()

    @contextlib.contextmanager
    def lock(self, spec: FinderSpec):
        with open(self.root / "tickets" / f".{spec.ticket_id}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_make(
        self, spec: FinderSpec, eval_spec: EvalSpec | None = None, shared: SharedText | None = None,
        report: Callable | None = None, log: Callable[[str], None] = print, runtime: Runtime = CPU,
    ) -> tuple[Ticket, bool]:
        """The stored ticket for ``spec`` (made now if absent, on ``runtime``). Returns (ticket, made_now)."""
        with self.lock(spec):
            if self.has(spec):
                return Ticket.load(self.path(spec)), False
            ticket = make_ticket(spec, eval_spec or EvalSpec(), shared or SharedText(), self, report, log, runtime)
            return ticket, True


def _train_checkpointing(method, cfg: TrainConfig, partial: Path, report, log):
    """Run the loop, checkpointing into the store at every report; resume from there if present."""
    resume = partial if (partial / "trainer.pt").is_file() else None

    def on_report(metrics, write):
        write(partial)
        if report is not None:
            report(metrics, write)

    return train(method, cfg, report=on_report, resume_from=resume, log=log)


def ensure_head(model, spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, log, runtime: Runtime = CPU
                ) -> None:
    from .mlm_head import HeadFitConfig, ensure_mlm_head

    if model.head_pretrained:
        return
    text = {"source": spec.text.get("source", "embedded"), "block_size": 128}
    blocks = shared.get(spec.model, text, "train")
    ensure_mlm_head(model, spec.model, load_tokenizer(spec.model), blocks, f"{text['source']}-128",
                    HeadFitConfig(steps=eval_spec.head_steps), log=log, runtime=runtime)


def prepare_head(spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, log=print, runtime: Runtime = CPU
                 ) -> None:
    """Fit (or find cached) the MLM head of ``spec.model`` once, before trials start (a driver-side step)."""
    model = load_pretraining_model(spec.model)
    ensure_head(model, spec, eval_spec, shared, log, runtime)


def make_ticket(
    spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, store: TicketStore | None = None,
    report: Callable | None = None, log: Callable[[str], None] = print, runtime: Runtime = CPU,
) -> Ticket:
    """Find the ticket ``spec`` describes on ``runtime`` (device, precision), evaluate its pre-training losses,
    save it in ``store``. The ticket id does not depend on the runtime; the ticket records it."""
    t0 = time.perf_counter()
    tok = load_tokenizer(spec.model)
    model = load_pretraining_model(spec.model)
    needs_mlm = spec.method is Method.IMP or (spec.method is Method.TAMT and spec.objective != "kd")
    if needs_mlm:
        ensure_head(model, spec, eval_spec, shared, log, runtime)
    partial = store.root / "partial" / spec.ticket_id if store else None
    if spec.method is Method.DENSE:
        ticket = dense_ticket(model.base, spec.model)
    elif spec.method is Method.OMP:
        ticket = omp_ticket(model.base, spec.model, spec.sparsity, spec.scope)
    elif spec.method is Method.RANDOM:
        ticket = random_ticket(model.base, spec.model, spec.sparsity, spec.seed, spec.scope)
    else:
        train_blocks = shared.get(spec.model, spec.text, "train")
        valid_blocks = shared.get(spec.model, spec.text, "validation")
        tc = TrainConfig(lr=spec.lr, eval_every=max(1, _eval_every(spec)), log_every=max(1, _eval_every(spec) // 2),
                         seed=spec.seed)
        if spec.method is Method.TAMT:
            from .tamt import TAMT, TAMTConfig

            cfg = TAMTConfig(
                sparsity=spec.sparsity, init=spec.init, binarizer=spec.binarizer, reset_every=spec.reset_every,
                batch_size=spec.batch_size, init_seed=spec.seed, eval_blocks=min(eval_spec.eval_blocks, 32),
                head_lr=spec.head_lr,
                objective=ObjectiveConfig(objective=spec.objective, mlm_weight=spec.mlm_weight,
                                          kd_weight=spec.kd_weight),
            )
            method = TAMT(model, cfg, tok, train_blocks, valid_blocks, spec.model, seed=spec.seed, runtime=runtime)
            tc.steps = spec.steps
            _train_checkpointing(method, tc, partial, report, log) if partial else train(method, tc, report, log=log)
            ticket = method.ticket(spec.steps)
        else:
            from .imp import IMP, IMPConfig

            cfg = IMPConfig(interval=spec.imp_interval, target_sparsity=spec.sparsity,
                            batch_size=spec.batch_size, eval_blocks=min(eval_spec.eval_blocks, 32))
            method = IMP(model, cfg, tok, train_blocks, valid_blocks, spec.model, seed=spec.seed, runtime=runtime)
            tc.steps = cfg.total_steps()
            _train_checkpointing(method, tc, partial, report, log) if partial else train(method, tc, report, log=log)
            ticket = method.tickets[round(spec.sparsity, 6)]
            if store is not None:  # every intermediate sparsity is a ticket of its own spec: store them too
                for s, t in method.tickets.items():
                    sibling = dataclasses.replace(spec, sparsity=s)
                    if s != round(spec.sparsity, 6) and not store.has(sibling):
                        t.meta.config = sibling.canonical()
                        t.meta.metrics = evaluate_ticket(t, sibling, eval_spec, shared, log=log, runtime=runtime)
                        t.save(store.path(sibling))
    ticket.meta.config = spec.canonical()
    ticket.meta.seed = spec.seed
    ticket.meta.metrics = {**evaluate_ticket(ticket, spec, eval_spec, shared, log=log, runtime=runtime),
                           "find_s": time.perf_counter() - t0}
    ticket.meta.runtime = {"device": runtime.device.type, "precision": runtime.precision}
    if spec.method is Method.TAMT:
        ticket.meta.steps = spec.steps
    if store is not None:
        ticket.save(store.path(spec))
        if partial is not None and partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return ticket


def _eval_every(spec: FinderSpec) -> int:
    if spec.method is Method.IMP:
        return spec.imp_interval
    return max(spec.steps // 4, 1)


def evaluate_ticket(
    ticket: Ticket, spec: FinderSpec, eval_spec: EvalSpec, shared: SharedText, log: Callable = print,
    runtime: Runtime = CPU,
) -> dict[str, float]:
    """MLM loss (fixed masking, the original/fitted head) and KD loss (vs the dense model) on validation blocks."""
    tok = load_tokenizer(spec.model)
    text = {**spec.text}
    blocks = shared.get(spec.model, text, "validation")[: eval_spec.eval_blocks]
    model = load_pretraining_model(spec.model)
    ensure_head(model, spec, eval_spec, shared, log, runtime)
    teacher = copy.deepcopy(model.base).to(runtime.device)
    if ticket.meta.method is not Method.DENSE:
        apply_masks(model.base, ticket)
    model.to(runtime.device)
    out = {}
    out.update(evaluate_mlm(model, blocks, tok, eval_spec.batch_size, runtime=runtime))
    out.update(evaluate_kd(model, teacher, blocks, eval_spec.batch_size, runtime=runtime))
    out["eval_blocks"] = int(len(blocks))
    return out
