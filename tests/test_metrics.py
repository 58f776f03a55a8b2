"""GLUE metrics against sklearn/scipy; SQuAD EM/F1 on hand-checked cases (official evaluate-v1.1.py rules)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from sparsebert.transfer import metrics as M
from sparsebert.transfer.tasks import compute_task_metrics, main_score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    p = np.where(rng.random(500) < 0.7, y, 1 - y)  # correlated, imperfect
    assert M.accuracy(p, y)["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert M.binary_f1(p, y)["f1"] == pytest.approx(f1_score(y, p), abs=1e-12)
    assert M.matthews(p, y)["matthews_correlation"] == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
    both = M.acc_and_f1(p, y)
    assert both["acc_and_f1"] == pytest.approx((accuracy_score(y, p) + f1_score(y, p)) / 2)


def test_logits_are_argmaxed():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 3))
    y = rng.integers(0, 3, 200)
    assert M.accuracy(logits, y)["accuracy"] == pytest.approx(accuracy_score(y, logits.argmax(-1)))
    # multi-class through the registry
    expected = accuracy_score(y, logits.argmax(-1))
    assert compute_task_metrics("mnli", logits, y) == {"accuracy": pytest.approx(expected)}


def test_f1_positive_class_is_one():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([1, 0, 0, 0, 1])
    # TP=1, FP=1, FN=1 -> P=R=1/2 -> F1 = 1/2 (for class 0 it would be 2/3)
    assert M.binary_f1(p, y)["f1"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 5, 300)
    p = y + rng.normal(0, 1.5, 300)
    out = M.pearson_spearman(p.reshape(-1, 1), y)  # (n, 1) regression head output accepted
    assert out["pearson"] == pytest.approx(pearsonr(p, y)[0], abs=1e-12)
    assert out["spearmanr"] == pytest.approx(spearmanr(p, y)[0], abs=1e-12)
    assert out["corr"] == pytest.approx((out["pearson"] + out["spearmanr"]) / 2)


def test_constant_predictions_give_nan_correlation_and_zero_main_score():
    out = compute_task_metrics("stsb", np.full(10, 2.5), np.linspace(0, 5, 10))
    assert math.isnan(out["pearson"])
    assert main_score("stsb", out) == 0.0


def test_compute_task_metrics_keys_and_main_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    p = np.where(rng.random(100) < 0.8, y, 1 - y)
    expected_keys = {
        "qqp": {"accuracy", "f1", "acc_and_f1"},
        "mrpc": {"accuracy", "f1", "acc_and_f1"},
        "cola": {"matthews_correlation"},
        "sst2": {"accuracy"},
        "qnli": {"accuracy"},
        "rte": {"accuracy"},
        "polarity": {"accuracy"},
    }
    for task, keys in expected_keys.items():
        m = compute_task_metrics(task, p, y)
        assert set(m) == keys, task
        assert all(isinstance(v, float) for v in m.values())
    m = compute_task_metrics("mrpc", p, y)
    assert main_score("mrpc", m) == pytest.approx((m["accuracy"] + m["f1"]) / 2)
    assert main_score("mrpc", {"accuracy": 0.8, "f1": 0.9}) == pytest.approx(0.85)  # recomputed when absent
    assert main_score("cola", compute_task_metrics("cola", p, y)) == pytest.approx(matthews_corrcoef(y, p))
    assert main_score("stsb", {"pearson": 0.9, "spearmanr": 0.8, "corr": 0.85}) == 0.9
    assert main_score("squad", {"exact_match": 80.0, "f1": 88.0}) == 88.0


def test_mnli_splits_scored_separately_main_is_matched():
    y_m, p_m = np.array([0, 1, 2, 0]), np.array([0, 1, 2, 1])  # 3/4
    y_mm, p_mm = np.array([0, 1, 2, 0]), np.array([0, 0, 0, 0])  # 2/4
    per_split = {"validation_matched": (p_m, y_m), "validation_mismatched": (p_mm, y_mm)}
    nested = {split: compute_task_metrics("mnli", p, y) for split, (p, y) in per_split.items()}  # as finetune does
    assert nested == {"validation_matched": {"accuracy": 0.75}, "validation_mismatched": {"accuracy": 0.5}}
    assert main_score("mnli", nested) == 0.75
    with pytest.raises(KeyError):
        main_score("mnli", {"validation_mismatched": {"accuracy": 0.5}})


def test_bad_inputs():
    with pytest.raises(ValueError, match="valid tasks"):
        compute_task_metrics("wnli", [0], [0])
    with pytest.raises(ValueError, match="span task"):
        compute_task_metrics("squad", [0], [0])
    with pytest.raises(ValueError):
        M.accuracy([0, 1], [0])


# ------------------------------------------------------------------------------------------------ SQuAD


def test_normalize_answer():
    assert M.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert M.normalize_answer("Levi's Stadium.") == "levis stadium"  # punctuation removed, not replaced
    assert M.normalize_answer("an apple, a pear and the theater") == "apple pear and theater"  # \b-bounded articles
    assert M.normalize_answer("A") == ""


@pytest.mark.parametrize(
    "pred, gold, em, f1",
    [
        # "the Eiffel Tower" -> "eiffel tower" == "eiffel tower": EM 1, F1 1
        ("the Eiffel Tower", "Eiffel Tower", 1.0, 1.0),
        # pred {denver, broncos, won} vs gold {denver, broncos}: common 2, P = 2/3, R = 2/2 = 1,
        # F1 = 2 * (2/3) * 1 / (2/3 + 1) = (4/3) / (5/3) = 0.8
        ("Denver Broncos won", "Denver Broncos", 0.0, 0.8),
        # pred {broncos} vs gold "the Denver Broncos" -> {denver, broncos}: common 1, P = 1, R = 1/2,
        # F1 = 2 * 1 * 0.5 / 1.5 = 2/3
        ("Broncos", "the Denver Broncos", 0.0, 2 / 3),
        # bag overlap uses counts: pred [new, new, york] vs gold [new, york]: common = min(2,1) + 1 = 2,
        # P = 2/3, R = 1 -> F1 = 0.8
        ("new new york", "New York", 0.0, 0.8),
        # punctuation vanishes: "levis stadium" both sides
        ("Levi's Stadium.", "Levi's Stadium", 1.0, 1.0),
        # nothing in common
        ("Carolina", "Denver", 0.0, 0.0),
        # "theater" is not an article: "the theater" -> "theater" == "theater"
        ("the theater", "theater", 1.0, 1.0),
        # only articles left -> empty token list on the pred side: no common tokens -> 0
        ("the", "Denver", 0.0, 0.0),
    ],
)
def test_squad_pairs_hand_checked(pred, gold, em, f1):
    assert M.squad_exact_match(pred, gold) == em
    assert M.squad_f1(pred, gold) == pytest.approx(f1)


def test_squad_metrics_max_over_golds_and_unanswered():
    refs = [
        {"id": "q1", "answers": {"text": ["Panthers", "Carolina Panthers"], "answer_start": [0, 0]}},
        {"id": "q2", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}},
        {"id": "q3", "answers": {"text": ["Santa Clara"], "answer_start": [0]}},
    ]
    preds = {"q1": "the Carolina Panthers", "q2": "Denver Broncos won"}  # q3 unanswered -> 0
    # q1: EM 1 (matches the 2nd gold), F1 1; q2: EM 0, F1 0.8 (see above); q3: 0, 0.
    # EM = 100 * 1/3 = 33.33..., F1 = 100 * (1 + 0.8 + 0) / 3 = 60.0
    out = M.squad_metrics(preds, refs)
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(60.0)
    # raw JSON answer layout (list of {"text", "answer_start"}) is accepted too
    raw = [{"id": r["id"], "answers": [{"text": t} for t in r["answers"]["text"]]} for r in refs]
    assert M.squad_metrics(preds, raw) == out
    # q1's F1 takes the max over golds: vs "Panthers" it is 2/3, vs "Carolina Panthers" 1
    assert M.squad_metrics({"q1": "Carolina Panthers"}, refs[:1]) == {"exact_match": 100.0, "f1": 100.0}
    with pytest.raises(ValueError):
        M.squad_metrics({}, [])
