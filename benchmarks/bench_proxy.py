"""Proxy-guided vs exhaustive ticket search (issue 7): compute used and regret, in one run.

On the space ``search_spaces/proxy_search.yaml`` (the embedded default: MiniLM, movie-review polarity; 12 candidate
tickets at sparsity 0.5 and 0.7), with a fresh ticket store:

1. the proxy-guided search (``run_proxy_search``): stage 1 finds every candidate and scores it by KD loss, stage 2
   fine-tunes only the selected ones (top-1 per sparsity);
2. the exhaustive search: fine-tune EVERY candidate with the same transfer settings (same seed);
3. the noise: the exhaustive search's best ticket fine-tuned again with more transfer seeds (>= 3 in all).

Compute is trial-seconds (the sum of Tune's ``time_total_s`` over trials). Ticket finding is charged to both
searches the same way: every candidate is found once (in the proxy search's stage 1, fresh store), its cost is
the tickets' own ``find_s`` (which includes the losses ``make_ticket`` measures), and that sum is added to the
exhaustive search too, whose fine-tuning trials take the tickets from the store. The table prints finding,
proxy scoring (stage 1 minus finding: trial start-up and the evaluate trainable's loss evaluation) and fine-tuning
separately, and the ratio with and without finding. Regret = the best downstream score the exhaustive search found
minus the best the proxy search found; it is "within the noise" when it is at most the seed-to-seed standard
deviation (ddof 1) of the best ticket's score.

    python benchmarks/bench_proxy.py [--space proxy_search] [--seeds 3] [--cpus 2] [--storage DIR [--resume]] [--smoke]

On a shared machine where something may stop Ray midway (``ray stop`` elsewhere kills every Ray process), run
``until python benchmarks/bench_proxy.py --storage DIR --resume; do :; done``: finished phases are reused, a
phase cut short is rerun (tickets come from the store; their finding cost is still the one measured when they were
made, and it is never counted inside a phase's trials twice: trial-seconds of a phase minus the ``find_s`` of the
tickets made during it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402


def _ts(df: pd.DataFrame) -> float:
    return float(pd.to_numeric(df["time_total_s"], errors="coerce").fillna(0).sum()) if len(df) else 0.0


def _find_s(ticket_paths) -> tuple[dict[str, float], dict[str, float]]:
    """find_s and creation time of every ticket (from its ticket.json)."""
    out, created = {}, {}
    for p in ticket_paths:
        meta = json.loads((Path(p) / "ticket.json").read_text())
        out[Path(p).name] = float(meta.get("metrics", {}).get("find_s") or 0.0)
        created[Path(p).name] = float(meta.get("created") or 0.0)
    return out, created


def _lr(cfg_json: str, method: str):
    return json.loads(cfg_json).get("lr") if method == "tamt" else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="proxy_search", help="a space with a proxy section")
    ap.add_argument("--seeds", type=int, default=3, help="transfer seeds for the noise of the best ticket (>= 3)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--storage", default=None, help="where experiments and the (fresh) ticket store go "
                                                     "(default: a temp dir, deleted after)")
    ap.add_argument("--resume", action="store_true", help="with --storage: reuse the phases a previous invocation "
                                                           "finished; rerun the others")
    ap.add_argument("--smoke", action="store_true", help="the tiny model (checks the script, measures nothing)")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be >= 2")

    from search.tuner import fit
    from search_spaces.loader import load_space
    from search.proxy_search import run_proxy_search
    from search_spaces.proxy_rules import check_space

    space = load_space(args.space, smoke=args.smoke)
    rule = check_space(space)
    tmp = None
    if args.storage:
        root = Path(args.storage).expanduser().resolve()
        if root.exists() and not args.resume:
            shutil.rmtree(root)  # a fresh ticket store: finding is measured, not taken from a cache
    else:
        tmp = tempfile.mkdtemp(prefix="bench_proxy_")
        root = Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    storage, store = str(root), root
    ns = argparse.Namespace(address=None, cpus=args.cpus, max_concurrent=None)
    t_start, load_start = time.time(), os.getloadavg()[0]
    state_file = root / "bench_state.json"
    state = json.loads(state_file.read_text()) if args.resume and state_file.is_file() else {}
    reused = []

    def phase(name: str, fn) -> tuple[int, float]:
        """Run a phase (or reuse it from an earlier invocation); returns (exit code, wall seconds)."""
        st = state.get(name) or {}
        if st.get("done") and (root / name / "results.parquet").is_file():
            reused.append(name)
            return 0, st["wall"]
        if (root / name).exists():
            shutil.rmtree(root / name)  # cut short before: start the phase over (tickets stay in the store)
        state[name] = {"start": time.time(), "done": False}
        state_file.write_text(json.dumps(state))
        code = fn()
        state[name].update(done=code == 0, wall=time.time() - state[name]["start"])
        state_file.write_text(json.dumps(state))
        return code, state[name]["wall"]

    # 1. proxy-guided search (fresh store: stage 1 finds every candidate)
    code, wall_proxy = phase("proxy", lambda: run_proxy_search(space, ns, root / "proxy", storage, "proxy", store))
    if code != 0:
        print(f"proxy search failed (exit {code})", file=sys.stderr)
        return code
    px = pd.read_parquet(root / "proxy/results.parquet")
    sel = pd.read_csv(root / "proxy/proxy_selection.csv")
    s1, s2 = px[px["stage"] == "evaluate"], px[px["stage"] == "transfer"]

    # 2. exhaustive: every candidate fine-tuned (tickets from the store), same transfer section
    cand = [json.loads(c) for c in sel["ticket_config"]]
    ex_space = dataclasses.replace(space, ticket={}, variants=cand, raw={k: v for k, v in space.raw.items()
                                                                       if k != "proxy"})
    code, wall_ex = phase("exhaustive", lambda: fit(ex_space, root / "exhaustive", storage, "exhaustive",
                                                                store, ns, restore=False))
    if code != 0:
        print(f"exhaustive search failed (exit {code})", file=sys.stderr)
        return code
    ex = pd.read_parquet(root / "exhaustive/results.parquet")

    # 3. noise: the exhaustive best ticket with more transfer seeds (seed 0 is the exhaustive trial itself)
    ex_sorted = ex.sort_values(["best_score", "ticket_id"], ascending=[False, True], kind="mergesort")
    best = ex_sorted.iloc[0]
    best_cfg = json.loads(sel.set_index("ticket_id").loc[best["ticket_id"], "ticket_config"])
    seed0 = int(space.transfer.get("seed", 0))
    extra = [seed0 + i for i in range(1, args.seeds)]
    nz_space = dataclasses.replace(ex_space, variants=[best_cfg],
                                   transfer={**space.transfer, "seed": {"grid": extra}})
    code, wall_noise = phase("noise", lambda: fit(nz_space, root / "noise", storage, "noise", store, ns,
                                                              restore=False))
    if code != 0:
        print(f"noise runs failed (exit {code})", file=sys.stderr)
        return code
    nz = pd.read_parquet(root / "noise/results.parquet")
    seed_scores = [float(best["best_score"])] + nz.sort_values("seed")["best_score"].astype(float).tolist()
    noise_std = float(pd.Series(seed_scores).std(ddof=1))

    # ---------------------------------------------------------------------------------------------- accounting
    find, created = _find_s(sel["ticket_id"].map(lambda t: store / "tickets" / t))
    F = sum(find.values())
    S1, S2, E = _ts(s1), _ts(s2), _ts(ex)
    # finding done inside a phase's trials is taken out of it (it is charged once, as F, to both searches)
    found_in_s1 = sum(v for t, v in find.items() if created[t] >= state["proxy"]["start"])
    found_in_ex = sum(find.get(t, 0.0) for t in ex.loc[ex["ticket_made"].fillna(0) > 0, "ticket_id"])
    scoring = S1 - found_in_s1
    E = E - found_in_ex
    proxy_total, ex_total = F + scoring + S2, F + E
    ratio_all = proxy_total / ex_total
    ratio_nofind = (scoring + S2) / E

    ex_best = float(best["best_score"])
    proxy_best = float(s2["best_score"].max())
    regret = ex_best - proxy_best
    within = regret <= noise_std + 1e-12

    # ------------------------------------------------------------------------------------------------- report
    ex_score = ex.groupby("ticket_id")["best_score"].max()
    tab = sel.assign(lr=[_lr(c, m) for c, m in zip(sel["ticket_config"], sel["method"])],
                     find_s=sel["ticket_id"].map(find), exhaustive_score=sel["ticket_id"].map(ex_score),
                     proxy_score=sel["best_score"])
    tab = tab.sort_values(["sparsity", "proxy_rank"])
    print("\n" + "=" * 100)
    print(f"bench_proxy: space {space.path.name}{' (smoke)' if args.smoke else ''}, model {cand[0].get('model')}, "
          f"task {space.transfer.get('task')}, rule {rule.rule} k={rule.k} by {rule.by} on {rule.metric} "
          f"({rule.mode}); {args.cpus} CPUs")
    tr = space.transfer
    print(f"fine-tuning: max_steps {tr.get('max_steps')}, lr {tr.get('lr')}, batch {tr.get('batch_size')}, "
          f"subset {tr.get('subset_size')}, eval {tr.get('max_eval_examples')}, max_length {tr.get('max_length')}, "
          f"eval_every {tr.get('eval_every')}")
    print("\nCandidates (proxy rank within sparsity; scores = best dev accuracy over evaluations, transfer seed "
          f"{seed0}):")
    cols = ["label", "sparsity", "lr", "steps", "kd_loss", "mlm_loss", "proxy_rank", "selected", "find_s",
            "exhaustive_score", "proxy_score"]
    print(tab[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))
    spear = []
    for s, g in tab.groupby("sparsity"):
        g = g.dropna(subset=["kd_loss", "exhaustive_score"])
        if len(g) > 2:
            spear.append(f"s={s}: {g['kd_loss'].rank().corr(g['exhaustive_score'].rank()):+.2f}")
    if spear:
        print("Spearman(kd_loss, score) within sparsity (negative = the proxy works): " + ", ".join(spear))

    print("\nCompute (trial-seconds = sum of Tune's time_total_s; finding charged to both searches alike)")
    rows = [
        ("ticket finding (all candidates, incl. make_ticket's losses)", F, F),
        ("proxy scoring (stage 1 minus finding: start-up + evaluation)", scoring, 0.0),
        ("fine-tuning", S2, E),
    ]
    print(f"  {'':<64}{'proxy':>10}{'exhaustive':>12}")
    for name, a, b in rows:
        print(f"  {name:<64}{a:>10.0f}{b:>12.0f}")
    print(f"  {'total':<64}{proxy_total:>10.0f}{ex_total:>12.0f}")
    print(f"  {'fine-tuning trials':<64}{len(s2):>10d}{len(ex):>12d}")
    print(f"  {'wall seconds (proxy: both stages; exhaustive: fine-tuning only)':<64}{wall_proxy:>10.0f}"
          f"{wall_ex:>12.0f}")
    print(f"  ratio proxy/exhaustive, finding included:  {ratio_all:6.1%}")
    print(f"  ratio proxy/exhaustive, finding excluded:  {ratio_nofind:6.1%}   (target <= 25 %)")

    print("\nQuality")
    sel_best = s2.sort_values(["best_score", "ticket_id"], ascending=[False, True]).iloc[0]
    print(f"  exhaustive best: {ex_best:.4f}  ({best['label']} s={best['sparsity']}, ticket {best['ticket_id']})")
    print(f"  proxy best:      {proxy_best:.4f}  ({sel_best['label']} s={sel_best['sparsity']}, "
          f"ticket {sel_best['ticket_id']})")
    for s, g in tab.groupby("sparsity"):
        print(f"  s={s}: best {g['exhaustive_score'].max():.4f}, proxy's pick "
              f"{g.loc[g['selected'] == 'yes', 'exhaustive_score'].max():.4f}")
    print(f"  seed-to-seed noise of the best ticket: scores {', '.join(f'{x:.4f}' for x in seed_scores)} "
          f"(seeds {seed0}..{seed0 + args.seeds - 1}), std {noise_std:.4f}")
    print(f"  regret {regret:+.4f}: {'WITHIN' if within else 'NOT within'} the noise (regret <= 1 std)")
    print("  (the exhaustive best is a max over "
          f"{len(ex)} noisy scores, so it is biased upwards by selection)")
    print(f"  ticket finding inside trials, taken out: stage 1 {found_in_s1:.0f} s, exhaustive {found_in_ex:.0f} s"
          + (f"; phases reused from an earlier invocation: {', '.join(reused)}" if reused else ""))
    print(f"\ntotal wall {time.time() - t_start:.0f} s (noise runs {wall_noise:.0f} s); 1-min load average "
          f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores "
          "(other processes inflate trial-seconds of both searches)")
    print("=" * 100)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
