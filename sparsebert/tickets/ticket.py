"""A ticket: binary masks keyed by prunable-weight name, plus metadata. Kept apart from weights.

On disk a ticket is a directory holding ``mask.safetensors`` (one bool tensor per prunable weight, keyed by the
base model's parameter name, e.g. ``encoder.layer.0.attention.self.query.weight``) and ``ticket.json`` (metadata).
Never pickle. Written atomically and durably (a temp directory, its files and itself fsynced, renamed into place),
verified on every load: ``ticket.json`` holds the sha256 of ``mask.safetensors`` (``mask_sha256``), which must match
the file, and the sparsity computed from the masks (overall, and per matrix for ``per_matrix`` tickets) must match the
metadata's. Any failure is a :class:`TicketError` naming the ticket (its directory name: in a store, the ticket id)
and the path. Tickets saved before the checksum existed (no ``mask_sha256``) still load: only their sparsity (and
the bool bytes) can be checked.

Mask keys are relative to the *base* model (``BertModel``/``RobertaModel``), so a ticket found with an MLM model
applies unchanged to a sequence-classification or question-answering model (the ``bert.``/``roberta.`` prefix is
added when the mask is applied).
"""

from __future__ import annotations

import contextlib
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
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from sparsebert.engine.fsutil import fsync_dir

MASK_FILE = "mask.safetensors"
META_FILE = "ticket.json"


class Method(str, enum.Enum):
    """How a ticket was found: one member per finder (its spec is registered in :data:`sparsebert.tickets.finders.SPECS`,
    which carries its labels, colours and figure order)."""

    DENSE = "dense"
    OMP = "omp"
    RANDOM = "random"
    IMP = "imp"
    TAMT = "tamt"


class TicketError(ValueError):
    """A ticket file is malformed or does not match the model it is applied to."""


