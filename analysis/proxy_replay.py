"""The proxy's selection replayed on an exhaustive sweep: which ticket per sparsity the proxy would fine-tune,
what that costs against fine-tuning every ticket, and the regret.

An exhaustive sweep fine-tuned every candidate ticket on every task and seed; the proxy-guided search
(:mod:`sparsebert.proxy`) would fine-tune only the top-k tickets by a pre-training loss per sparsity. With the same
transfer settings and seeds, its stage 2 would run exactly the picked tickets' trials, so its scores and compute
can be read off the exhaustive results: compute = the picked tickets' fine-tuning trial-seconds / all candidates',
regret = best candidate's average score - best picked ticket's average score, compared with the best ticket's
seed-to-seed standard deviation (the noise). Dense is the reference point, not a candidate.
"""

from __future__ import annotations

import pandas as pd

from sparsebert.proxy import top_k


def ticket_scores(df: pd.DataFrame) -> pd.DataFrame:
    """One row per sparse ticket: its losses, average score over tasks (seed means first), the std over seeds of
    its per-seed average, and its fine-tuning trial-seconds."""
    tr = df[(df["stage"] == "transfer") & (df["status"] == "TERMINATED") & (df["method"] != "dense")]
    per_seed = tr.groupby(["ticket_id", "seed"])["best_score"].mean()
    per_task = tr.groupby(["ticket_id", "task"])["best_score"].mean().groupby("ticket_id").mean()
    first = tr.groupby("ticket_id").first()
    return pd.DataFrame({
        "label": first["label"], "sparsity": first["sparsity"], "mlm_loss": first["mlm_loss"],
        "kd_loss": first["kd_loss"], "avg_score": per_task,
        "seed_std": per_seed.groupby("ticket_id").std(ddof=1),
        "finetune_s": tr.groupby("ticket_id")["time_total_s"].sum() - tr.groupby("ticket_id")["find_s"].sum(),
        "find_s": tr.groupby("ticket_id")["find_s"].max(),  # the one trial that made the ticket
    }).reset_index()


def replay(df: pd.DataFrame, metric: str = "kd_loss", k: int = 1) -> pd.DataFrame:
    """Per sparsity: the proxy's pick(s) by ``metric`` (lower is better), the best candidate, the regret and the
    compute share (fine-tuning alone, and with every candidate's finding charged to both); a last row ``all`` over every sparsity."""
    t = ticket_scores(df)
    picked = top_k(t, metric=metric, k=k, by="sparsity")
    rows = []
    for s, g in list(t.groupby("sparsity")) + [("all", t)]:
        p = picked if s == "all" else picked[picked["sparsity"] == s]
        best = g.loc[g["avg_score"].idxmax()]
        got = p.loc[p["avg_score"].idxmax()]
        rows.append({
            "sparsity": s, "candidates": len(g), "picked": ", ".join(f"{r.label} {r.sparsity:g}" for r in p.itertuples()),
            "picked_score": got["avg_score"], "best": f"{best['label']} {best['sparsity']:g}",
            "best_score": best["avg_score"], "regret": best["avg_score"] - got["avg_score"],
            "noise": best["seed_std"], "compute": p["finetune_s"].sum() / g["finetune_s"].sum(),
            # both searches find every candidate once: the proxy saves fine-tuning only
            "compute_with_finding": (p["finetune_s"].sum() + g["find_s"].sum())
            / (g["finetune_s"].sum() + g["find_s"].sum()),
        })
    return pd.DataFrame(rows)
