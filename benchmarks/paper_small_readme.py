"""The README's "Results on the embedded model" section, written from a paper_small run's own files.

    python benchmarks/paper_small_readme.py results/paper_small [--lr-sweep results/paper_small_lr]
           [--readme README.md] [--figures docs/figures]

1. Reads ``EXP/results.parquet``. The tasks every ticket finished with every seed are the *complete* tasks; a view
   experiment ``EXP-complete`` holds only those trials and ``run_search.py report``'s code (``write_report``) runs
   on it, so the average, the correlations and the figures compare every ticket on the same tasks.
2. Writes, between ``<!-- generated:paper_small -->`` markers: what ran (trials per status, the device the trials
   logged, trial time), the table (per task mean ± std over seeds, the average over the complete tasks), the rank
   correlations of the MLM / KD losses with the average score, the figure (copied to ``--figures``), and the
   learning-rate sweep's table per task when ``--lr-sweep`` is given (paper_small_lr.yaml: the chosen rate per task
   by its rule, and the ``per_task`` line that paper_small.yaml takes).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from readme_section import update  # noqa: E402

from sparsebert.tickets.finders import label_order  # noqa: E402

TASK_ORDER = ["sst2", "cola", "stsb", "mrpc", "rte", "polarity"]
METHOD_ORDER = label_order()  # the finder registry's table order


def complete_tasks(df: pd.DataFrame) -> list[str]:
    tr = df[df["stage"] == "transfer"]
    want = tr.groupby("task").size()
    ok = tr[tr["status"] == "TERMINATED"].groupby("task").size().reindex(want.index, fill_value=0)
    return [t for t in TASK_ORDER if t in want.index and ok[t] == want[t]]


def view(exp: Path, tasks: list[str]) -> Path:
    """``EXP-complete``: the trials of the complete tasks only (results files + space.json), reported."""
    from analysis.report import write_report

    out = exp.with_name(exp.name + "-complete")
    out.mkdir(exist_ok=True)
    df = pd.read_parquet(exp / "results.parquet")
    df = df[df["task"].isin(tasks)]
    df.to_parquet(out / "results.parquet", index=False)
    df.to_csv(out / "results.csv", index=False)
    if (exp / "space.json").is_file():
        shutil.copy(exp / "space.json", out / "space.json")
    write_report(out, similarity=False)
    return out


def device_of(exp: Path) -> str:
    for log in sorted(exp.glob("*/log.txt")):
        m = re.search(r"runtime: (\S+ \([^)]*\)), (\w+)", log.read_text(errors="replace"))
        if m:
            return f"{m.group(1)}, {m.group(2)}"
    return "unknown device"


def _ms(s: pd.Series) -> str:
    s = s.dropna() * 100
    if not len(s):
        return ""
    return f"{s.mean():.1f} ± {s.std(ddof=1):.1f}" if len(s) > 1 else f"{s.mean():.1f} (1 seed)"


def table(df: pd.DataFrame, avg: pd.DataFrame, tasks: list[str], complete: list[str]) -> str:
    tr = df[(df["stage"] == "transfer") & (df["status"] == "TERMINATED")].copy()
    tr["label"] = tr["label"].fillna("")
    rows = []
    keys = tr[["label", "sparsity"]].drop_duplicates()
    keys["o"] = keys["label"].map({m: i for i, m in enumerate(METHOD_ORDER)}).fillna(99)
    for _, k in keys.sort_values(["sparsity", "o"]).iterrows():
        sub = tr[(tr["label"] == k["label"]) & (tr["sparsity"] == k["sparsity"])]
        a = avg[(avg["label"] == k["label"]) & (avg["sparsity"] == k["sparsity"])]
        cells = [k["label"], f"{k['sparsity']:g}",
                 f"**{100 * a['avg_score'].iloc[0]:.1f}**" if len(a) else "",
                 f"{sub['mlm_loss'].iloc[0]:.3f}", f"{sub['kd_loss'].iloc[0]:.4f}"]
        cells += [_ms(sub[sub["task"] == t]["best_score"]) for t in tasks]
        rows.append("| " + " | ".join(cells) + " |")
    head = (["method", "sparsity", f"avg ({len(complete)} tasks)", "MLM loss", "KD loss"]
            + [t + ("" if t in complete else " †") for t in tasks])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows])


def correlations(view_dir: Path) -> str:
    c = pd.read_csv(view_dir / "analysis" / "correlations.csv")
    c = c[(c["task"] == "average") & (c["x"].isin(["mlm_loss", "kd_loss"]))]
    rows = []
    for _, r in c.iterrows():
        if pd.isna(r["spearman"]):
            continue
        rows.append(f"| {r['x']} | {r['group']} | {int(r['n'])} | {r['spearman']:+.2f} | {r['spearman_p']:.3f} | "
                    f"[{r['spearman_ci_low']:+.2f}, {r['spearman_ci_high']:+.2f}] |")
    return "\n".join(["| loss | sparsity | tickets | Spearman ρ | p | bootstrap 95 % CI |", "|---|---|---|---|---|---|",
                      *rows])


def proxy_table(df: pd.DataFrame) -> str:
    from analysis.proxy_replay import replay

    r = replay(df, metric="kd_loss", k=1)
    rows = [f"| {x['sparsity'] if isinstance(x['sparsity'], str) else format(x['sparsity'], 'g')} | {x['candidates']} "
            f"| {x['picked']} | {100 * x['picked_score']:.1f} | {x['best']} | {100 * x['best_score']:.1f} | "
            f"{100 * x['regret']:.1f} | {100 * x['noise']:.1f} | {100 * x['compute']:.1f} % | "
            f"{100 * x['compute_with_finding']:.1f} % |" for _, x in r.iterrows()]
    return "\n".join(["| sparsity | candidates | proxy's pick | its score | best ticket | best score | regret | noise "
                      "| compute | with finding |", "|---|---|---|---|---|---|---|---|---|---|", *rows])


def _lr_results(sweep: Path) -> pd.DataFrame:
    """The sweep's finished transfer trials with their lr as ``config/transfer.lr`` (runs before that column
    existed: read from each trial's config.json)."""
    df = pd.read_parquet(sweep / "results.parquet")
    if "config/transfer.lr" not in df:
        lrs = {d.name: json.loads((d / "config.json").read_text())["transfer"]["lr"]
               for d in sweep.iterdir() if (d / "config.json").is_file()}
        df["config/transfer.lr"] = df["trial_id"].map(lrs)
    return df[(df["stage"] == "transfer") & (df["status"] == "TERMINATED") & df["best_score"].notna()]


