"""How a ticket is found: one small spec per method, in a registry ``{Method: spec class}``. No Ray here.

A spec holds exactly the fields its method uses; its canonical form (those fields, enums as their values) is hashed
into the ticket id, so the same spec is never trained twice. ``spec.find(ctx)`` yields ``(spec, Ticket)`` pairs:
the ticket the spec names, last, and any sibling tickets found on the way (IMP passes every lower sparsity; each
is a ticket of its own spec). :func:`finder_spec` builds the spec for a search space's ticket dict, whose shared
``ticket`` section may hold keys for the other methods of its variants (ignored, but still checked).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from .data import TextDataConfig
from .masking import Binarizer
from .objectives import Objective, ObjectiveConfig
from .pruning import Scope, check_sparsity, dense_ticket, omp_ticket, random_ticket
from .runtime import CPU, Runtime
from .tamt import PAPER_STEPS, MaskInit
from .ticket import Method, Ticket, config_hash, method_label
from .training import CHECKPOINT_FILE, TrainConfig, train

DEFAULT_TEXT = {"source": "embedded", "block_size": 128}


@dataclass
class FindContext:
    """What finding a ticket needs besides its spec (see :func:`sparsebert.pipeline.make_ticket`)."""

    model: Any                      # the loaded PretrainingModel (with its MLM head where the method needs one)
    tokenizer: Any
    blocks: Callable[[str], Any]    # split -> tokenized blocks of the spec's text
    eval_blocks: int = 64
    partial: Path | None = None     # resumable training state of this spec (the store's partial/<id>/)
    report: Callable | None = None
    log: Callable[[str], None] = print
    runtime: Runtime = CPU


def _plain(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in sorted(v.items()) if k != "cache_dir"}
    return v


@dataclass
class FinderSpec:
    """Fields every method has. Subclasses add their own and implement :meth:`find`."""

    method: ClassVar[Method]
    needs_mlm_head: ClassVar[bool] = False
    model: str = field(default="embedded-minilm", metadata={"help": "hub name, local dir or 'embedded-minilm'"})
    sparsity: float = field(default=0.5, metadata={"help": "fraction of prunable weights removed, in [0, 1)"})

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)

    def _in_id(self, name: str) -> bool:
        """Whether a field enters the ticket id (all do, unless a method says otherwise)."""
        return True

    def canonical(self) -> dict[str, Any]:
        d = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if self._in_id(f.name)}
        return {**d, "method": self.method.value}

    @property
    def ticket_id(self) -> str:
        return config_hash(self.canonical())

    def label(self) -> str:
        return method_label(self.method, getattr(self, "init", None), getattr(self, "objective", None))

    def columns(self) -> dict[str, Any]:
        """init / objective / steps as a results row shows them (None where the method has no such thing)."""
        return {"init": None, "objective": None, "steps": 0}

    def text_config(self) -> TextDataConfig | None:
        return None

    def find(self, ctx: FindContext) -> Iterator[tuple["FinderSpec", Ticket]]:
        raise NotImplementedError


@dataclass
class DenseSpec(FinderSpec):
    """The full model as a ticket (all-ones masks): the reference point of every comparison."""

    method: ClassVar[Method] = Method.DENSE
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity != 0:
            raise ValueError("method 'dense' has sparsity 0")

    def find(self, ctx):
        yield self, dense_ticket(ctx.model.base, self.model)


@dataclass
class OMPSpec(FinderSpec):
    """One-shot magnitude pruning of the pre-trained weights."""

    method: ClassVar[Method] = Method.OMP
    scope: Scope = field(default=Scope.PER_MATRIX, metadata={"help": "per_matrix | global"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scope = _enum(Scope, self.scope, "scope")

    def find(self, ctx):
        yield self, omp_ticket(ctx.model.base, self.model, self.sparsity, self.scope.value)


@dataclass
class RandomSpec(OMPSpec):
    """Uniformly random pruning (seeded)."""

    method: ClassVar[Method] = Method.RANDOM
    seed: int = field(default=0, metadata={"help": "random mask seed"})

    def find(self, ctx):
        yield self, random_ticket(ctx.model.base, self.model, self.sparsity, self.seed, self.scope.value)


@dataclass
class TrainedSpec(FinderSpec):
    """Fields of the methods that train on pre-training text (TAMT, IMP)."""

    lr: float = field(default=2e-5, metadata={"help": "TAMT (scores) / IMP (weights) learning rate"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    seed: int = field(default=0, metadata={"help": "data order, masking and dropout seed (TAMT: also random init)"})
    text: dict = field(default_factory=lambda: dict(DEFAULT_TEXT),
                       metadata={"help": "pre-training text: TextDataConfig fields"})

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.text) - {f.name for f in dataclasses.fields(TextDataConfig)}
        if unknown:
            raise ValueError(f"unknown text keys {sorted(unknown)}")

    def text_config(self) -> TextDataConfig:
        return TextDataConfig(**self.text)

    def eval_every(self) -> int:
        raise NotImplementedError

    def _train(self, method, steps: int, ctx: FindContext) -> None:
        """The one loop, checkpointing into ``ctx.partial`` at every report and resuming from it."""
        every = max(1, self.eval_every())
        cfg = TrainConfig(steps=steps, lr=self.lr, eval_every=every, log_every=max(1, every // 2), seed=self.seed)
        if ctx.partial is None:
            train(method, cfg, ctx.report, log=ctx.log)
            return
        resume = ctx.partial if (ctx.partial / CHECKPOINT_FILE).is_file() else None

        def on_report(metrics, write):
            write(ctx.partial)
            if ctx.report is not None:
                ctx.report(metrics, write)

        train(method, cfg, report=on_report, resume_from=resume, log=ctx.log)


@dataclass
class TAMTSpec(TrainedSpec):
    """Task-agnostic mask training: scores over frozen weights, MLM / KD / MLM+KD loss."""

    method: ClassVar[Method] = Method.TAMT
    init: MaskInit = field(default=MaskInit.OMP, metadata={"help": "initial mask: omp | random"})
    objective: Objective = field(default=Objective.KD, metadata={"help": "mlm | kd | mlm_kd"})
    steps: int | str = field(default=100, metadata={
        "help": "optimizer steps, or 'paper': the reference's per-sparsity budget (0.5 -> 11k, 0.7 -> 17k)"})
    binarizer: Binarizer = field(default=Binarizer.THRESHOLD, metadata={"help": "threshold (reference) | topk"})
    reset_every: int = field(default=100, metadata={"help": "steps between threshold resets"})
    mlm_weight: float = field(default=1.0, metadata={"help": "MLM+KD: weight of the MLM loss"})
    kd_weight: float = field(default=1.0, metadata={"help": "MLM+KD: weight of the KD loss"})
    head_lr: float | None = field(default=None, metadata={"help": "TAMT-MLM: lr of the MLM head (None: lr)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.init = _enum(MaskInit, self.init, "init")
        self.objective = _enum(Objective, self.objective, "objective")
        self.binarizer = _enum(Binarizer, self.binarizer, "binarizer")
        if self.steps == "paper":
            if round(self.sparsity, 1) not in PAPER_STEPS:
                raise ValueError(f"steps 'paper' is defined for sparsity 0.2-0.9, got {self.sparsity}")
            self.steps = PAPER_STEPS[round(self.sparsity, 1)]
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer or 'paper', got {self.steps!r}")

    @property
    def needs_mlm_head(self) -> bool:  # type: ignore[override]
        return self.objective.uses_mlm

    def _in_id(self, name: str) -> bool:
        if name in ("mlm_weight", "kd_weight"):
            return self.objective is Objective.MLM_KD
        if name == "head_lr":  # absent unless it matters: ids of tickets made before it existed stay valid
            return self.objective is not Objective.KD and self.head_lr is not None
        return True

    def columns(self):
        return {"init": self.init.value, "objective": self.objective.value, "steps": self.steps}

    def eval_every(self) -> int:
        return max(self.steps // 4, 1)

    def find(self, ctx):
        from .tamt import TAMT, TAMTConfig

        cfg = TAMTConfig(
            sparsity=self.sparsity, init=self.init, binarizer=self.binarizer.value, reset_every=self.reset_every,
            batch_size=self.batch_size, init_seed=self.seed, eval_blocks=min(ctx.eval_blocks, 32),
            head_lr=self.head_lr,
            objective=ObjectiveConfig(objective=self.objective, mlm_weight=self.mlm_weight, kd_weight=self.kd_weight),
        )
        method = TAMT(ctx.model, cfg, ctx.tokenizer, ctx.blocks("train"), ctx.blocks("validation"), self.model,
                      seed=self.seed, runtime=ctx.runtime)
        self._train(method, self.steps, ctx)
        yield self, method.ticket(self.steps)


@dataclass
class IMPSpec(TrainedSpec):
    """Iterative magnitude pruning on MLM with rewinding: 10 % of the original weights every ``imp_interval``."""

    method: ClassVar[Method] = Method.IMP
    needs_mlm_head: ClassVar[bool] = True
    imp_interval: int = field(default=2792, metadata={"help": "MLM steps between 10 % prunings"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if abs(round(self.sparsity * 10) - self.sparsity * 10) > 1e-6:
            raise ValueError(f"IMP reaches multiples of 0.1 only, got sparsity {self.sparsity}")

    def columns(self):
        return {"init": None, "objective": "mlm", "steps": round(self.sparsity * 10) * self.imp_interval}

    def eval_every(self) -> int:
        return self.imp_interval

    def find(self, ctx):
        from .imp import IMP, IMPConfig

        cfg = IMPConfig(interval=self.imp_interval, target_sparsity=self.sparsity, batch_size=self.batch_size,
                        eval_blocks=min(ctx.eval_blocks, 32))
        method = IMP(ctx.model, cfg, ctx.tokenizer, ctx.blocks("train"), ctx.blocks("validation"), self.model,
                     seed=self.seed, runtime=ctx.runtime)
        self._train(method, cfg.total_steps(), ctx)
        own = round(self.sparsity, 6)
        for s, t in method.tickets.items():  # every sparsity passed on the way is a ticket of its own spec
            if s != own:
                yield dataclasses.replace(self, sparsity=s), t
        yield self, method.tickets[own]


SPECS: dict[Method, type[FinderSpec]] = {
    Method.DENSE: DenseSpec, Method.OMP: OMPSpec, Method.RANDOM: RandomSpec, Method.TAMT: TAMTSpec,
    Method.IMP: IMPSpec,
}


def _enum(kind: type[enum.Enum], value: Any, name: str):
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid {kind.__name__} (the {name} must be one of "
                         f"{[m.value for m in kind]})") from None


def all_fields() -> dict[str, type[FinderSpec]]:
    """Every ticket key -> the first spec class that has it."""
    out: dict[str, type[FinderSpec]] = {}
    for cls in SPECS.values():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, cls)
    return out


def finder_spec(d: dict[str, Any]) -> FinderSpec:
    """The spec for a ticket dict (``method`` picks the class; default omp). Keys that belong to other methods are
    checked by their owner and then ignored; unknown keys raise ValueError."""
    d = dict(d)
    method = _enum(Method, d.pop("method", Method.OMP.value), "method")
    cls, owners = SPECS[method], all_fields()
    unknown = set(d) - set(owners)
    if unknown:
        raise ValueError(f"unknown ticket keys {sorted(unknown)}; valid: {sorted({'method', *owners})}")
    own = {f.name for f in dataclasses.fields(cls)}
    for k in set(d) - own:  # a shared ticket section's key for another variant's method: still a valid value
        owners[k](**{k: d[k]})
    return cls(**{k: v for k, v in d.items() if k in own})