@dataclass
class TicketMeta:
    """Everything needed to say where a ticket came from."""

    model: str = field(metadata={"help": "source model (hub name, local dir or 'embedded-minilm')"})
    method: Method = field(metadata={"help": " | ".join(m.value for m in Method)})
    sparsity: float = field(metadata={"help": "fraction of prunable weights removed"})
    init: str | None = field(default=None, metadata={"help": "TAMT mask init: omp | random"})
    objective: str | None = field(default=None, metadata={"help": "TAMT/IMP objective: mlm | kd | mlm_kd"})
    scope: str = field(default="per_matrix", metadata={"help": "per_matrix | global sparsity"})
    steps: int = field(default=0, metadata={"help": "training steps spent finding the ticket"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    config: dict[str, Any] = field(default_factory=dict, metadata={"help": "full finder config"})
    metrics: dict[str, float | str] = field(default_factory=dict, metadata={
        "help": "e.g. mlm_loss, kd_loss; mlm_head_sha256: the MLM head the mlm_loss was measured with"})
    runtime: dict[str, str] = field(default_factory=dict, metadata={
        "help": "device type and precision it was found and evaluated in (not part of the ticket id)"})
    created: float = field(default_factory=time.time)
    mask_sha256: str | None = field(default=None, metadata={
        "help": "sha256 of mask.safetensors, checked by every load (None: saved before checksums)"})

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
        """Write atomically and durably: a sibling temp dir is filled (``mask.safetensors``, then ``ticket.json``
        with the mask file's sha256), both files and the dir are fsynced, the dir is renamed over ``path`` and the
        parent fsynced. Sets ``meta.mask_sha256``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            blob = safetensors_bytes({n: m.detach().cpu().contiguous() for n, m in self.masks.items()})
            self.meta.mask_sha256 = hashlib.sha256(blob).hexdigest()
            _write_synced(tmp / MASK_FILE, blob)
            _write_synced(tmp / META_FILE, json.dumps(self.meta.to_json(), indent=2, sort_keys=True).encode())
            fsync_dir(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ticket":
        """Read and verify a ticket directory: the mask file's sha256 against ``ticket.json`` (tickets saved before
        the checksum existed have none and still load), every mask a valid bool tensor, and the sparsity the masks
        have (overall; and per matrix for ``per_matrix`` scope) against the metadata's. Raises :class:`TicketError`
        naming the ticket id and the path for anything missing, unreadable or inconsistent."""
        path = Path(path)
        if not (path / MASK_FILE).is_file() or not (path / META_FILE).is_file():
            raise _error(path, f"not a ticket directory (needs {MASK_FILE} and {META_FILE})")
        links = [f for f in (path, path / MASK_FILE, path / META_FILE) if f.is_symlink()]
        if links:  # a ticket's files are its own: nothing is read through a link to someone else's file
            raise _error(path, f"{links[0]} is a symlink (to {os.readlink(links[0])}), not a ticket's own file")
        try:
            meta = TicketMeta.from_json(json.loads((path / META_FILE).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, ValueError, OSError) as e:
            raise _error(path / META_FILE, f"bad metadata: {type(e).__name__}: {e}") from e
        masks = _read_mask_file(path, meta.mask_sha256)
        try:
            ticket = cls(masks=masks, meta=meta)
        except TicketError as e:
            raise _error(path / MASK_FILE, str(e)) from e
        check_sparsity_matches(masks, meta.sparsity, meta.scope, where=f"ticket {path.name} at {path}")
        return ticket


def _error(path: Path, msg: str) -> TicketError:
    """A TicketError naming the ticket (its directory: the id in a store) and the offending path."""
    tid = path.parent.name if path.name in (MASK_FILE, META_FILE) else path.name
    return TicketError(f"ticket {tid} at {path}: {msg}")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_mask_file(ticket_dir: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    """The masks of ``ticket_dir``, checked against ``sha256`` (None: unchecked, an old-format ticket), each a bool
    tensor whose bytes are all 0/1. TicketError (id and path) otherwise."""
    f = ticket_dir / MASK_FILE
    try:
        if sha256 is not None:
            actual = file_sha256(f)
            if actual != sha256:
                raise _error(f, f"checksum mismatch: sha256 {actual}, ticket.json says {sha256} (the file is "
                                f"damaged or was replaced)")
        masks = load_file(str(f))
    except TicketError:
        raise
    except Exception as e:  # SafetensorError (a pickle, a truncated file), OSError, ...
        raise _error(f, f"unreadable mask file: {type(e).__name__}: {e}") from e
    for name, m in masks.items():
        if m.dtype != torch.bool:
            raise _error(f, f"mask {name!r} must be bool, got {m.dtype}")
        if m.numel() and int(m.view(torch.uint8).max()) > 1:  # flipped bits: torch reads any non-zero byte as True
            raise _error(f, f"mask {name!r} holds bytes other than 0/1 (the file is damaged)")
    return masks


def check_sparsity_matches(masks: dict[str, torch.Tensor], sparsity: float, scope: str = "per_matrix",
                           where: str = "ticket") -> None:
    """TicketError unless the masks are as sparse as the metadata says. Tolerances allow rounding only: a matrix of
    n weights may be 1/n off (``round`` vs ``floor`` of ``n * sparsity``); overall, per-matrix tickets may be
    (number of matrices)/N off (each matrix rounds once), global ones 1/N (one rounding), and never less than 1e-6."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise TicketError(f"{where}: ticket.json sparsity {sparsity!r} is not a number") from None
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        if s != 0:
            raise TicketError(f"{where}: no mask entries, but ticket.json says sparsity {s}")
        return
    kept = sum(int(m.sum()) for m in masks.values())
    overall = 1.0 - kept / total
    scope = str(getattr(scope, "value", scope))
    per_matrix = scope != "global"
    tol = max(1e-6, (len(masks) if per_matrix else 1) / total) + 1e-12
    if abs(overall - s) > tol:
        raise TicketError(f"{where}: masks have sparsity {overall:.6f}, ticket.json says {s} (tolerance {tol:.2g})")
    if per_matrix:
        for name, m in masks.items():
            n = m.numel()
            if n == 0:
                continue
            ms = 1.0 - int(m.sum()) / n
            if abs(ms - s) > 1.0 / n + 1e-12:
                raise TicketError(f"{where}: mask {name!r} has sparsity {ms:.6f}, ticket.json says {s} per matrix "
                                  f"(tolerance 1/{n})")


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
    """Only the masks of a ticket directory (no model, no metadata parsing): what analysis needs. The mask file is
    still verified against the sha256 in ``ticket.json`` when there is one; TicketError (id and path) if damaged."""
    path = Path(path)
    sha = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sha = json.loads((path / META_FILE).read_text()).get("mask_sha256")
    return _read_mask_file(path, sha)


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


def check_address(ticket: Ticket, ticket_id: str, path: Path) -> None:
    """TicketError unless ``ticket_id`` is the hash of the finder spec recorded in the ticket's ``ticket.json``
    (a ticket's content is its address)."""
    got = config_hash(ticket.meta.config) if ticket.meta.config else None
    if got != ticket_id:
        raise TicketError(f"ticket {ticket_id} at {path}: ticket.json's spec hashes to {got} "
                          f"({ticket.meta.method.value} s={ticket.meta.sparsity} of {ticket.meta.model}), not to "
                          f"its id {ticket_id}: it is another ticket copied or moved here")


def check_fits(ticket: Ticket, model: str, path: Path) -> None:
    """TicketError unless the ticket's masks are exactly the prunable weights of ``model`` (names and shapes)."""
    from sparsebert.models.loading import prunable_shapes

    try:
        validate_masks(ticket.masks, prunable_shapes(model), where=f"model {model}")
    except TicketError as e:
        raise TicketError(f"ticket {path.name} at {path}: {e}") from None