def chosen_lrs(sweep: Path) -> dict[str, float]:
    """Per task, the lr with the best mean dev score over the tickets swept (each first averaged over seeds)."""
    from analysis.config_keys import by_key

    _, per_task = by_key(_lr_results(sweep), "config/transfer.lr")
    return {r["task"]: float(r["config/transfer.lr"]) for _, r in per_task[per_task["best"]].iterrows()}


def lr_table(sweep: Path) -> str:
    """Per task and lr: each ticket's dev score (mean ± std over seeds) and their mean; the chosen lr in bold, and
    the ``per_task`` lines for paper_small.yaml."""
    from analysis.config_keys import by_key

    per_ticket, per_task = by_key(_lr_results(sweep), "config/transfer.lr")
    key = "config/transfer.lr"
    tickets = list(dict.fromkeys(zip(per_ticket["label"], per_ticket["sparsity"])))
    names = [f"{lab} {sp:g}" if sp else lab for lab, sp in tickets]
    order = [t for t in TASK_ORDER if t in set(per_task["task"])] + sorted(set(per_task["task"]) - set(TASK_ORDER))
    rows = []
    for task in order:
        for _, r in per_task[per_task["task"] == task].sort_values(key).iterrows():
            cells = []
            for lab, sp in tickets:
                m = per_ticket[(per_ticket["task"] == task) & (per_ticket[key] == r[key])
                               & (per_ticket["label"] == lab) & (per_ticket["sparsity"] == sp)]
                cells.append("" if not len(m) else f"{100 * m['mean'].iloc[0]:.1f}" + (
                    f" ± {100 * m['std'].iloc[0]:.1f}" if pd.notna(m["std"].iloc[0]) else ""))
            mean = f"{100 * r['mean']:.1f}"
            rows.append(f"| {task} | {r[key]:g} | " + " | ".join(cells)
                        + (f" | **{mean}** |" if r["best"] else f" | {mean} |"))
    chosen = chosen_lrs(sweep)
    per = ", ".join(f"{t}: {chosen[t]:.1e}" for t in order if t in chosen)
    seeds = int(per_ticket["n"].max()) if len(per_ticket) else 0
    return "\n".join([
        f"dev score × 100 per task and lr (MCC for CoLA, Pearson for STS-B, mean of F1 and accuracy for MRPC, "
        f"accuracy otherwise; mean ± std over {seeds} seed(s); {device_of(sweep)}). Rule: per task, the lr with the "
        f"best mean over the tickets (bold). Chosen, as paper_small.yaml's `transfer.lr`: "
        f"`{{per_task: {{{per}}}, default: 2.0e-4}}`", "",
        "| task | lr | " + " | ".join(names) + " | mean |", "|---|---|" + "---|" * (len(names) + 1), *rows])


