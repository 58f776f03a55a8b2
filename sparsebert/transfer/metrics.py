"""Downstream metrics: GLUE (accuracy, binary F1, Matthews correlation, Pearson/Spearman) and SQuAD v1.1 EM/F1.

Every metric function returns a dict of plain Python floats, keyed like the Hugging Face ``evaluate`` GLUE metric
(``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearmanr``), so results from either source can be
compared key by key. Combined keys follow the legacy ``transformers`` ``glue_compute_metrics``: ``acc_and_f1``
(mean of accuracy and F1: MRPC, QQP) and ``corr`` (mean of Pearson and Spearman: STS-B, reported, not the main
score).

Which metrics a task reports and which is its *main score* (best-dev selection, averaging over tasks) is set by
the task registry: :func:`sparsebert.transfer.tasks.compute_task_metrics` and :func:`sparsebert.transfer.tasks.main_score` (this
module knows nothing of tasks). The SQuAD functions reproduce the official ``evaluate-v1.1.py`` exactly
(normalisation, max over ground truths, bag-of-tokens F1, x100, unanswered = 0).
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "binary_f1",
    "acc_and_f1",
    "matthews",
    "pearson_spearman",
    "to_class_predictions",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_metrics",
]


# --------------------------------------------------------------------------------------------------- GLUE


def _as_1d(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d array of predictions/labels, got shape {arr.shape}")
    return arr


def _check_same_length(predictions: np.ndarray, labels: np.ndarray) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no examples to score")


def to_class_predictions(predictions: Any) -> np.ndarray:
    """Class ids from either class ids (1-d) or logits/probabilities (2-d: argmax over the last axis)."""
    arr = np.asarray(predictions)
    if arr.ndim == 2 and arr.shape[1] > 1:
        return arr.argmax(axis=-1)
    return _as_1d(arr).astype(np.int64)


def accuracy(predictions: Any, labels: Any) -> dict[str, float]:
    p, y = to_class_predictions(predictions), _as_1d(labels).astype(np.int64)
    _check_same_length(p, y)
    return {"accuracy": float((p == y).mean())}


def binary_f1(predictions: Any, labels: Any) -> dict[str, float]:
    """F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate"); sklearn's ``f1_score`` (0 when undefined)."""
    from sklearn.metrics import f1_score

    p, y = to_class_predictions(predictions), _as_1d(labels).astype(np.int64)
    _check_same_length(p, y)
    return {"f1": float(f1_score(y, p, pos_label=1, average="binary", zero_division=0))}


def acc_and_f1(predictions: Any, labels: Any) -> dict[str, float]:
    out = {**accuracy(predictions, labels), **binary_f1(predictions, labels)}
    out["acc_and_f1"] = (out["accuracy"] + out["f1"]) / 2
    return out


def matthews(predictions: Any, labels: Any) -> dict[str, float]:
    """Matthews correlation coefficient (sklearn; 0 when a confusion-matrix margin is empty)."""
    from sklearn.metrics import matthews_corrcoef

    p, y = to_class_predictions(predictions), _as_1d(labels).astype(np.int64)
    _check_same_length(p, y)
    return {"matthews_correlation": float(matthews_corrcoef(y, p))}


def pearson_spearman(predictions: Any, labels: Any) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy). NaN when either side is constant (scipy's behaviour, no warning);
    :func:`sparsebert.transfer.tasks.main_score` maps that NaN to 0.0."""
    from scipy.stats import pearsonr, spearmanr

    p, y = _as_1d(predictions).astype(np.float64), _as_1d(labels).astype(np.float64)
    _check_same_length(p, y)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        pr = sr = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pr = float(pearsonr(p, y)[0])
            sr = float(spearmanr(p, y)[0])
    return {"pearson": pr, "spearmanr": sr, "corr": (pr + sr) / 2}


# --------------------------------------------------------------------------------------------------- SQuAD v1.1


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official evaluate-v1.1.py)."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """Token-bag F1 in [0, 1] between one prediction and one ground truth (official f1_score)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _answer_texts(answers: Any) -> list[str]:
    # flattened/HF layout {"text": [...], "answer_start": [...]}, raw JSON layout [{"text":..}, ...], or [str, ...]
    if isinstance(answers, Mapping):
        return list(answers["text"])
    return [a["text"] if isinstance(a, Mapping) else str(a) for a in answers]


def squad_metrics(predictions: Mapping[str, str], references: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Official SQuAD v1.1 scores (x100): max over ground truths per question, averaged over *all* references;
    a question without a prediction scores 0 (as evaluate-v1.1.py does)."""
    em = f1 = 0.0
    total = 0
    for ref in references:
        total += 1
        qid = ref["id"]
        if qid not in predictions:
            continue
        golds = _answer_texts(ref["answers"])
        pred = predictions[qid]
        em += max(squad_exact_match(pred, g) for g in golds)
        f1 += max(squad_f1(pred, g) for g in golds)
    if total == 0:
        raise ValueError("no references to score")
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}

