"""How a ticket is found: one small spec per method, in a registry ``{Method: spec class}``. No Ray here.

A spec holds exactly the fields its method uses; its canonical form (those fields, enums as their values) is hashed
into the ticket id, so the same spec is never trained twice. Knobs added after tickets were stored (the reference's
variants) enter the id only when they differ from their default, so older ids stay valid. ``spec.find(ctx)``
returns the ticket the spec names and hands every sibling ticket found on the way to ``ctx.emit`` at once (IMP
passes every lower sparsity; a TAMT run snapshots every ``save_at`` step), each a ticket of its own spec. :func:`finder_spec` builds the spec for a search space's ticket dict, whose shared
``ticket`` section may hold keys for the other methods of its variants (ignored, but still checked).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from .batching import DATA_ORDER
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
    emit: Callable[["FinderSpec", Ticket], None] = lambda spec, ticket: None  # store a sibling ticket now


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
    #: fields that enter the id only when they differ from their default (added after tickets were stored)
    late_fields: ClassVar[tuple[str, ...]] = ()
    model: str = field(default="embedded-minilm", metadata={"help": "hub name, local dir or 'embedded-minilm'"})
    sparsity: float = field(default=0.5, metadata={"help": "fraction of prunable weights removed, in [0, 1)"})

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)

    def _in_id(self, name: str) -> bool:
        """Whether a field enters the ticket id: all do, late fields only when not at their default."""
        if name in self.late_fields:
            f = next(f for f in dataclasses.fields(self) if f.name == name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            return _plain(getattr(self, name)) != _plain(default)
        return True

    def run_spec(self) -> "FinderSpec":
        """The spec whose run makes this ticket (itself, unless the ticket is a snapshot of a longer run)."""
        return self

    def run_steps(self) -> int:
        """Training steps of the run that makes this ticket (0: no training)."""
        return 0

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

    def find(self, ctx: FindContext) -> Ticket:
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
        return dense_ticket(ctx.model.base, self.model)


@dataclass
class OMPSpec(FinderSpec):
    """One-shot magnitude pruning of the pre-trained weights."""

    method: ClassVar[Method] = Method.OMP
    scope: Scope = field(default=Scope.PER_MATRIX, metadata={"help": "per_matrix | global"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scope = _enum(Scope, self.scope, "scope")

    def find(self, ctx):
        return omp_ticket(ctx.model.base, self.model, self.sparsity, self.scope.value)


@dataclass
class RandomSpec(OMPSpec):
    """Uniformly random pruning (seeded)."""

    method: ClassVar[Method] = Method.RANDOM
    seed: int = field(default=0, metadata={"help": "random mask seed"})

    def find(self, ctx):
        return random_ticket(ctx.model.base, self.model, self.sparsity, self.seed, self.scope.value)


@dataclass
class TrainedSpec(FinderSpec):
    """Fields of the methods that train on pre-training text (TAMT, IMP)."""

    lr: float = field(default=2e-5, metadata={"help": "TAMT (scores) / IMP (weights) learning rate"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    seed: int = field(default=0, metadata={"help": "data order, masking and dropout seed (TAMT: also random init)"})
    text: dict = field(default_factory=lambda: dict(DEFAULT_TEXT),
                       metadata={"help": "pre-training text: TextDataConfig fields"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw (ours) | bertadam (the reference's)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (the reference's BertAdam: 0.01)"})
    schedule_steps: int = field(default=0, metadata={"help": (
        "length of the linear LR decay (0: the end of the run (TAMT) / one interval (IMP); the reference: 2 epochs)")})
    dense_decoder: bool = field(default=False, metadata={"help": (
        "MLM decoder = the dense pre-trained embedding (the reference's code) instead of the masked one")})

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.text) - {f.name for f in dataclasses.fields(TextDataConfig)}
        if unknown:
            raise ValueError(f"unknown text keys {sorted(unknown)}")
        if self.optimizer not in ("adamw", "bertadam"):
            raise ValueError(f"optimizer must be 'adamw' or 'bertadam', got {self.optimizer!r}")

    def text_config(self) -> TextDataConfig:
        return TextDataConfig(**self.text)

    def canonical(self) -> dict[str, Any]:
        # the data order the run draws its batches in (sparsebert.batching.DATA_ORDER): a ticket trained in
        # another order is another ticket; the ids of tickets trained in order 1 (no key) are not matched any more
        return {**super().canonical(), "data_order": DATA_ORDER}

    def eval_every(self) -> int:
        raise NotImplementedError

    def _train(self, method, steps: int, ctx: FindContext) -> None:
        """The one loop, checkpointing into ``ctx.partial`` at every report and resuming from it."""
        every = max(1, self.eval_every())
        cfg = TrainConfig(steps=steps, lr=self.lr, eval_every=every, log_every=max(1, every // 2), seed=self.seed,
                          optimizer=self.optimizer, weight_decay=self.weight_decay)
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
    late_fields: ClassVar[tuple[str, ...]] = ("optimizer", "weight_decay", "dense_decoder", "reset_at_init",
                                              "count_rule", "teacher_train_mode")
    init: MaskInit = field(default=MaskInit.OMP, metadata={"help": "initial mask: omp | random"})
    objective: Objective = field(default=Objective.KD, metadata={"help": "mlm | kd | mlm_kd"})
    steps: int | str = field(default=100, metadata={
        "help": "optimizer steps, or 'paper': the reference's per-sparsity budget (0.5 -> 11k, 0.7 -> 17k)"})
    binarizer: Binarizer = field(default=Binarizer.THRESHOLD, metadata={"help": "threshold (reference) | topk"})
    reset_every: int = field(default=100, metadata={"help": "steps between threshold resets"})
    mlm_weight: float = field(default=1.0, metadata={"help": "MLM+KD: weight of the MLM loss"})
    kd_weight: float = field(default=1.0, metadata={"help": "MLM+KD: weight of the KD loss"})
    head_lr: float | None = field(default=None, metadata={"help": "TAMT-MLM: lr of the MLM head (None: lr)"})
    reset_at_init: bool = field(default=True, metadata={"help": (
        "tau reset to the k-th smallest score at init (ours) | false: tau = 0.01 until the first reset (reference)")})
    count_rule: str = field(default="round", metadata={"help": "pruned count: round(n*s) (ours) | floor: int(n*s)"})
    teacher_train_mode: bool = field(default=False, metadata={"help": "KD teacher with dropout on (reference)"})
    save_at: list = field(default_factory=list, metadata={"help": (
        "steps at which one run also stores a ticket (each its own content-addressed spec); a ticket whose steps "
        "are in save_at is a snapshot of the run to max(save_at): the steps study trains once per configuration")})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.init = _enum(MaskInit, self.init, "init")
        self.save_at = sorted({int(s) for s in (self.save_at or [])})
        if any(s < 1 for s in self.save_at):
            raise ValueError(f"save_at steps must be >= 1, got {self.save_at}")
        if self.count_rule not in ("round", "floor"):
            raise ValueError(f"count_rule must be 'round' or 'floor', got {self.count_rule!r}")
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

    def find(self, ctx):
        from .tamt import TAMT, TAMTConfig

        steps = self.run_steps()
        cfg = TAMTConfig(
            sparsity=self.sparsity, init=self.init, binarizer=self.binarizer.value, reset_every=self.reset_every,
            batch_size=self.batch_size, init_seed=self.seed, eval_blocks=min(ctx.eval_blocks, 32),
            head_lr=self.head_lr, reset_at_init=self.reset_at_init, count_rule=self.count_rule,
            dense_decoder=self.dense_decoder, teacher_train_mode=self.teacher_train_mode,
            schedule_steps=self.horizon(), save_at=tuple(s for s in self.save_at if s < steps),
            objective=ObjectiveConfig(objective=self.objective, mlm_weight=self.mlm_weight, kd_weight=self.kd_weight),
        )

        def snapshot(step: int, ticket: Ticket) -> None:
            ctx.emit(dataclasses.replace(self, steps=step), ticket)

        method = TAMT(ctx.model, cfg, ctx.tokenizer, ctx.blocks("train"), ctx.blocks("validation"), self.model,
                      seed=self.seed, runtime=ctx.runtime, on_snapshot=snapshot)
        self._train(method, steps, ctx)
        return method.ticket(steps)


@dataclass
class IMPSpec(TrainedSpec):
    """Iterative magnitude pruning on MLM with rewinding: 10 % of the original weights every ``imp_interval``."""

    method: ClassVar[Method] = Method.IMP
    needs_mlm_head: ClassVar[bool] = True
    late_fields: ClassVar[tuple[str, ...]] = ("optimizer", "weight_decay", "dense_decoder", "schedule_steps",
                                              "prune_first", "rewind")
    imp_interval: int = field(default=2792, metadata={"help": "MLM steps between 10 % prunings"})
    prune_first: bool = field(default=False, metadata={"help": (
        "prune before each interval: 0.7 costs 6 intervals (the reference's code) instead of 7 (ours)")})
    rewind: str = field(default="pretrained", metadata={"help": (
        "after each pruning: pretrained (ours, the paper: encoder + head) | encoder | none (the reference's code)")})

    def __post_init__(self) -> None:
        super().__post_init__()
        if abs(round(self.sparsity * 10) - self.sparsity * 10) > 1e-6:
            raise ValueError(f"IMP reaches multiples of 0.1 only, got sparsity {self.sparsity}")
        if round(self.sparsity * 10) < 1:  # no pruning round: no ticket (the dense model is method 'dense')
            raise ValueError(f"IMP needs a sparsity > 0 (0.1-0.9, a multiple of its 0.1 pruning step; the unpruned "
                             f"model is method 'dense'), got {self.sparsity}")
        if self.rewind not in ("pretrained", "encoder", "none"):
            raise ValueError(f"rewind must be pretrained, encoder or none, got {self.rewind!r}")

    def columns(self):
        return {"init": None, "objective": "mlm", "steps": self.run_steps()}

    def run_steps(self) -> int:
        return (round(self.sparsity * 10) - (1 if self.prune_first else 0)) * self.imp_interval

    def eval_every(self) -> int:
        return self.imp_interval

    def find(self, ctx):
        from .imp import IMP, IMPConfig

        cfg = IMPConfig(interval=self.imp_interval, target_sparsity=self.sparsity, batch_size=self.batch_size,
                        eval_blocks=min(ctx.eval_blocks, 32), prune_first=self.prune_first, rewind=self.rewind,
                        schedule_steps=self.schedule_steps, dense_decoder=self.dense_decoder)
        method = IMP(ctx.model, cfg, ctx.tokenizer, ctx.blocks("train"), ctx.blocks("validation"), self.model,
                     seed=self.seed, runtime=ctx.runtime)
        self._train(method, cfg.total_steps(), ctx)
        own = round(self.sparsity, 6)
        for s, t in method.tickets.items():  # every sparsity passed on the way is a ticket of its own spec
            if s != own:
                ctx.emit(dataclasses.replace(self, sparsity=s), t)
        return method.tickets[own]


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
