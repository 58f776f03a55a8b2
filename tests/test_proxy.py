"""Proxy-guided ticket search (issue 7): the selection rules on synthetic results, the proxy section's validation,
and the two-stage search end to end under --smoke (stage 2 fine-tunes exactly the selected tickets)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from search_spaces.loader import SpaceError, load_space
from search.proxy_search import run_proxy_search
from search_spaces.proxy_rules import check_space, validate_proxy
from sparsebert.proxy import ProxyRule, halving_budgets, halving_layout, rank, select, top_k

NAN = float("nan")


def _frame() -> pd.DataFrame:
    """Two sparsities x four tickets, with a tie at 0.7 and a failed evaluation (NaN) at 0.5."""
    return pd.DataFrame({
        "ticket_id": ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"],
        "label": ["OMP", "Random", "TAMT-KD", "TAMT-KD", "OMP", "Random", "TAMT-KD", "TAMT-KD"],
        "sparsity": [0.5, 0.5, 0.5, 0.5, 0.7, 0.7, 0.7, 0.7],
        "kd_loss": [0.20, 0.50, 0.10, NAN, 0.30, 0.90, 0.25, 0.25],
        "mlm_loss": [3.0, 6.0, 2.5, 2.0, 4.0, 8.0, 3.5, 3.6],
    })


# ------------------------------------------------------------------------------------------------------ top-k


def test_top_k_picks_the_lowest_loss_ticket_per_sparsity():
    picked = top_k(_frame(), metric="kd_loss", k=1, by="sparsity")
    assert list(picked["ticket_id"]) == ["t3", "t7"]  # 0.10 at s=0.5; the 0.25 tie at s=0.7 goes to t7 < t8


def test_top_k_mode_max_and_other_metric_and_global():
    assert list(top_k(_frame(), metric="mlm_loss", k=1, mode="max")["ticket_id"]) == ["t2", "t6"]
    assert list(top_k(_frame(), metric="kd_loss", k=2, by=None)["ticket_id"]) == ["t3", "t1"]


def test_top_k_ties_are_deterministic_whatever_the_row_order():
    df = _frame()
    for seed in range(5):
        shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)
        assert list(top_k(shuffled, k=1)["ticket_id"]) == ["t3", "t7"]
    no_ids = df.drop(columns="ticket_id").iloc[[0, 1, 2, 3, 4, 5, 7, 6]].reset_index(drop=True)
    # without ticket ids, equal values keep the frame's order
    assert top_k(no_ids, k=1)["mlm_loss"].tolist() == [2.5, 3.6]


def test_top_k_never_picks_nan_and_returns_small_groups_whole():
    picked = top_k(_frame(), k=3)
    assert "t4" not in set(picked["ticket_id"])  # NaN proxy: its evaluation failed
    assert (picked["sparsity"] == 0.5).sum() == 3 and (picked["sparsity"] == 0.7).sum() == 3
    picked = top_k(_frame(), k=10)
    assert len(picked) == 7  # every valid candidate


def test_rank_is_dense_per_group_with_na_for_missing():
    r = rank(_frame())
    assert r.tolist()[:3] == [2, 3, 1] and r.isna().tolist()[3]
    assert r.tolist()[4:] == [3, 4, 1, 2]


@pytest.mark.parametrize("kwargs,err", [
    ({"k": 0}, ValueError), ({"k": 1.5}, ValueError), ({"mode": "best"}, ValueError),
    ({"metric": "accuracy"}, KeyError), ({"by": "task"}, KeyError),
])
def test_top_k_bad_input(kwargs, err):
    with pytest.raises(err):
        top_k(_frame(), **kwargs)


def test_top_k_needs_a_dataframe_with_unique_index():
    with pytest.raises(TypeError):
        top_k(_frame().to_dict(), k=1)
    with pytest.raises(ValueError, match="unique"):
        top_k(pd.concat([_frame(), _frame()]), k=1)


# ---------------------------------------------------------------------------------------------------- halving


def test_halving_layout_documented_example():
    assert halving_layout(6, 180, eta=2, min_budget=1) == [110, 50, 20, 0, 0, 0]
    assert halving_layout(1, 60) == [60]
    assert halving_layout(0, 60) == []


@pytest.mark.parametrize("eta", [2, 3, 4])
@pytest.mark.parametrize("total", [1, 7, 60, 181, 1000])
def test_halving_budgets_sum_to_total_and_are_monotone_in_rank(eta, total):
    for n in range(1, 25):
        for min_budget in (1, 5):
            b = halving_layout(n, total, eta=eta, min_budget=min_budget)
            assert len(b) == n
            if total >= min_budget:
                assert sum(b) == total, (n, eta, total, b)
            assert all(x >= y for x, y in zip(b, b[1:])), b  # non-increasing in rank
            assert b[0] == max(b)
            assert all(x == 0 or x >= min_budget for x in b)
            # the bottom ones get nothing: at most the first rung (ceil(n / eta)) is fine-tuned
            assert sum(x > 0 for x in b) <= max(1, math.ceil(n / eta))


def test_halving_min_budget_moves_small_shares_to_rank_one():
    assert halving_layout(12, 60, eta=2, min_budget=1) == [32, 15, 7, 2, 2, 2, 0, 0, 0, 0, 0, 0]
    assert halving_layout(12, 60, eta=2, min_budget=10) == [45, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_halving_budgets_per_group_follow_the_proxy_rank():
    df = _frame()
    b = halving_budgets(df, metric="kd_loss", total_budget=60, eta=2, by="sparsity", min_budget=1)
    assert b.dtype == np.int64 and b.index.equals(df.index)
    for _, g in df.assign(b=b, r=rank(df)).groupby("sparsity"):
        assert g["b"].sum() == 60
        ordered = g.dropna(subset=["r"]).sort_values("r")["b"].tolist()
        assert ordered == sorted(ordered, reverse=True) and ordered[0] > 0 and ordered[-1] == 0
    assert b[3] == 0  # NaN proxy: no budget
    assert b[2] == 45 and b[0] == 15  # s=0.5: 3 valid -> rungs [2, 1]: 60/2/2 + 60/1, 60/2/2


@pytest.mark.parametrize("kwargs", [{"eta": 1}, {"total_budget": -1}, {"min_budget": 0}, {"eta": 2.5}])
def test_halving_bad_input(kwargs):
    with pytest.raises(ValueError):
        halving_budgets(_frame(), **{"total_budget": 60, **kwargs})


# ------------------------------------------------------------------------------------------ rule and selection


def test_select_topk_and_halving_columns():
    sel = select(_frame(), ProxyRule(rule="topk", k=1), max_steps=60)
    assert set(sel.loc[sel["selected"], "ticket_id"]) == {"t3", "t7"}
    assert sel.loc[sel["selected"], "budget"].tolist() == [60, 60]
    assert (sel.loc[~sel["selected"], "budget"] == 0).all()
    assert sel["proxy_value"].isna().sum() == 1 and sel["proxy_metric"].eq("kd_loss").all()
    assert sel.loc[sel["selected"], "budget"].isna().sum() == 0
    assert select(_frame(), ProxyRule(k=1))["budget"].isna().sum() == 2  # no max_steps: NA for the selected
    hv = select(_frame(), ProxyRule(rule="halving", k=2, min_budget=1), max_steps=30)  # budget = 2 x 30 per group
    assert hv.groupby("sparsity")["budget"].sum().tolist() == [60, 60]
    assert (hv["selected"] == (hv["budget"] > 0)).all()


@pytest.mark.parametrize("d,msg", [
    ({"rule": "best"}, "rule: must be one of"), ({"k": 0}, "k: must be an integer"),
    ({"eta": 1}, "eta: must be"), ({"mode": "low"}, "mode:"), ({"budget": 100}, "budget: only used by"),
    ({"rule": "halving", "budget": 0}, "budget: must be"), ({"by": 3}, "by: must be"),
    ({"min_budget": True}, "min_budget:"),
])
def test_proxy_rule_validation(d, msg):
    with pytest.raises(ValueError, match=msg):
        ProxyRule.from_dict(d)


def test_proxy_rule_help_and_halving_budget_default():
    assert "halving" in ProxyRule.help() and "min_budget" in ProxyRule.help()
    assert ProxyRule(rule="halving", k=2).total_budget(60) == 120
    assert ProxyRule(rule="halving", budget=90).total_budget(None) == 90
    with pytest.raises(ValueError):
        ProxyRule(rule="halving").total_budget(None)


@pytest.mark.parametrize("raw,msg", [
    ({"k": 0}, "x.yaml: proxy.k: must be an integer >= 1"),
    ({"bogus": 1}, "x.yaml: proxy.bogus: unknown key"),
    ({"metric": "score"}, "x.yaml: proxy.metric: must be one of"),
    ({"by": ["sparsity", "task"]}, "x.yaml: proxy.by: 'task' is not a ticket column"),
    ([1, 2], "x.yaml: proxy: must be a mapping"),
    ({"rule": "halve"}, "x.yaml: proxy.rule: must be one of"),
])
def test_validate_proxy_errors_name_file_and_key(raw, msg):
    with pytest.raises(SpaceError) as e:
        validate_proxy(Path("x.yaml"), raw)
    assert str(e.value).startswith(msg), str(e.value)


def _space_file(tmp_path: Path, **changes) -> Path:
    d = yaml.safe_load((REPO / "search_spaces/proxy_search.yaml").read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    p = tmp_path / "px.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_shipped_space_is_valid_and_bad_spaces_are_rejected(tmp_path):
    rule = check_space(load_space("proxy_search", smoke=True))
    assert rule.rule == "topk" and rule.metric == "kd_loss"
    # load_space runs check_space: a bad proxy section never reaches Ray
    with pytest.raises(SpaceError, match="px.yaml: proxy.rule: halving sets transfer.max_steps"):
        load_space(_space_file(tmp_path, proxy={"rule": "halving"}, transfer={"task": "polarity",
                                                                             "max_steps": {"grid": [20, 40]}}))
    with pytest.raises(SpaceError, match="px.yaml: proxy: needs stage transfer"):
        load_space(_space_file(tmp_path, stage="evaluate", transfer=None))


def test_bad_proxy_section_is_bad_input_before_ray(tmp_path, capsys):
    import run_search

    p = _space_file(tmp_path, proxy={"rule": "topk", "k": -1})
    code = run_search.main(["run", str(p), "--smoke", "--storage", str(tmp_path / "out")])
    assert code == run_search.EXIT_BAD_INPUT
    assert "px.yaml: proxy.k: must be an integer >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- end to end


def _args():
    return argparse.Namespace(address=None, cpus=2, max_concurrent=None)


@pytest.mark.slow
def test_proxy_search_smoke_fine_tunes_only_the_selected_tickets(ray_local, tmp_path):
    space = load_space("proxy_search", smoke=True)
    exp = tmp_path / "px"
    code = run_proxy_search(space, _args(), exp, str(tmp_path), "px", tmp_path)
    assert code == 0
    df = pd.read_parquet(exp / "results.parquet")
    sel = pd.read_csv(exp / "proxy_selection.csv")
    s1, s2 = df[df["stage"] == "evaluate"], df[df["stage"] == "transfer"]
    assert set(df["experiment"]) == {"px-stage1", "px-stage2"}
    assert len(s1) == len(sel) == 8 and s1["kd_loss"].notna().all()  # 2 sparsities x (OMP, random, 2 TAMT-KD)
    assert (df["status"] == "TERMINATED").all()
    chosen = sel[sel["selected"] == "yes"]
    assert len(chosen) == 2 and sorted(chosen["sparsity"]) == [0.5, 0.7]
    # stage 2 fine-tuned exactly the selected tickets, and those are the lowest-KD-loss ticket per sparsity
    assert sorted(s2["ticket_id"]) == sorted(chosen["ticket_id"])
    assert s2["best_score"].notna().all() and s2["task"].eq("polarity").all()
    expect = top_k(s1.reset_index(drop=True), metric="kd_loss", k=1, by="sparsity")
    assert sorted(expect["ticket_id"]) == sorted(chosen["ticket_id"])
    assert s2["ticket_made"].sum() == 0  # found in stage 1, reused from the store
    assert s2["selected"].all() and (s1["selected"].sum() == 2)
    assert (exp / "px-stage1").is_dir() and (exp / "px-stage2").is_dir()


@pytest.mark.slow
def test_proxy_search_halving_gives_each_ticket_its_budget(ray_local, tmp_path):
    p = _space_file(tmp_path, proxy={"rule": "halving", "metric": "kd_loss", "by": "sparsity", "eta": 2,
                                     "budget": 8, "min_budget": 1})
    space = load_space(p, smoke=True)
    exp = tmp_path / "hv"
    assert run_proxy_search(space, _args(), exp, str(tmp_path), "hv", tmp_path) == 0
    df = pd.read_parquet(exp / "results.parquet")
    sel = pd.read_csv(exp / "proxy_selection.csv")
    # 4 candidates per sparsity: rungs [2, 1] -> ranks 1..4 get 6, 2, 0, 0 steps
    assert sorted(sel.groupby("sparsity")["budget"].apply(sorted).sum()) == [0, 0, 0, 0, 2, 2, 6, 6]
    s2 = df[df["stage"] == "transfer"]
    assert len(s2) == 4
    budget = sel.set_index("ticket_id")["budget"]
    assert (s2["total_steps"].to_numpy() == budget[s2["ticket_id"]].to_numpy()).all()
    ranks = sel.set_index("ticket_id")["proxy_rank"]
    assert set(ranks[s2["ticket_id"]]) == {1, 2}


@pytest.mark.slow
def test_asha_on_the_kd_loss_stops_weak_mask_training_runs(ray_local, tmp_path, capsys):
    """The proxy as an early-stopping metric: tamt_asha.yaml's scheduler on real TAMT-KD trials (tiny model)."""
    import json

    import run_search
    from search_spaces.loader import smoke_model_dir

    d = yaml.safe_load((REPO / "search_spaces/tamt_asha.yaml").read_text())
    d["model"] = str(smoke_model_dir())
    d["ticket"].update({"text": {"source": "embedded", "block_size": 32, "max_blocks": 128}, "steps": 8,
                        "batch_size": 4, "reset_every": 2, "lr": {"grid": [3.0e-2, 1.0e-3, 1.0e-1, 3.0e-1, 1.0]}})
    d["eval"] = {"eval_blocks": 8}
    d["tune"]["max_concurrent"] = 1  # in grid order: the rungs fill up in a known order
    p = tmp_path / "ta.yaml"
    p.write_text(yaml.safe_dump(d))
    assert run_search.main(["run", str(p), "--storage", str(tmp_path), "--name", "ta"]) == 0
    df = pd.read_parquet(tmp_path / "ta/results.parquet")
    assert len(df) == 5 and (df["sparsity"] == 0.7).all() and df["kd_loss"].notna().all()
    stopped, done = df[df["status"] == "EARLY_STOPPED"], df[df["status"] == "TERMINATED"]
    assert len(stopped) >= 1 and len(done) >= 1 and len(stopped) + len(done) == 5
    # 8 steps, evaluated every 2: 4 reports while training, the 5th with the finished ticket
    assert (done["training_iteration"] == 5).all() and (stopped["training_iteration"] < 5).all()
    for _, r in done.iterrows():  # finished: the ticket is in the store with the loss the trial reported
        meta = json.loads((Path(r["ticket_path"]) / "ticket.json").read_text())
        assert meta["metrics"]["kd_loss"] == pytest.approx(r["kd_loss"])
    progress = {r["trial_id"]: pd.read_csv(Path(r["trial_dir"]) / "progress.csv").set_index("training_iteration")
                for _, r in df.iterrows()}
    for _, r in stopped.iterrows():  # stopped: no ticket, its mask-training state kept to resume from
        assert r["ticket_path"] is None or pd.isna(r["ticket_path"])
        assert not (tmp_path / "tickets" / r["ticket_id"] / "mask.safetensors").exists()
        assert (tmp_path / "partial" / r["ticket_id"] / "trainer.pt").is_file()
        # ... and stopped because another trial had a lower KD loss at the same rung
        it = int(r["training_iteration"])
        others = [p.loc[it, "kd_loss"] for t, p in progress.items() if t != r["trial_id"] and it in p.index]
        assert r["kd_loss"] > min(others)
    assert f"{len(stopped)} ticket-finding trial(s) stopped by the scheduler" in capsys.readouterr().out
