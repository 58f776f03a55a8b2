"""What every finder spec shares (no Ray here). A finder is one module holding its spec (a subclass of
:class:`FinderSpec` or :class:`TrainedSpec`) registered in :data:`sparsebert.tickets.finders.SPECS`.

A spec is its method's config: it holds exactly the fields its method uses, each defined once with a one-line help,
a type and a range (:mod:`sparsebert.engine.knobs`), checked in ``__post_init__``. It carries its display labels, their
figure colours and its place in the figures, so tables, figures and trial names derive from the registry. Its
canonical form (its fields, enums as their values) is hashed into the ticket id, so the same spec is never trained
twice. Knobs added after tickets were stored enter the id only when they differ from their default, so older ids
stay valid. ``spec.find(ctx)`` returns the ticket the spec names and hands every sibling ticket found on the way to
``ctx.emit`` at once, each a ticket of its own spec.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from sparsebert.text.batching import DATA_ORDER
from sparsebert.text.data import TextDataConfig
from sparsebert.engine.knobs import check_knobs, knob, like
from sparsebert.tickets.pruning import check_sparsity
from sparsebert.engine.runtime import CPU, Runtime
from sparsebert.tickets.ticket import Method, Ticket, config_hash
from sparsebert.engine.training import CHECKPOINT_FILE, TrainConfig, train

DEFAULT_TEXT = {"source": "embedded", "block_size": 128}
OBJECTIVE_NAMES = {"mlm": "MLM", "kd": "KD", "mlm_kd": "MLM+KD", "mlm+kd": "MLM+KD"}


@dataclass
class FindContext:
    """What finding a ticket needs besides its spec (see :func:`sparsebert.tickets.pipeline.make_ticket`)."""

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


def text_part(v: Any) -> str | None:
    """A label part from a value that may be an enum, None, NaN or '' (results frames hold all of these)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    s = str(v.value if isinstance(v, enum.Enum) else v).strip()
    return None if s == "" or s.lower() in ("none", "nan", "null", "<na>") else s


def to_enum(kind: type[enum.Enum], value: Any, name: str):
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid {kind.__name__} (the {name} must be one of "
                         f"{[m.value for m in kind]})") from None


@dataclass
class FinderSpec:
    """Fields every method has. Subclasses add their own and implement :meth:`find`."""

    method: ClassVar[Method]
    #: display label -> figure colour, in table order (most methods have one label; TAMT one per objective)
    styles: ClassVar[dict[str, str]] = {}
    #: place of the method's labels in figures and legends (lower first)
    order: ClassVar[int] = 99
    needs_mlm_head: ClassVar[bool] = False
    #: fields that enter the id only when they differ from their default (added after tickets were stored)
    late_fields: ClassVar[tuple[str, ...]] = ()
    model: str = knob("embedded-minilm", "hub name, local dir or 'embedded-minilm'")
    sparsity: float = knob(0.5, "fraction of prunable weights removed, in [0, 1)")

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        check_knobs(self)

    @classmethod
    def display(cls, init: str | None = None, objective: str | None = None) -> str:
        """The label of a ticket of this method (``init`` / ``objective`` as results rows hold them)."""
        return next(iter(cls.styles))

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
        return self.display(text_part(getattr(self, "init", None)), text_part(getattr(self, "objective", None)))

    def columns(self) -> dict[str, Any]:
        """init / objective / steps as a results row shows them (None where the method has no such thing)."""
        return {"init": None, "objective": None, "steps": 0}

    def train_text(self) -> dict | None:
        """The pre-training text section this finder reads (None: it reads none); the driver tokenizes it once."""
        return None

    def text_config(self) -> TextDataConfig | None:
        text = self.train_text()
        return None if text is None else TextDataConfig(**text)

    def find(self, ctx: FindContext) -> Ticket:
        raise NotImplementedError


@dataclass
class TrainedSpec(FinderSpec):
    """Fields of the methods that train on pre-training text (TAMT, IMP)."""

    lr: float = like(TrainConfig, "lr")
    batch_size: int = knob(16, "sequences per step", min=1)
    seed: int = like(TrainConfig, "seed", help="data order, masking and dropout seed (TAMT: also random init)")
    text: dict = knob(help="pre-training text: TextDataConfig fields", factory=lambda: dict(DEFAULT_TEXT))
    optimizer: str = like(TrainConfig, "optimizer")
    weight_decay: float = like(TrainConfig, "weight_decay")
    schedule_steps: int = like(TrainConfig, "schedule_steps", help="length of the linear LR decay (0: the end of "
                               "the run (TAMT) / one interval (IMP); the reference: 2 epochs)")
    dense_decoder: bool = knob(False, "MLM decoder = the dense pre-trained embedding (the reference's code)")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.text) - {f.name for f in dataclasses.fields(TextDataConfig)}
        if unknown:
            raise ValueError(f"unknown text keys {sorted(unknown)}")

    def train_text(self) -> dict:
        return self.text

    def canonical(self) -> dict[str, Any]:
        # the data order the run draws its batches in (sparsebert.text.batching.DATA_ORDER): a ticket trained in
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
