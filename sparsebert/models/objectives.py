"""Pre-training objectives: MLM (decoder on masked positions only), KD against the dense teacher, and both.

KD (SPEC.md): mean over the L layer outputs (embedding output excluded) of the mean over tokens of
``1 - cos(h_student, h_teacher)``; padding tokens are excluded from the token mean.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


class Objective(str, enum.Enum):
    MLM = "mlm"
    KD = "kd"
    MLM_KD = "mlm_kd"

    @property
    def uses_mlm(self) -> bool:
        return self in (Objective.MLM, Objective.MLM_KD)

    @property
    def uses_kd(self) -> bool:
        return self in (Objective.KD, Objective.MLM_KD)


@dataclass
class ObjectiveConfig:
    objective: Objective = field(default=Objective.KD, metadata={"help": "mlm | kd | mlm_kd"})
    mlm_weight: float = field(default=1.0, metadata={"help": "weight of the MLM loss in mlm_kd"})
    kd_weight: float = field(default=1.0, metadata={"help": "weight of the KD loss in mlm_kd"})
    mlm_probability: float = field(default=0.15, metadata={"help": "fraction of tokens selected for MLM"})

    def __post_init__(self) -> None:
        self.objective = Objective(self.objective)


def mlm_loss_at(model, last_hidden: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the MLM head's logits at ``positions`` (flat indices into [B*T]) against ``targets``; the
    decoder runs on those rows only."""
    rows = last_hidden.reshape(-1, last_hidden.shape[-1]).index_select(0, positions)
    return F.cross_entropy(model.mlm_logits(rows).float(), targets, reduction=reduction)


def _layer_mean(student_hidden, teacher_hidden, attention_mask, distance) -> torch.Tensor:
    """Mean over layers (hidden_states[1:], the embedding output excluded) of the mean over tokens (the real ones
    when ``attention_mask`` is given) of ``distance(h_student, h_teacher)`` -> [B, T]."""
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"student has {len(student_hidden)} hidden states, teacher {len(teacher_hidden)}")
    losses = []
    for hs, ht in zip(student_hidden[1:], teacher_hidden[1:]):
        d = distance(hs.float(), ht.float())  # [B, T]
        if attention_mask is None:
            losses.append(d.mean())
        else:
            m = attention_mask.to(d.dtype)
            losses.append((d * m).sum() / m.sum().clamp_min(1.0))
    return torch.stack(losses).mean()


def kd_loss(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over layers (hidden_states[1:]) of the mean over real tokens of 1 - cosine similarity."""
    return _layer_mean(student_hidden, teacher_hidden, attention_mask,
                       lambda a, b: (1.0 - F.cosine_similarity(a, b, dim=-1)).clamp_min(0.0))


def kd_mse_loss(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference's ``full_mse`` representation loss (eval_kd.py): mean over layers (hidden_states[1:]) of
    ``MSELoss()`` (mean over every position and hidden dim, padding included) between student and teacher.
    With ``attention_mask``: the mean over real tokens only (and all dims)."""
    return _layer_mean(student_hidden, teacher_hidden, attention_mask, lambda a, b: (a - b).pow(2).mean(dim=-1))

