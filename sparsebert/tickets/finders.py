"""The finder registry: every finder method's spec, by :class:`~sparsebert.tickets.ticket.Method` (no Ray here).

A finder is one module holding its spec (:mod:`sparsebert.tickets.finder_base`: the spec is the method's config, each knob
defined once) plus one line in :data:`SPECS`. Its labels, colours and figure order travel on the spec; trial names,
results rows, tables, figures and column docs derive them from here (:func:`method_label`, :func:`label_order`,
:func:`label_colours`). :func:`finder_spec` builds the spec for a search space's ticket dict, whose shared ``ticket``
section may hold keys for the other methods of its variants (ignored, but still checked). The one-shot methods
(dense, OMP, random) are small enough to live here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from sparsebert.tickets.finder_base import (DEFAULT_TEXT, FindContext, FinderSpec, TrainedSpec,  # noqa: F401  (re-exported)
                          text_part, to_enum)
from sparsebert.tickets.imp import IMPSpec
from sparsebert.engine.knobs import knob
from sparsebert.tickets.pruning import Scope, dense_ticket, omp_ticket, random_ticket
from sparsebert.tickets.tamt import TAMTSpec
from sparsebert.tickets.ticket import Method


@dataclass
class DenseSpec(FinderSpec):
    """The full model as a ticket (all-ones masks): the reference point of every comparison."""

    method: ClassVar[Method] = Method.DENSE
    styles: ClassVar[dict[str, str]] = {"Dense": "black"}
    order: ClassVar[int] = 0
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
    styles: ClassVar[dict[str, str]] = {"OMP": "tab:orange"}
    order: ClassVar[int] = 3
    scope: Scope = knob(Scope.PER_MATRIX, "per_matrix | global")

    def __post_init__(self) -> None:
        self.scope = to_enum(Scope, self.scope, "scope")
        super().__post_init__()

    def find(self, ctx):
        return omp_ticket(ctx.model.base, self.model, self.sparsity, self.scope.value)


@dataclass
class RandomSpec(OMPSpec):
    """Uniformly random pruning (seeded)."""

    method: ClassVar[Method] = Method.RANDOM
    styles: ClassVar[dict[str, str]] = {"Random": "tab:gray"}
    order: ClassVar[int] = 4
    seed: int = knob(0, "random mask seed")

    def find(self, ctx):
        return random_ticket(ctx.model.base, self.model, self.sparsity, self.seed, self.scope.value)


#: every finder, in table order (one line per finder)
SPECS: dict[Method, type[FinderSpec]] = {c.method: c for c in (DenseSpec, OMPSpec, RandomSpec, IMPSpec, TAMTSpec)}


def method_label(method: Any, init: Any = None, objective: Any = None) -> str:
    """The one display label of a ticket's method (its spec's :meth:`~FinderSpec.display`): Dense, OMP, Random, IMP,
    TAMT-MLM, TAMT-KD, TAMT-MLM+KD, with ' (random init)' for TAMT from a random mask. Used by trial names, results
    rows, tables and figures; an unknown method is shown upper-cased."""
    m = (text_part(method) or "?").lower()
    try:
        cls = SPECS[Method(m)]
    except ValueError:
        return m.upper()
    return cls.display(text_part(init), text_part(objective))


def label_order() -> list[str]:
    """Every registered label in table order (the registry's, then each spec's own)."""
    return [lab for cls in SPECS.values() for lab in cls.styles]


def figure_order() -> list[str]:
    """Every registered label in figure and legend order (each spec's ``order``)."""
    return [lab for cls in sorted(SPECS.values(), key=lambda c: c.order) for lab in cls.styles]


def label_colours() -> dict[str, str]:
    """Registered label -> figure colour."""
    return {lab: col for cls in SPECS.values() for lab, col in cls.styles.items()}


def all_fields() -> dict[str, type[FinderSpec]]:
    """Every ticket key -> the first spec class that has it."""
    out: dict[str, type[FinderSpec]] = {}
    for cls in SPECS.values():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, cls)
    return out


def ticket_config(trial_config: dict[str, Any]) -> dict[str, Any]:
    """A trial's ticket: the space's common ``ticket`` section overlaid with the trial's ``variant``."""
    return {**(trial_config.get("ticket") or {}), **(trial_config.get("variant") or {})}


def finder_spec(d: dict[str, Any]) -> FinderSpec:
    """The spec for a ticket dict (``method`` picks the class; default omp). Keys that belong to other methods are
    checked by their owner and then ignored; unknown keys raise ValueError."""
    d = dict(d)
    method = to_enum(Method, d.pop("method", Method.OMP.value), "method")
    cls, owners = SPECS[method], all_fields()
    unknown = set(d) - set(owners)
    if unknown:
        raise ValueError(f"unknown ticket keys {sorted(unknown)}; valid: {sorted({'method', *owners})}")
    own = {f.name for f in dataclasses.fields(cls)}
    for k in set(d) - own:  # a shared ticket section's key for another variant's method: still a valid value
        owners[k](**{k: d[k]})
    return cls(**{k: v for k, v in d.items() if k in own})
