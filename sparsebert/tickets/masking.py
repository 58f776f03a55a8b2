"""The one mask mechanism: ``torch.nn.utils.parametrize`` on each prunable weight.

``module.weight`` becomes ``original * mask`` computed on access; the stored weight stays in
``module.parametrizations.weight.original``. Two parametrizations share this file:

* :class:`FixedMask` — a fixed binary mask (OMP, random, IMP, fine-tuning, evaluation).
* :class:`ScoreMask` — TAMT's trainable real-valued scores, binarized in the forward pass (threshold ``S > tau``
  or exact top-k) with a straight-through gradient to the scores.

A word-embedding mask also applies to a decoder tied to it (an MLM head), so the masked model and its baked export
compute the same function. :func:`bake` removes the parametrizations leaving the pruned weights at exactly zero: the
result is a plain Hugging Face model that ``save_pretrained``/``from_pretrained`` round-trip.

Fine-tuning and fixed-mask evaluation need no parametrization at all (:func:`bake_ticket`, :class:`GradMask`): the
ticket's zeros are written into the weights and, when training, the pruned entries' gradients are zeroed after
backward with one batched multiply (``torch._foreach_mul_``), so AdamW (its decoupled weight decay included:
``w - lr * wd * w`` is 0 at w = 0) leaves them exactly zero. A plain model is what ``torch.compile`` and CUDA graphs
handle best, and a step does no mask work in the forward.
"""

from __future__ import annotations

