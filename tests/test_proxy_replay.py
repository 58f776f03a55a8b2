"""The proxy's selection replayed on exhaustive results (analysis/proxy_replay.py): picks, regret, compute."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.proxy_replay import replay, ticket_scores


def _rows():
    # (ticket, label, sparsity, kd_loss, {task: (seed1, seed2)}, seconds per trial)
    tickets = [("a", "OMP", 0.5, 0.14, {"x": (0.80, 0.82), "y": (0.60, 0.62)}, 10.0),
               ("b", "TAMT-KD", 0.5, 0.07, {"x": (0.78, 0.78), "y": (0.50, 0.52)}, 10.0),
               ("c", "Random", 0.5, 0.40, {"x": (0.50, 0.50), "y": (0.40, 0.40)}, 20.0),
               ("d", "TAMT-KD", 0.7, 0.10, {"x": (0.70, 0.74), "y": (0.50, 0.50)}, 10.0),
               ("e", "OMP", 0.7, 0.30, {"x": (0.60, 0.60), "y": (0.45, 0.45)}, 10.0),
               ("f", "Dense", 0.0, 0.0, {"x": (0.9, 0.9), "y": (0.7, 0.7)}, 10.0)]
    rows = []
    for tid, label, s, kd, scores, secs in tickets:
        for task, pair in scores.items():
            for seed, score in zip((1, 2), pair):
                rows.append({"stage": "transfer", "status": "TERMINATED", "method": label.split("-")[0].lower(),
                             "ticket_id": tid, "label": label, "sparsity": s, "mlm_loss": 7.0, "kd_loss": kd,
                             "task": task, "seed": seed, "best_score": score, "time_total_s": secs + 5.0 * (seed == 1),
                             "find_s": 5.0 * (seed == 1)})
    rows.append({**rows[0], "status": "PENDING", "best_score": 0.99})  # unfinished: ignored
    return pd.DataFrame(rows)


def test_ticket_scores_average_tasks_after_seeds_and_skip_dense_and_unfinished():
    t = ticket_scores(_rows()).set_index("ticket_id")
    assert set(t.index) == {"a", "b", "c", "d", "e"}
    assert t.loc["a", "avg_score"] == pytest.approx((0.81 + 0.61) / 2)
    assert t.loc["d", "seed_std"] == pytest.approx(pd.Series([(0.70 + 0.50) / 2, (0.74 + 0.50) / 2]).std())
    assert t.loc["c", "finetune_s"] == pytest.approx(80.0) and t.loc["c", "find_s"] == 5.0


def test_replay_picks_lowest_kd_loss_per_sparsity_and_measures_regret_and_compute():
    r = replay(_rows()).set_index("sparsity")
    assert r.loc[0.5, "picked"] == "TAMT-KD 0.5" and r.loc[0.5, "best"] == "OMP 0.5"
    assert r.loc[0.5, "regret"] == pytest.approx((0.81 + 0.61) / 2 - (0.78 + 0.51) / 2)
    assert r.loc[0.7, "regret"] == 0 and r.loc[0.7, "picked"] == "TAMT-KD 0.7"
    assert r.loc[0.5, "compute"] == pytest.approx(40 / (40 + 40 + 80))
    assert r.loc[0.5, "compute_with_finding"] == pytest.approx((40 + 15) / (160 + 15))
    assert r.loc["all", "candidates"] == 5 and r.loc["all", "regret"] == pytest.approx(r.loc[0.5, "regret"])
    assert replay(_rows(), k=2).set_index("sparsity").loc[0.5, "regret"] == 0  # top-2 includes OMP
