"""analysis/: correlations vs scipy, mask similarity vs direct computation, tidy/average joins, figures, report.

All inputs are synthetic (small masks written as real ticket directories, a hand-built results.parquet)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analysis import correlation as C
from analysis import figures as F
from analysis import masks as M
from analysis import report as R
from analysis import tables as T
from sparsebert.tickets.ticket import Method, Ticket, TicketMeta

SHAPES = {
    "embeddings.word_embeddings.weight": (20, 8),
    "encoder.layer.0.attention.self.query.weight": (8, 8),
    "encoder.layer.0.attention.self.key.weight": (8, 8),
    "encoder.layer.0.output.dense.weight": (8, 16),
    "pooler.dense.weight": (8, 8),
}


def rand_masks(seed: int, sparsity: float = 0.5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, s in SHAPES.items():
        numel = s[0] * s[1]
        keep = round((1 - sparsity) * numel)
        m = torch.zeros(numel, dtype=torch.bool)
        m[torch.randperm(numel, generator=g)[:keep]] = True
        out[n] = m.view(s)
    return out


def save_ticket(path, masks, method="omp", sparsity=0.5, **kw):
    meta = TicketMeta(model="tiny", method=Method(method), sparsity=sparsity, **kw)
    return Ticket(masks, meta).save(path)


# ---------------------------------------------------------------------------------------------------------------
# correlation


def _frame(seed=0, n=30):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = -0.8 * x + rng.normal(scale=0.5, size=n)
    sp = np.array([0.5, 0.7, 0.9])[np.arange(n) % 3]
    df = pd.DataFrame({"mlm_loss": x, "best_score": y, "sparsity": sp})
    return pd.concat([df, pd.DataFrame({"mlm_loss": [1.0, 2.0], "best_score": [3.0, 1.0], "sparsity": [0.2, 0.2]})],
                     ignore_index=True)  # fmt: skip


def test_correlate_matches_scipy_with_reproducible_ci():
    df = _frame()
    r = C.correlate(df, "mlm_loss", "best_score", by="sparsity", n_boot=300, seed=1)
    assert list(r["group"]) == ["all", 0.2, 0.5, 0.7, 0.9]
    for g, row in r.set_index("group").iterrows():
        sub = df if g == "all" else df[df["sparsity"] == g]
        assert row["n"] == len(sub)
        if len(sub) < 3:
            assert np.isnan(row["pearson"]) and np.isnan(row["kendall_ci_low"]) and "n=2" in row["note"]
            continue
        x, y = sub["mlm_loss"], sub["best_score"]
        for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
            ref = fn(x, y)
            assert row[name] == pytest.approx(ref.statistic, abs=1e-12)
            assert row[f"{name}_p"] == pytest.approx(ref.pvalue, rel=1e-9)
            assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"]
            assert -1 <= row[f"{name}_ci_low"] < row[f"{name}_ci_high"] <= 1
    assert r.set_index("group").loc["all", "pearson"] < -0.4
    again = C.correlate(df, "mlm_loss", "best_score", by="sparsity", n_boot=300, seed=1)
    pd.testing.assert_frame_equal(r, again)
    other = C.correlate(df, "mlm_loss", "best_score", n_boot=300, seed=2)
    assert other.loc[0, "pearson_ci_low"] != r.loc[0, "pearson_ci_low"]
    assert other.loc[0, "pearson"] == r.loc[0, "pearson"]


def test_correlate_nan_rows_and_missing_columns():
    df = _frame().assign(mlm_loss=lambda d: d["mlm_loss"].where(d.index % 5 != 0))
    r = C.correlate(df, "mlm_loss", "best_score")
    assert r.loc[0, "n"] == df["mlm_loss"].notna().sum()
    assert "missing" in C.correlate(df, "kd_loss", "best_score").loc[0, "note"]
    const = pd.DataFrame({"a": [1.0, 1.0, 1.0, 1.0], "b": [1.0, 2.0, 3.0, 4.0]})
    assert np.isnan(C.correlate(const, "a", "b").loc[0, "pearson"])


def test_loss_score_correlations_average_and_tasks():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        loss = rng.uniform(2, 8)
        for task in ("rte", "cola"):
            for seed in (0, 1):
                rows.append({"ticket_id": f"t{i}", "task": task, "seed": seed, "sparsity": [0.5, 0.7, 0.9][i % 3],
                             "mlm_loss": loss, "kd_loss": loss / 10, "best_score": 90 - 5 * loss + rng.normal()})
    td = pd.DataFrame(rows)
    avg = T.average_over_tasks(td.assign(label="TAMT-MLM", model="m", method="tamt"))
    out = C.loss_score_correlations(td, avg, n_boot=50)
    assert set(out["task"]) == {"rte", "cola", "average"}
    assert set(out["x"]) == {"mlm_loss", "kd_loss"}
    rte_all = out[(out["task"] == "rte") & (out["group"] == "all") & (out["x"] == "mlm_loss")].iloc[0]
    assert rte_all["n"] == 9  # seeds averaged per ticket first
    av = out[(out["task"] == "average") & (out["group"] == "all") & (out["x"] == "mlm_loss")].iloc[0]
    assert av["n"] == 9 and av["pearson"] < -0.9
    assert (out[out["group"] == 0.5]["n"] == 3).all()


# ---------------------------------------------------------------------------------------------------------------
# masks


def _direct(a, b):
    jac = []
    diff = tot = 0
    for n in SHAPES:
        x, y = a[n].numpy(), b[n].numpy()
        u = (x | y).sum()
        jac.append(1.0 if u == 0 else (x & y).sum() / u)
        diff += (x != y).sum()
        tot += x.size
    return float(np.mean(jac)), diff / tot


def test_similarity_and_hamming_match_direct_computation(tmp_path):
    a, b = rand_masks(1, 0.5), rand_masks(2, 0.7)
    pa = save_ticket(tmp_path / "a", a)
    pb = save_ticket(tmp_path / "b", b, sparsity=0.7)
    sim, ham = _direct(a, b)
    assert M.similarity(pa, pb) == pytest.approx(sim)
    assert M.hamming(pa, pb) == pytest.approx(ham)
    assert M.similarity(a, pb) == pytest.approx(sim)  # dict vs file
    assert M.similarity(pa, pa) == 1.0 and M.hamming(pa, pa) == 0.0
    d = M.distance_from_omp(pb, pa)
    assert d["omp_distance"] == pytest.approx(1 - sim) and d["omp_hamming"] == pytest.approx(ham)
    assert M.jaccard(torch.zeros(3, 3, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool)) == 1.0
    assert M.jaccard(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(1 / 3)


def test_matching_is_by_name_not_order(tmp_path):
    a = rand_masks(3)
    names = list(SHAPES)
    q, k = names[1], names[2]  # same shape, different content
    assert not torch.equal(a[q], a[k])
    reordered = {n: a[n] for n in reversed(names)}
    assert M.similarity(a, reordered) == 1.0
    pa = save_ticket(tmp_path / "a", a)
    pr = save_ticket(tmp_path / "r", reordered)
    assert M.similarity(pa, pr) == 1.0 and M.hamming(pa, pr) == 0.0
    swapped = dict(a)
    swapped[q], swapped[k] = a[k], a[q]  # an order-based matcher could not tell this apart from a rename
    assert M.similarity(a, swapped) < 1.0
    renamed = {("x." + n if n == q else n): m for n, m in a.items()}
    with pytest.raises(M.MaskMismatchError, match="names differ"):
        M.similarity(a, renamed)
    with pytest.raises(M.MaskMismatchError, match="names differ"):
        M.similarity(pa, save_ticket(tmp_path / "n", renamed))
    bad_shape = dict(a)
    bad_shape[q] = torch.ones(4, 16, dtype=torch.bool)
    with pytest.raises(M.MaskMismatchError, match="shape"):
        M.hamming(a, bad_shape)


def test_similarity_matrix(tmp_path):
    ms = {f"t{i}": rand_masks(10 + i) for i in range(3)}
    paths = {k: save_ticket(tmp_path / k, v) for k, v in ms.items()}
    mat = M.similarity_matrix(paths)
    assert mat.shape == (3, 3) and list(mat.index) == list(mat.columns) == ["t0", "t1", "t2"]
    assert np.allclose(np.diag(mat), 1.0) and np.allclose(mat, mat.T)
    assert mat.loc["t0", "t2"] == pytest.approx(_direct(ms["t0"], ms["t2"])[0])
    long = M.pairwise(paths)
    assert len(long) == 9
    assert M.to_matrix(long, "hamming").loc["t1", "t2"] == pytest.approx(_direct(ms["t1"], ms["t2"])[1])


# ---------------------------------------------------------------------------------------------------------------
# a synthetic experiment

TASKS = ("cola", "mrpc", "rte")


def make_experiment(root, partial: bool = True):
    """Tickets (OMP 0.5/0.7, TAMT-MLM 0.5 at 2 step counts, TAMT-KD 0.5 & 0.7, IMP 0.5, Random 0.5 x2, dense) and
    results: find rows (mlm_loss), evaluate rows (mlm_loss + kd_loss override), transfer rows (3 tasks x seeds).
    partial: IMP lacks rte, an ERROR and a RUNNING transfer trial, TAMT-KD 0.7 has no OMP at 0.7... (OMP 0.7 absent)."""
    exp = root / "exp"
    specs = [  # ticket_id, method, sparsity, init, objective, steps, seed, mlm, kd
        ("omp50", "omp", 0.5, None, None, 0, 0, 6.0, 0.30),
        ("tamt50a", "tamt", 0.5, "omp", "mlm", 1000, 0, 3.0, 0.20),
        ("tamt50b", "tamt", 0.5, "omp", "mlm", 3000, 0, 2.5, 0.15),
        ("kd50", "tamt", 0.5, "omp", "kd", 3000, 0, 3.5, 0.10),
        ("imp50", "imp", 0.5, None, "mlm", 3000, 0, 5.0, 0.25),
        ("rnd50a", "random", 0.5, None, None, 0, 1, 9.0, 0.60),
        ("rnd50b", "random", 0.5, None, None, 0, 2, 9.5, 0.65),
        ("kd70", "tamt", 0.7, "omp", "kd", 5000, 0, 4.0, 0.12),
    ]
    if not partial:
        specs.append(("omp70", "omp", 0.7, None, None, 0, 0, 8.0, 0.5))
    rows = []
    for i, (tid, method, sp, init, obj, steps, seed, mlm, kd) in enumerate(specs):
        masks = rand_masks(100 + i, sp)
        if tid == "omp50":
            omp50 = masks
        save_ticket(exp / "tickets" / tid, masks, method, sp, init=init, objective=obj, steps=steps, seed=seed,
                    metrics={"mlm_loss": mlm + 100})  # fmt: skip  (ticket.json loss is overridden by find rows)
        base = dict(experiment="synthetic", model="tiny", method=method, init=init, objective=obj, sparsity=sp,
                    steps=steps, ticket_id=tid)  # fmt: skip
        rows.append({**base, "trial_id": f"find_{tid}", "stage": "find", "status": "TERMINATED", "seed": seed,
                     "ticket_path": f"tickets/{tid}", "mlm_loss": mlm + 1, "time_total_s": 60.0})  # fmt: skip
        rows.append({**base, "trial_id": f"eval_{tid}", "stage": "evaluate", "status": "TERMINATED", "seed": 0,
                     "mlm_loss": mlm, "kd_loss": kd, "time_total_s": 10.0})  # fmt: skip
        for task in TASKS:
            if partial and tid == "imp50" and task == "rte":
                continue
            for fseed in ((0, 1) if tid.startswith("tamt") else (0,)):
                score = 90 - 5 * mlm + {"cola": -20, "mrpc": 0, "rte": -10}[task] + fseed
                rows.append({**base, "trial_id": f"tr_{tid}_{task}_{fseed}", "stage": "transfer",
                             "status": "TERMINATED", "seed": fseed, "task": task, "best_score": score,
                             "metric/accuracy": score / 100, "time_total_s": 100.0})  # fmt: skip
    for task in TASKS:
        s = {"cola": 60, "mrpc": 88, "rte": 70}[task]
        rows.append(dict(trial_id=f"tr_dense_{task}", stage="transfer", status="TERMINATED", model="tiny",
                         method="dense", sparsity=0.0, steps=0, seed=0, task=task, best_score=s,
                         mlm_loss=2.1, kd_loss=0.0, time_total_s=100.0))  # fmt: skip
    # a second config of one (ticket, task, seed): the better one is kept
    rows.append({**rows[-3], "trial_id": "tr_dup", "best_score": 10.0})
    if partial:
        rows.append(dict(trial_id="tr_err", stage="transfer", status="ERROR", model="tiny", method="imp",
                         sparsity=0.5, ticket_id="imp50", task="rte", seed=0, best_score=np.nan,
                         error="Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"))
        rows.append(dict(trial_id="tr_run", stage="transfer", status="RUNNING", model="tiny", method="tamt",
                         sparsity=0.7, ticket_id="kd70", task="rte", seed=1, best_score=np.nan))
        rows.append(dict(trial_id="find_err", stage="find", status="ERROR", model="tiny", method="tamt",
                         sparsity=0.8, error="ValueError: bad sparsity"))
    df = pd.DataFrame(rows)
    exp.mkdir(parents=True, exist_ok=True)
    df.to_parquet(exp / "results.parquet", index=False)
    return exp, df, omp50


def test_load_results_errors_and_csv_fallback(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.parquet"):
        T.load_results(tmp_path)
    pd.DataFrame({"trial_id": ["a"], "stage": ["find"]}).to_csv(tmp_path / "results.csv", index=False)
    assert T.load_results(tmp_path)["trial_id"].tolist() == ["a"]


def test_tidy_joins_losses_and_average_needs_all_tasks(tmp_path):
    exp, df, omp50 = make_experiment(tmp_path, partial=True)
    res = T.load_results(exp)
    td = T.tidy(res)
    assert not td.duplicated(["ticket_id", "task", "seed"]).any()
    assert set(td["task"]) == set(TASKS)
    assert "tr_err" not in set(td["trial_id"]) and "tr_run" not in set(td["trial_id"])
    t = td[td["ticket_id"] == "tamt50b"]
    assert len(t) == 6 and (t["mlm_loss"] == 2.5).all() and (t["kd_loss"] == 0.15).all()  # from evaluate rows
    assert (t["loss_source"] == "evaluate").all() and (t["steps"] == 3000).all() and (t["label"] == "TAMT-MLM").all()
    assert (td.loc[td["ticket_id"] == "rnd50b", "ticket_seed"] == 2).all()
    dense = td[td["method"] == "dense"]
    assert len(dense) == 3 and (dense["ticket_id"] == "dense:tiny").all() and (dense["mlm_loss"] == 2.1).all()
    dup = td[td["trial_id"] == f"tr_dense_{TASKS[0]}"]
    assert len(dup) == 1 and dup["n_trials"].iloc[0] == 2 and dup["best_score"].iloc[0] == 60
    # OMP similarity: direct computation against the OMP 0.5 ticket; NaN at 0.7 (no OMP ticket) and for dense
    from sparsebert.tickets.ticket import read_masks

    sim = _direct(read_masks(exp / "tickets" / "kd50"), omp50)[0]
    assert td.loc[td["ticket_id"] == "kd50", "omp_similarity"].iloc[0] == pytest.approx(sim)
    assert (td.loc[td["ticket_id"] == "omp50", "omp_similarity"] == 1.0).all()
    assert td.loc[td["ticket_id"] == "kd70", "omp_similarity"].isna().all()
    assert td.loc[td["method"] == "dense", "omp_similarity"].isna().all()

    avg = T.average_over_tasks(td)
    assert "imp50" not in set(avg["ticket_id"])  # rte missing
    assert set(avg["ticket_id"]) == {"omp50", "tamt50a", "tamt50b", "kd50", "rnd50a", "rnd50b", "kd70", "dense:tiny"}
    assert (avg["n_tasks"] == 3).all() and (avg["tasks"] == "cola,mrpc,rte").all()
    a = avg.set_index("ticket_id")
    # tamt50b: seeds 0, 1 -> per-task mean adds 0.5; tasks offsets -20, 0, -10
    assert a.loc["tamt50b", "avg_score"] == pytest.approx(90 - 12.5 - 10 + 0.5)
    assert a.loc["tamt50b", "n_seeds"] == 2 and a.loc["omp50", "n_seeds"] == 1
    assert a.loc["dense:tiny", "avg_score"] == pytest.approx((60 + 88 + 70) / 3)
    assert set(T.missing_tasks(td, res)["ticket_id"]) == {"imp50"}

    out = T.write_tables(exp)
    for p in out["paths"]:
        assert p.is_file() and p.stat().st_size > 0
    back = pd.read_parquet(exp / "analysis" / "tidy.parquet")
    assert len(back) == len(td)
    for c in td.columns:
        assert c in T.COLUMNS or c.startswith("metric/"), c
    for c in avg.columns:
        assert c in T.COLUMNS, c


def test_tidy_tolerates_missing_columns():
    df = pd.DataFrame({"trial_id": ["a", "b"], "task": ["rte", "rte"], "best_score": [1.0, np.nan],
                       "method": ["omp", "omp"], "sparsity": [0.5, 0.5]})  # fmt: skip
    td = T.tidy(df, similarity=False)
    assert len(td) == 1 and np.isnan(td["mlm_loss"].iloc[0])
    assert len(T.average_over_tasks(td)) == 1
    assert len(T.tidy(pd.DataFrame())) == 0


# ---------------------------------------------------------------------------------------------------------------
# figures


def _avg(tmp_path):
    exp, df, _ = make_experiment(tmp_path, partial=False)
    td = T.tidy(T.load_results(exp))
    return exp, td, T.average_over_tasks(td)


def test_main_figure_panels_and_points(tmp_path):
    exp, td, avg = _avg(tmp_path)
    fig = F.build_loss_score_figure(avg, "mlm_loss", "avg_score")
    pts = F.panel_points(fig)
    assert list(pts) == ["sparsity 0.5", "sparsity 0.7"]
    assert pts["sparsity 0.5"] == {"TAMT-MLM": 2, "TAMT-KD": 1, "IMP": 1, "OMP": 1, "Random": 2, "Dense": 1}
    assert pts["sparsity 0.7"] == {"TAMT-KD": 1, "OMP": 1, "Dense": 1}
    star = [c for c in fig.axes[1].collections if c.get_label() == "Dense"][0]
    assert np.allclose(star.get_offsets()[0], [2.1, (60 + 88 + 70) / 3])
    paths = F.plot_loss_score(avg, tmp_path / "figs")
    assert sorted(p.name for p in paths) == ["score_vs_kd_loss.png", "score_vs_kd_loss.svg",
                                             "score_vs_mlm_loss.png", "score_vs_mlm_loss.svg"]  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in paths)


def test_other_figures(tmp_path):
    exp, td, avg = _avg(tmp_path)
    fig = F.build_score_vs_sparsity(avg)
    eb = F.errorbar_points(fig)["score vs sparsity"]
    off = F.dodge(avg["label"], avg["sparsity"])  # methods sit side by side at one sparsity
    assert [x for x, _ in eb["Random"]] == pytest.approx([0.5 + off["Random"]]) and eb["Random"][0][1] == \
        pytest.approx(avg.loc[avg["label"] == "Random", "avg_score"].mean())
    assert [x for x, _ in eb["TAMT-KD"]] == pytest.approx([0.5 + off["TAMT-KD"], 0.7 + off["TAMT-KD"]])
    assert [x for x, _ in eb["Dense"]] == [0.0]
    per_task = F.build_score_vs_sparsity(td, "best_score", facet="task")
    assert len([a for a in per_task.axes if a.get_title()]) == 3
    steps = F.build_steps_figure(avg)
    titled = [a for a in steps.axes if a.get_title()]
    assert [a.get_title() for a in titled] == ["sparsity 0.5", "sparsity 0.7"]
    assert len(steps.axes) == 3 * 2  # score, mlm_loss, kd_loss x 2 sparsities
    tm = F.errorbar_points(steps)["sparsity 0.5"]["TAMT-MLM"]
    assert [x for x, _ in tm] == [1000, 3000]
    mat = M.similarity_matrix({k: exp / "tickets" / k for k in ("omp50", "tamt50a", "kd50", "rnd50a")})
    hm = F.build_similarity_heatmap(mat)
    assert hm.axes[0].images[0].get_array().shape == (4, 4)
    assert len(hm.axes[0].texts) == 16
    for name, f in (("sp", fig), ("hm", hm), ("st", steps)):
        for p in F.save(f, tmp_path / "out", name):
            assert p.stat().st_size > 1000
    empty = F.build_loss_score_figure(avg.iloc[0:0])
    assert F.panel_points(empty) == {}


# ---------------------------------------------------------------------------------------------------------------
# report


def test_report_on_partial_experiment(tmp_path):
    exp, df, _ = make_experiment(tmp_path, partial=True)
    assert R.main([str(exp), "--n-boot", "100"]) == 0
    md_path = exp / "analysis" / "report.md"
    md = md_path.read_text()
    assert (exp / "analysis" / "report.html").stat().st_size > 1000
    # failures with messages, running trials, missing pieces
    assert "RuntimeError: CUDA out of memory" in md and "ValueError: bad sparsity" in md
    assert "tr_err" in md and "tr_run" in md
    assert "sweep still running: 1 RUNNING trial(s)" in md
    assert "task rte missing for ticket imp50" in md
    assert "no OMP ticket (with files) for tiny at sparsity 0.7" in md
    assert "1 find trial(s) did not finish" in md
    assert "**Cut-short trials: none.**" in md.split("## What ran")[0]
    # tables, correlations, similarity
    assert "## Average over tasks" in md and "TAMT-MLM" in md
    assert "### Average over tasks" in md and "mlm_loss" in md
    assert "sparsity 0.5" in md and (exp / "analysis" / "mask_similarity.csv").is_file()
    # every linked figure exists
    import re

    links = re.findall(r"\]\((figures/[^)]+)\)", md)
    assert any("score_vs_mlm_loss.png" in l for l in links) and any("mask_similarity" in l for l in links)
    for l in links:
        assert (md_path.parent / l).stat().st_size > 0, l
    for name in ("tidy.parquet", "average.csv", "correlations.csv"):
        assert (exp / "analysis" / name).is_file()


def test_report_with_no_finished_transfers(tmp_path):
    exp = tmp_path / "e"
    exp.mkdir()
    pd.DataFrame({"trial_id": ["a", "b"], "stage": ["find", "transfer"], "status": ["RUNNING", "PENDING"],
                  "task": [None, "rte"]}).to_parquet(exp / "results.parquet")  # fmt: skip
    md = R.write_report(exp, n_boot=10).read_text()
    assert "sweep still running: 1 RUNNING, 1 PENDING" in md or "sweep still running: 1 PENDING, 1 RUNNING" in md
    assert "No finished transfer trials." in md
    assert "task rte: no finished transfer trial" in md


def test_loss_correlations_add_kd_loss_mse_when_present():
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        loss = rng.uniform(2, 8)
        for task in ("rte",):
            rows.append({"ticket_id": f"t{i}", "task": task, "seed": 0, "sparsity": 0.5, "mlm_loss": loss,
                         "kd_loss": loss / 10, "kd_loss_mse": loss / 3, "best_score": 90 - loss})
    out = C.loss_score_correlations(pd.DataFrame(rows), None, n_boot=20)
    assert set(out["x"]) == {"mlm_loss", "kd_loss", "kd_loss_mse"}
    only = C.loss_score_correlations(pd.DataFrame(rows), None, losses=("kd_loss_mse",), n_boot=20)
    assert set(only["x"]) == {"kd_loss_mse"}