def section(exp: Path, lr_sweep: Path | None, fig_dir: Path) -> str:
    df = pd.read_parquet(exp / "results.parquet")
    complete = complete_tasks(df)
    tasks = [t for t in TASK_ORDER if t in set(df["task"].dropna())]
    v = view(exp, complete)
    avg = pd.read_csv(v / "analysis" / "average.csv")
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    for name in ("score_vs_kd_loss", "score_vs_mlm_loss"):
        src = v / "analysis" / "figures" / f"{name}.png"
        if src.is_file():
            shutil.copy(src, fig_dir / f"paper_small_{name}.png")
            figs.append(f"![{name}]({(fig_dir / f'paper_small_{name}.png').relative_to(REPO).as_posix()})")
    status = df[df["stage"] == "transfer"].groupby(["task", "status"]).size().unstack(fill_value=0)
    ran = ", ".join(f"{t}: {int(status.loc[t].get('TERMINATED', 0))}/{int(status.loc[t].sum())}" for t in tasks)
    hours = df["time_total_s"].sum() / 3600
    partial = [t for t in tasks if t not in complete]
    out = [f"Run `{exp.name}` on {device_of(exp)}: trials finished per task {ran}; {hours:.2f} h of trial time "
           f"in all. Dev scores × 100 (MCC for CoLA, Pearson for STS-B, mean of F1 and accuracy for MRPC, "
           f"accuracy otherwise), best over evaluations every 50 steps, mean ± std over fine-tuning seeds. "
           f"The average is over the tasks every ticket finished with every seed ({', '.join(complete)})."]
    if partial:
        out.append(f"† {', '.join(partial)}: not every trial finished (see what ran above); not in the average.")
    out += ["", table(df, avg, tasks, complete), "",
            f"Rank correlation of each ticket's pre-training loss with its average score ({len(complete)} tasks; "
            "dense included in `all`):", "", correlations(v), "", *figs]
    out += ["", "**The proxy on these tickets** (`analysis/proxy_replay.py`: the proxy's rule, top-1 KD loss per "
            "sparsity, replayed on the exhaustive results above; its stage 2 would fine-tune exactly the picked "
            "tickets' trials). Scores × 100, average over the same tasks; noise = the best ticket's std over seeds "
            "of its average; compute = fine-tuning trial-seconds of the picks / of every candidate:", "",
            proxy_table(pd.read_parquet(v / "results.parquet"))]
    if lr_sweep is not None and (lr_sweep / "results.parquet").is_file():
        out += ["", "**Choosing the fine-tuning learning rate** (`search_spaces/paper_small_lr.yaml`): " +
                lr_table(lr_sweep)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--lr-sweep", default=None)
    ap.add_argument("--readme", default=str(REPO / "README.md"))
    ap.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    args = ap.parse_args()
    text = section(Path(args.experiment).resolve(), Path(args.lr_sweep).resolve() if args.lr_sweep else None,
                   Path(args.figures).resolve())
    print(text)
    update(Path(args.readme), "paper_small", text)


if __name__ == "__main__":
    main()
