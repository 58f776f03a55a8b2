"""One-shot pruning: OMP (magnitude) and random masks, per matrix (default) or global, and the tickets they make.

Per-matrix sparsity s keeps exactly ``n - round(s * n)`` weights of every matrix (ties broken by ``torch.topk``);
the global variant keeps the largest-magnitude weights over all prunable matrices together.
"""

from __future__ import annotations

import enum

import torch
from torch import nn

from sparsebert.tickets.masking import num_pruned
from sparsebert.models.registry import prunable_weights
from sparsebert.tickets.ticket import Method, Ticket, TicketMeta

class Scope(str, enum.Enum):
    """Where the sparsity is held: every matrix exactly (the reference) or overall (one threshold for all)."""

    PER_MATRIX = "per_matrix"
    GLOBAL = "global"


def check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def _topk_mask(values: torch.Tensor, n_kept: int) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    if n_kept > 0:
        mask[torch.topk(values.flatten(), n_kept, sorted=False).indices] = True
    return mask.view(values.shape)


def magnitude_masks(
    weights: dict[str, torch.Tensor], sparsity: float, scope: Scope = "per_matrix"
) -> dict[str, torch.Tensor]:
    """Keep the largest-|w| entries: per matrix (each exactly at ``sparsity``) or globally over all matrices."""
    s = check_sparsity(sparsity)
    if scope == "per_matrix":
        return {
            n: _topk_mask(w.detach().abs().cpu(), w.numel() - num_pruned(w.numel(), s))
            for n, w in weights.items()
        }
    if scope != "global":
        raise ValueError(f"scope must be 'per_matrix' or 'global', got {scope!r}")
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().flatten().cpu().float() for n in names])
    keep = _topk_mask(flat, flat.numel() - num_pruned(flat.numel(), s))
    out, start = {}, 0
    for n in names:
        k = weights[n].numel()
        out[n] = keep[start : start + k].view(weights[n].shape)
        start += k
    return out


def random_masks(
    shapes: dict[str, torch.Size], sparsity: float, seed: int, scope: Scope = "per_matrix"
) -> dict[str, torch.Tensor]:
    """Uniformly random masks (seeded): exactly ``sparsity`` per matrix, or overall with ``scope='global'``."""
    s = check_sparsity(sparsity)
    g = torch.Generator().manual_seed(int(seed))
    if scope == "per_matrix":
        return {n: _topk_mask(torch.rand(tuple(shape), generator=g), _kept(shape, s)) for n, shape in shapes.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'per_matrix' or 'global', got {scope!r}")
    return magnitude_masks({n: torch.rand(tuple(sh), generator=g) for n, sh in shapes.items()}, s, "global")


def _kept(shape, s: float) -> int:
    n = int(torch.Size(shape).numel())
    return n - num_pruned(n, s)


def omp_ticket(model: nn.Module, model_name: str, sparsity: float, scope: Scope = "per_matrix") -> Ticket:
    """One-shot magnitude pruning of the model's (pre-trained) prunable weights."""
    masks = magnitude_masks(prunable_weights(model), sparsity, scope)
    meta = TicketMeta(model=model_name, method=Method.OMP, sparsity=float(sparsity), scope=scope)
    return Ticket(masks, meta)


def random_ticket(
    model: nn.Module, model_name: str, sparsity: float, seed: int, scope: Scope = "per_matrix"
) -> Ticket:
    shapes = {n: w.shape for n, w in prunable_weights(model).items()}
    masks = random_masks(shapes, sparsity, seed, scope)
    meta = TicketMeta(model=model_name, method=Method.RANDOM, sparsity=float(sparsity), scope=scope, seed=seed)
    return Ticket(masks, meta)


def dense_ticket(model: nn.Module, model_name: str) -> Ticket:
    """All-ones masks: the full model expressed as a ticket (the dense baseline runs through the same code)."""
    masks = {n: torch.ones(w.shape, dtype=torch.bool) for n, w in prunable_weights(model).items()}
    return Ticket(masks, TicketMeta(model=model_name, method=Method.DENSE, sparsity=0.0))
