"""Downstream metrics: GLUE (accuracy, binary F1, Matthews correlation, Pearson/Spearman) and SQuAD v1.1 EM/F1.

Every metric function returns a dict of plain Python floats, keyed like the Hugging Face ``evaluate`` GLUE metric
(``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearmanr``), so results from either source can be
compared key by key. Combined keys follow the legacy ``transformers`` ``glue_compute_metrics``: ``acc_and_f1``
(mean of accuracy and F1: MRPC, QQP) and ``corr`` (mean of Pearson and Spearman: STS-B, reported, not the main
score).

Which metric is a task's *main score* (best-dev selection, averaging over tasks) is set by the task registry
(:mod:`sparsebert.tasks`); :func:`main_score` reads it. The SQuAD functions reproduce the official
``evaluate-v1.1.py`` exactly (normalisation, max over ground truths, bag-of-tokens F1, x100, unanswered = 0).
"""

from __future__ import annotations

import math
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
    "compute_task_metrics",
    "compute_split_metrics",
    "main_score",
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
    :func:`main_score` maps that NaN to 0.0."""
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


def compute_task_metrics(task_name: str, predictions: Any, labels: Any) -> dict[str, float]:
    """All metrics of one task on one evaluation split.

    ``predictions``: class ids or logits (classification), scores or an (n, 1) array (regression). For MNLI call it
    once per split (matched, mismatched) or use :func:`compute_split_metrics`. SQuAD is scored with
    :func:`squad_metrics` (it needs texts, not arrays).
    """
    from .tasks import get_task

    spec = get_task(task_name)
    if spec.kind == "span":
        raise ValueError(f"{spec.name!r} is a span task: score it with squad_metrics(predictions, references)")
    if spec.kind == "regression":
        preds = np.asarray(predictions, dtype=np.float64)
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    else:
        preds = to_class_predictions(predictions)
    out: dict[str, float] = {}
    for fn in spec.metric_fns:
        out.update(fn(preds, labels))
    return out


def compute_split_metrics(task_name: str, per_split: Mapping[str, tuple[Any, Any]]) -> dict[str, dict[str, float]]:
    """``{split: (predictions, labels)}`` -> ``{split: metrics}`` (e.g. MNLI's validation_matched and
    validation_mismatched, each scored on its own and never merged)."""
    return {split: compute_task_metrics(task_name, p, y) for split, (p, y) in per_split.items()}


def main_score(task_name: str, metrics: Mapping[str, Any]) -> float:
    """The single number used for best-dev selection and for averaging over tasks (see the table in
    :mod:`sparsebert.tasks`).

    ``metrics`` is either one split's flat metrics dict (for MNLI: the *matched* split's) or a nested
    ``{split: metrics}`` dict, from which the task's ``main_split`` is read. A combined key (``acc_and_f1``) is
    recomputed from its parts if absent. An undefined correlation (NaN: constant predictions) counts as 0.0.
    """
    from .tasks import get_task

    spec = get_task(task_name)
    flat: Mapping[str, Any] = metrics
    if spec.main_split in metrics and isinstance(metrics[spec.main_split], Mapping):
        flat = metrics[spec.main_split]
    elif any(isinstance(v, Mapping) for v in metrics.values()):
        raise KeyError(f"{spec.name}: nested metrics have no {spec.main_split!r} split: {sorted(metrics)}")
    key = spec.main_metric
    if key in flat:
        value = float(flat[key])
    elif key == "acc_and_f1" and "accuracy" in flat and "f1" in flat:
        value = (float(flat["accuracy"]) + float(flat["f1"])) / 2
    elif key == "corr" and "pearson" in flat and "spearmanr" in flat:
        value = (float(flat["pearson"]) + float(flat["spearmanr"])) / 2
    else:
        raise KeyError(f"{spec.name}: main metric {key!r} not in {sorted(flat)}")
    return 0.0 if math.isnan(value) else value


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

