"""Stored tickets outside a search: export one as a Hugging Face model directory, list a store's tickets.

Ray-free (only torch, transformers, pandas and the core): the ``export`` / ``tickets`` commands of
``run_search.py`` call it, and so may any script.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from sparsebert.tickets.finders import method_label
from sparsebert.tickets.ticket import MASK_FILE, META_FILE, Ticket, TicketError, config_hash, read_masks, \
    read_meta

TICKETS_DIR = "tickets"
CARD_FILE = "README.md"
RESULT_FILES = ("results.parquet", "results.csv")


def resolve_ticket(ticket: str | os.PathLike, store: str | os.PathLike = "results") -> Path:
    """A ticket id in ``<store>/tickets/<id>/`` or a path to a ticket directory -> that directory.
    TicketError (naming ``ticket``) if neither holds a ticket."""
    p = Path(ticket).expanduser()
    for cand in (p, Path(store).expanduser() / TICKETS_DIR / str(ticket)):
        if (cand / MASK_FILE).is_file() and (cand / META_FILE).is_file():
            return cand
    raise TicketError(f"no ticket {str(ticket)!r}: neither a ticket directory nor an id in "
                      f"{Path(store) / TICKETS_DIR}")


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _card(ticket: Ticket, ticket_id: str, sparsity: float, source: Path) -> str:
    meta = ticket.meta
    label = method_label(meta.method, meta.init, meta.objective)
    m = meta.metrics or {}
    runtime = ", ".join(f"{k} {v}" for k, v in (meta.runtime or {}).items()) or "n/a"
    return f"""---
library_name: transformers
tags:
- sparse
- lottery-ticket
- pruning
---

# {label} ticket `{ticket_id}` of `{meta.model}`

A sparse subnetwork (a "lottery ticket") of `{meta.model}`, found by **{label}**
(scope {meta.scope}, seed {meta.seed}) and exported from `{source}`.

| | |
|---|---|
| method | {label} |
| sparsity (measured from the masks) | {sparsity:.4f} ({ticket.kept():,} of {ticket.total():,} prunable weights kept) |
| sparsity (target) | {meta.sparsity} |
| finder training steps | {meta.steps} |
| MLM loss | {_fmt(m.get("mlm_loss"))} |
| KD loss | {_fmt(m.get("kd_loss"))} |
| ticket id | `{ticket_id}` |
| config hash | `{config_hash(meta.config) if meta.config else "n/a"}` |
| source model | `{meta.model}` |
| found on | {runtime} |

The masks are applied and baked: every pruned weight is stored as exactly 0, so the model loads with plain
`transformers` (`AutoModel.from_pretrained(...)`, or any task model on top of it) and computes the masked
network. Fine-tuning it updates the zeros too unless the masks are re-applied: `mask.safetensors` (one bool
tensor per prunable weight, True = kept, keyed by the base model's parameter names) and `ticket.json` (the full
finder config and metrics) are copied beside the weights for that.

