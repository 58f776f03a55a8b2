"""A ticket: binary masks keyed by prunable-weight name, plus metadata. Kept apart from weights.

On disk a ticket is a directory holding ``mask.safetensors`` (one bool tensor per prunable weight, keyed by the
base model's parameter name, e.g. ``encoder.layer.0.attention.self.query.weight``) and ``ticket.json`` (metadata).
Never pickle. Written atomically (a temp directory renamed into place), validated on load.

Mask keys are relative to the *base* model (``BertModel``/``RobertaModel``), so a ticket found with an MLM model
applies unchanged to a sequence-classification or question-answering model (the ``bert.``/``roberta.`` prefix is
added when the mask is applied).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MASK_FILE = "mask.safetensors"
META_FILE = "ticket.json"


class Method(str, enum.Enum):
    """How a ticket was found."""

    DENSE = "dense"
    OMP = "omp"
    RANDOM = "random"
    IMP = "imp"
    TAMT = "tamt"


OBJECTIVE_NAMES = {"mlm": "MLM", "kd": "KD", "mlm_kd": "MLM+KD", "mlm+kd": "MLM+KD"}


def _text(v: Any) -> str | None:
    """A label part from a value that may be an enum, None, NaN or '' (results frames hold all of these)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    s = str(v.value if isinstance(v, enum.Enum) else v).strip()
    return None if s == "" or s.lower() in ("none", "nan", "null", "<na>") else s


def method_label(method: Any, init: Any = None, objective: Any = None) -> str:
    """The one display label of a ticket's method: Dense, OMP, Random, IMP, TAMT-MLM, TAMT-KD, TAMT-MLM+KD, with
    ' (random init)' for TAMT from a random mask. Used by trial names, results rows, tables and figures."""
    m = (_text(method) or "?").lower()
    obj = (_text(objective) or "").lower()
    obj_name = OBJECTIVE_NAMES.get(obj, obj.upper())
    if m in ("dense", "omp", "random"):
        return {"dense": "Dense", "omp": "OMP", "random": "Random"}[m]
    if m == "imp":
        return "IMP" if obj in ("", "mlm") else f"IMP-{obj_name}"
    if m == "tamt":
        lab = f"TAMT-{obj_name}" if obj_name else "TAMT"
        return lab + (" (random init)" if (_text(init) or "omp").lower() == "random" else "")
    return m.upper()


class TicketError(ValueError):
    """A ticket file is malformed or does not match the model it is applied to."""


@dataclass
class TicketMeta:
    """Everything needed to say where a ticket came from."""

    model: str = field(metadata={"help": "source model (hub name, local dir or 'embedded-minilm')"})
    method: Method = field(metadata={"help": "dense | omp | random | imp | tamt"})
    sparsity: float = field(metadata={"help": "fraction of prunable weights removed"})
    init: str | None = field(default=None, metadata={"help": "TAMT mask init: omp | random"})
    objective: str | None = field(default=None, metadata={"help": "TAMT/IMP objective: mlm | kd | mlm_kd"})
    scope: str = field(default="per_matrix", metadata={"help": "per_matrix | global sparsity"})
    steps: int = field(default=0, metadata={"help": "training steps spent finding the ticket"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    config: dict[str, Any] = field(default_factory=dict, metadata={"help": "full finder config"})
    metrics: dict[str, float] = field(default_factory=dict, metadata={"help": "e.g. mlm_loss, kd_loss"})
    runtime: dict[str, str] = field(default_factory=dict, metadata={
        "help": "device type and precision it was found and evaluated in (not part of the ticket id)"})
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method"] = Method(self.method).value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TicketMeta":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TicketError(f"unknown ticket metadata keys {sorted(unknown)}")
        d = dict(d)
        d["method"] = Method(d["method"])
        return cls(**d)


@dataclass
class Ticket:
    """Masks (name -> bool tensor, True = kept) and their metadata."""

    masks: dict[str, torch.Tensor]
    meta: TicketMeta

    def __post_init__(self) -> None:
        for name, m in self.masks.items():
            if m.dtype != torch.bool:
                raise TicketError(f"mask {name!r} must be bool, got {m.dtype}")

    # ---- statistics -------------------------------------------------------------------------------------------
    def kept(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def total(self) -> int:
        return int(sum(m.numel() for m in self.masks.values()))

    def sparsity(self) -> float:
        """Overall fraction of masked-out prunable weights."""
        return 1.0 - self.kept() / max(self.total(), 1)

    def sparsity_per_matrix(self) -> dict[str, float]:
        return {n: 1.0 - float(m.sum()) / m.numel() for n, m in self.masks.items()}

    # ---- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a sibling temp dir is filled, then renamed over ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_file({n: m.detach().cpu().contiguous() for n, m in self.masks.items()}, str(tmp / MASK_FILE))
            (tmp / META_FILE).write_text(json.dumps(self.meta.to_json(), indent=2, sort_keys=True))
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ticket":
        path = Path(path)
        if not (path / MASK_FILE).is_file() or not (path / META_FILE).is_file():
            raise TicketError(f"{path}: not a ticket directory (needs {MASK_FILE} and {META_FILE})")
        try:
            meta = TicketMeta.from_json(json.loads((path / META_FILE).read_text()))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
            raise TicketError(f"{path / META_FILE}: bad metadata: {e}") from e
        masks = load_file(str(path / MASK_FILE))
        return cls(masks=masks, meta=meta)


def mask_file(path: str | os.PathLike) -> Path:
    """The mask file of a ticket directory (or ``path`` itself when it is the file). FileNotFoundError if absent."""
    p = Path(path)
    if p.is_dir():
        p = p / MASK_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no mask file at {p}")
    return p


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The raw ``ticket.json`` of a ticket directory (no validation: what analysis reads)."""
    return json.loads((Path(path) / META_FILE).read_text())


def read_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Only the masks of a ticket directory (no model, no metadata parsing): what analysis needs."""
    return load_file(str(Path(path) / MASK_FILE))


def config_hash(config: dict[str, Any], length: int = 16) -> str:
    """Content address of a config: sha256 of its canonical JSON."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def validate_masks(masks: dict[str, torch.Tensor], shapes: dict[str, torch.Size], where: str = "model") -> None:
    """Raise TicketError unless ``masks`` has exactly the names of ``shapes`` with the same shapes."""
    missing = sorted(set(shapes) - set(masks))
    extra = sorted(set(masks) - set(shapes))
    if missing or extra:
        raise TicketError(
            f"mask names do not match the {where}: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
            f" ({len(missing)}), unexpected {extra[:3]}{'...' if len(extra) > 3 else ''} ({len(extra)})"
        )
    for n, m in masks.items():
        if tuple(m.shape) != tuple(shapes[n]):
            raise TicketError(f"mask {n!r} has shape {tuple(m.shape)}, the {where}'s weight {tuple(shapes[n])}")