import enum
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsebert.models.registry import prunable_modules
from sparsebert.tickets.ticket import Ticket, validate_masks


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a masked weight is computed in: autocast's (bf16/fp16) when autocast is on for the weight's
    device, else the weight's own. Computing the product in that dtype (once per step under
    ``parametrize.cached()``) spares every matmul a cast of the fp32 weight."""
    kind = weight.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


class FixedMask(nn.Module):
    """weight -> weight * mask, mask fixed (kept in the weight's dtype so the product needs no conversion; under
    autocast both are cast to the compute dtype first)."""

    def __init__(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("mask", mask.to(dtype), persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(weight)
        if dtype != weight.dtype:
            return weight.to(dtype) * self.mask.to(dtype)
        return weight * self.mask

    def binary_mask(self) -> torch.Tensor:
        return self.mask.bool()


class _StraightThroughThreshold(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _StraightThroughTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, n_kept: int) -> torch.Tensor:
        out = torch.zeros_like(scores)
        if n_kept > 0:
            idx = torch.topk(scores.flatten(), n_kept, sorted=False).indices
            out.view(-1)[idx] = 1.0
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def num_pruned(numel: int, sparsity: float, rule: str = "round") -> int:
    """Weights removed from a matrix of ``numel`` at ``sparsity``: ``round(sparsity * numel)`` (the rule of
    ``torch.nn.utils.prune``; every pruning method uses it) or, with ``rule="floor"``, ``int(sparsity * numel)``
    (the reference's TAMT threshold reset)."""
    if rule == "floor":
        return int(sparsity * numel)
    if rule != "round":
        raise ValueError(f"pruned-count rule must be 'round' or 'floor', got {rule!r}")
    return int(round(sparsity * numel))


class Binarizer(str, enum.Enum):
    """How TAMT's scores become a mask: ``1[S > tau]`` with tau reset every K steps (the reference) or exact top-k."""

    THRESHOLD = "threshold"
    TOPK = "topk"


BinarizerKind = Literal["threshold", "topk"]


class ScoreMask(nn.Module):
    """TAMT: weight -> weight * 1[S > tau] (or top-k of S), straight-through gradient dL/dS := dL/dM.

    ``tau`` is a per-matrix buffer; :meth:`reset_threshold` sets it to the k-th smallest score (k = pruned count)
    so the matrix is exactly at ``sparsity`` again (the reference does this every K steps and before every save).
    With ``binarizer="topk"`` the mask is the exact top-(n-k) of the scores at every step.
    """

    def __init__(
        self,
        init_mask: torch.Tensor,
        sparsity: float,
        binarizer: BinarizerKind = "threshold",
        kept_score: float = 0.02,
        pruned_score: float = 0.0,
        threshold: float = 0.01,
        count_rule: str = "round",
    ):
        super().__init__()
        self._cast: tuple | None = None  # (key, the frozen weight in the compute dtype): cast once per run
        scores = torch.where(init_mask.bool(), kept_score, pruned_score).to(torch.float32)
        self.scores = nn.Parameter(scores)
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.sparsity = float(sparsity)
        self.binarizer = binarizer
        self.n_kept = init_mask.numel() - num_pruned(init_mask.numel(), sparsity, count_rule)

    def mask_values(self) -> torch.Tensor:
        if self.binarizer == "topk":
            return _StraightThroughTopK.apply(self.scores, self.n_kept)
        return _StraightThroughThreshold.apply(self.scores, self.threshold)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(weight)
        return self.cast_weight(weight, dtype) * self.mask_values().to(dtype)

    def cast_weight(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``weight`` in ``dtype``: a frozen weight (TAMT's) is cast once and the copy reused while the weight is
        unchanged (same storage, same version); a trainable one, or inside torch.compile, every call."""
        if dtype == weight.dtype or weight.requires_grad or torch.compiler.is_compiling():
            return weight.to(dtype)
        key = (dtype, weight.device, weight.data_ptr(), weight._version)
        if self._cast is None or self._cast[0] != key:
            self._cast = (key, weight.detach().to(dtype))
        return self._cast[1]

    @torch.no_grad()
    def reset_threshold(self) -> None:
        """tau := the k-th smallest score, so that exactly n - k scores exceed it. Scores tied at tau (rows of
        the embedding that no batch touched keep their init value exactly) would make ``S > tau`` drop a whole
        tie group; the tied entries needed to fill the quota (currently kept ones first, then by index) are
        raised by one ulp, so the mask is exact."""
        k = self.scores.numel() - self.n_kept
        if k <= 0:
            self.threshold.fill_(float("-inf"))
            return
        flat = self.scores.data.view(-1)
        was_kept = self.mask_values().detach().view(-1) > 0
        tau = torch.kthvalue(flat, k).values
        self.threshold.copy_(tau)
        deficit = self.n_kept - int((flat > tau).sum())
        if deficit > 0:
            tied = (flat == tau).nonzero().squeeze(1)
            order = torch.argsort((~was_kept[tied]).to(torch.int8), stable=True)
            flat[tied[order[:deficit]]] = torch.nextafter(tau, torch.full_like(tau, float("inf")))

    @torch.no_grad()
    def binary_mask(self) -> torch.Tensor:
        return self.mask_values().bool()


MaskParam = FixedMask | ScoreMask


def _tied_decoders(model: nn.Module, embedding: nn.Module) -> list[nn.Module]:
    """Output layers whose weight is the very Parameter of ``embedding`` (an MLM decoder tied to it)."""
    from sparsebert.models.registry import weight_of

    target = weight_of(embedding)
    out = []
    for mod in model.modules():
        if mod is embedding or not isinstance(mod, nn.Linear):
            continue
        if weight_of(mod) is target:
            out.append(mod)
    return out


def _register(model: nn.Module, masks_params: dict[str, MaskParam]) -> None:
    modules = prunable_modules(model)
    for key, param in masks_params.items():
        module = modules[key]
        tied = _tied_decoders(model, module) if isinstance(module, nn.Embedding) else []
        parametrize.register_parametrization(module, "weight", param)
        for dec in tied:
            parametrize.register_parametrization(dec, "weight", param)


def weight_shapes(model: nn.Module) -> dict[str, torch.Size]:
    from sparsebert.models.registry import weight_of

    return {k: weight_of(m).shape for k, m in prunable_modules(model).items()}


def _drop_absent_pooler(masks: dict[str, torch.Tensor], shapes: dict) -> dict[str, torch.Tensor]:
    """Task models without a pooler (QA, MLM) ignore the ticket's pooler mask; every other name must match."""
    if POOLER_KEY in masks and POOLER_KEY not in shapes:
        return {k: v for k, v in masks.items() if k != POOLER_KEY}
    return masks


POOLER_KEY = "pooler.dense.weight"


def apply_masks(
    model: nn.Module, masks: dict[str, torch.Tensor] | Ticket, *, zero_pruned: bool = False
) -> nn.Module:
    """Register a :class:`FixedMask` on every prunable weight. ``masks`` must name exactly the model's prunable
    weights with matching shapes (a :class:`~sparsebert.tickets.ticket.TicketError` otherwise).

    ``zero_pruned=True`` also zeroes the pruned entries of the stored weights (fine-tuning: the surviving weights
    start from the pre-trained values, pruned ones are zero everywhere, not only in the forward pass).
    """
    masks = _checked_masks(model, masks)
    from sparsebert.models.registry import weight_of

    modules = prunable_modules(model)
    params = {}
    for key, m in masks.items():
        w = weight_of(modules[key])
        params[key] = FixedMask(m.to(w.device), dtype=w.dtype)
        if zero_pruned:
            with torch.no_grad():
                w.mul_(params[key].mask)
    _register(model, params)
    return model


def apply_score_masks(
    model: nn.Module,
    init_masks: dict[str, torch.Tensor],
    sparsity: float,
    binarizer: BinarizerKind = "threshold",
    reset_at_init: bool = True,
    count_rule: str = "round",
) -> dict[str, ScoreMask]:
    """Register TAMT :class:`ScoreMask` parametrizations initialised from ``init_masks``; returns them by key.

    ``reset_at_init`` (ours): tau is set to the k-th smallest score at once (0 for an OMP/random init, so a pruned
    score enters the mask as soon as a step raises it). False (the reference): tau stays at 0.01, halfway between
    the pruned (0) and kept (0.02) scores, until the first reset."""
    if has_masks(model):
        raise ValueError("model already has masks applied: call remove_masks() first")
    validate_masks(init_masks, weight_shapes(model))
    params = {k: ScoreMask(m, sparsity, binarizer, count_rule=count_rule) for k, m in init_masks.items()}
    if reset_at_init:
        for p in params.values():
            p.reset_threshold()
    _register(model, params)
    return params


def mask_params(model: nn.Module) -> dict[str, MaskParam]:
    """Mask key -> the registered mask parametrization (empty if the model is dense)."""
    out = {}
    for key, module in prunable_modules(model).items():
        if parametrize.is_parametrized(module, "weight"):
            out[key] = module.parametrizations.weight[0]
    return out


def has_masks(model: nn.Module) -> bool:
    return bool(mask_params(model))


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's current binary masks (bool, on CPU), by key."""
    return {k: p.binary_mask().cpu() for k, p in mask_params(model).items()}


def remove_masks(model: nn.Module, *, bake: bool) -> nn.Module:
    """Remove every mask parametrization. ``bake=True`` leaves the masked values (pruned weights exactly zero)
    in the stored weights; ``bake=False`` restores the stored (unmasked) weights."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight") and isinstance(
            module.parametrizations.weight[0], (FixedMask, ScoreMask)
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=bake)
    return model


def bake(model: nn.Module) -> nn.Module:
    """Make the masks permanent: a plain model whose pruned weights are exactly zero."""
    return remove_masks(model, bake=True)


def _checked_masks(model: nn.Module, masks: dict[str, torch.Tensor] | Ticket) -> dict[str, torch.Tensor]:
    """The masks to apply to ``model``: a ticket's, minus a pooler mask the model has no pooler for, validated
    against the model's prunable weights; the model must carry no masks yet."""
    if isinstance(masks, Ticket):
        masks = masks.masks
    if has_masks(model):
        raise ValueError("model already has masks applied: call remove_masks() first")
    masks = _drop_absent_pooler(masks, weight_shapes(model))
    validate_masks(masks, weight_shapes(model))
    return masks


def bake_ticket(model: nn.Module, masks: dict[str, torch.Tensor] | Ticket) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Apply a fixed ticket without parametrizations: the pruned entries of the stored weights are zeroed in place
    (a decoder tied to a masked embedding shares its zeros). Returns the (weight, mask) pairs, each mask in its
    weight's dtype and on its device, for :class:`GradMask`. Validated like :func:`apply_masks`."""
    from sparsebert.models.registry import weight_of

    masks = _checked_masks(model, masks)
    modules = prunable_modules(model)
    pairs = []
    with torch.no_grad():
        for key, m in masks.items():
            w = weight_of(modules[key])
            mask = m.to(device=w.device, dtype=w.dtype)
            w.mul_(mask)
            pairs.append((w, mask))
    return pairs


class GradMask:
    """Zero the gradients of a baked ticket's pruned weights: one batched multiply per step (call it after
    backward, before clipping and the optimizer step)."""

    def __init__(self, pairs: list[tuple[nn.Parameter, torch.Tensor]]):
        self.params = [p for p, _ in pairs]
        self.masks = [m for _, m in pairs]

    def __call__(self) -> None:
        grads, masks = [], []
        for p, m in zip(self.params, self.masks):
            if p.grad is not None:
                grads.append(p.grad)
                masks.append(m)
        if grads:
            torch._foreach_mul_(grads, masks)


def unparametrized_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict written by a parametrized (masked) model, keyed as the plain model's: ``X.parametrizations.
    weight.original`` -> ``X.weight`` (a fine-tuning checkpoint of the parametrized path resumes on the baked one;
    its pruned entries are already zero)."""
    suffix = ".parametrizations.weight.original"
    return {(k[: -len(suffix)] + ".weight" if k.endswith(suffix) else k): v for k, v in state.items()}