The word-embedding matrix is one of the prunable matrices; its mask is baked into the embedding and therefore
into the (tied) MLM decoder as well: a masked-LM head loaded on top of this model predicts with the masked
embedding.
"""


def export_ticket(ticket: str | os.PathLike, out: str | os.PathLike | None = None, *,
                  store: str | os.PathLike = "results", overwrite: bool = False) -> Path:
    """Write the ticket's base model with its masks baked in as a Hugging Face model directory (safetensors,
    tokenizer, ``mask.safetensors``, ``ticket.json``, ``README.md`` card). Returns the directory.

    TicketError if the ticket is not found; FileExistsError if ``out`` is non-empty and not ``overwrite``."""
    from sparsebert.tickets.masking import apply_masks, bake
    from sparsebert.models.loading import load_pretraining_model, load_tokenizer

    src = resolve_ticket(ticket, store)
    t = Ticket.load(src)
    ticket_id = src.name  # a store's directory name is the id (the hash of the finder config)
    out = Path(out) if out is not None else Path("exported") / ticket_id
    if out.is_symlink():  # --overwrite would empty (or rmtree refuse) whatever the link points to
        raise FileExistsError(f"{out} is a symlink (to {os.readlink(out)}): give a real directory as --out; "
                              f"nothing was written or removed")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty: pass --overwrite")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    model = load_pretraining_model(t.meta.model)
    base = model.base
    apply_masks(base, t)
    bake(base)
    out.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out, safe_serialization=True)
    load_tokenizer(t.meta.model).save_pretrained(out)
    shutil.copy2(src / MASK_FILE, out / MASK_FILE)
    shutil.copy2(src / META_FILE, out / META_FILE)
    (out / CARD_FILE).write_text(_card(t, ticket_id, t.sparsity(), src))
    return out


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _experiment_ids(store: Path) -> dict[str, set[str]]:
    """Experiment name -> the ticket ids in its results (subdirectories of ``store`` holding results)."""
    out: dict[str, set[str]] = {}
    for d in sorted(p for p in store.iterdir() if p.is_dir() and p.name != TICKETS_DIR):
        for fname in RESULT_FILES:
            f = d / fname
            if not f.is_file():
                continue
            try:
                df = pd.read_parquet(f, columns=["ticket_id"]) if f.suffix == ".parquet" \
                    else pd.read_csv(f, usecols=["ticket_id"])
            except Exception:  # a results file without the column or unreadable: try the other format
                continue
            out[d.name] = {str(v) for v in df["ticket_id"].dropna()}
            break
    return out


TABLE_COLUMNS = ("id", "model", "method", "sparsity", "steps", "mlm_loss", "kd_loss", "size", "experiments")


def ticket_table(store: str | os.PathLike = "results") -> pd.DataFrame:
    """One row per ticket in ``<store>/tickets/``: id, model, method label, sparsity (measured from the masks),
    steps, MLM / KD loss, size on disk (``size`` text, ``size_bytes``) and the experiments of ``store`` whose
    results name it. FileNotFoundError if ``store`` is not a directory."""
    store = Path(store).expanduser()
    if not store.is_dir():
        raise FileNotFoundError(f"no ticket store at {store}")
    tdir = store / TICKETS_DIR
    used = _experiment_ids(store)
    rows = []
    for d in sorted(tdir.iterdir()) if tdir.is_dir() else []:
        # quarantined tickets (<id>.corrupt-<time>) and symlinks (someone else's directory) are not tickets
        if d.is_symlink() or not d.is_dir() or d.name.startswith(".") or ".corrupt-" in d.name \
                or not (d / META_FILE).is_file() or not (d / MASK_FILE).is_file():
            continue
        try:
            meta = read_meta(d)
            masks = read_masks(d)
        except Exception:  # a damaged ticket: list it, marked
            meta, masks = {"model": "?", "method": "unreadable"}, {}
        total = sum(m.numel() for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        metrics = meta.get("metrics") or {}
        size = _dir_size(d)
        rows.append({
            "id": d.name, "model": meta.get("model"),
            "method": method_label(meta.get("method"), meta.get("init"), meta.get("objective")),
            "sparsity": 1.0 - kept / total if total else float("nan"), "steps": meta.get("steps"),
            "mlm_loss": metrics.get("mlm_loss"), "kd_loss": metrics.get("kd_loss"), "size": _human(size),
            "experiments": ", ".join(name for name, ids in used.items() if d.name in ids),
            "size_bytes": size,
        })
    return pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "size_bytes"])


def format_table(df: pd.DataFrame) -> str:
    """The table as ``run_search.py tickets`` prints it."""
    show = df[list(TABLE_COLUMNS)].copy()
    show["sparsity"] = show["sparsity"].map(lambda v: _fmt(v, ".3f"))
    for c in ("mlm_loss", "kd_loss"):
        show[c] = show[c].map(_fmt)
    show["experiments"] = show["experiments"].replace("", "-")
    return show.to_string(index=False)
