"""The report's mask-similarity section: pairwise Jaccard similarity of the tickets at each sparsity."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import figures as F
from . import masks as M
from .document import Doc
from .results_io import ANALYSIS_DIR, fmt_num
from .tickets import ticket_table


def unique_labels(t: pd.DataFrame) -> list[str]:
    """Method labels made unique by appending, where labels repeat, the first field that tells them apart."""
    labs = t["label"].astype(str).tolist()
    recs = [r for _, r in t.iterrows()]
    extras = (lambda r: f"{fmt_num(r.get('steps'))}st", lambda r: f"seed{fmt_num(r.get('ticket_seed'))}",
              lambda r: str(r["ticket_id"])[:8])  # fmt: skip
    for extra in extras:
        groups: dict[str, list[int]] = {}
        for i, l in enumerate(labs):
            groups.setdefault(l, []).append(i)
        for l, idx in groups.items():
            vals = [extra(recs[i]) for i in idx]
            if len(idx) > 1 and len(set(vals)) > 1:
                for i, v in zip(idx, vals):
                    labs[i] = f"{l} {v}"
    if len(set(labs)) < len(labs):  # still ambiguous: number them
        seen: dict[str, int] = {}
        for i, l in enumerate(labs):
            seen[l] = seen.get(l, 0) + 1
            labs[i] = f"{l} #{seen[l]}"
    return labs


def similarity_section(doc: Doc, df: pd.DataFrame, exp_dir: Path, fig_dir: Path, max_tickets: int,
                       missing: list[str]) -> list[Path]:  # fmt: skip
    """Per (model, sparsity) with two or more ticket files: the Jaccard matrix, its heatmap, and
    ``mask_similarity.csv`` (all pairs). Problems go to ``missing``; returns the figure paths."""
    out_paths: list[Path] = []
    tick = ticket_table(df, exp_dir)
    have = tick[tick["ticket_path"].notna() & (tick["method"] != "dense")] if len(tick) else tick
    if not len(have):
        doc.p("No ticket files found (nothing to compare).")
        return out_paths
    longs = []
    for (model, sp), g in have.groupby(["model", "sparsity"], dropna=False, sort=True):
        if len(g) < 2:
            continue
        g = g.sort_values(["label", "steps", "ticket_seed"], key=None, na_position="last")
        if len(g) > max_tickets:
            missing.append(f"mask similarity at sparsity {fmt_num(sp)}: only the first {max_tickets} of "
                           f"{len(g)} tickets compared")  # fmt: skip
            g = g.head(max_tickets)
        labels = unique_labels(g)
        try:
            long = M.pairwise(dict(zip(labels, g["ticket_path"])))
        except (M.MaskMismatchError, OSError) as e:
            missing.append(f"mask similarity at sparsity {fmt_num(sp)} failed: {e}")
            continue
        mat = M.to_matrix(long, "similarity", labels)
        name = f"mask_similarity_s{fmt_num(sp)}"
        paths = F.plot_similarity_heatmap(mat, fig_dir, name, title=f"Jaccard similarity, sparsity {fmt_num(sp)}")
        out_paths += paths
        doc.h(3, f"{model} at sparsity {fmt_num(sp)}")
        doc.table(mat.round(4), index=True)
        doc.img(f"figures/{paths[0].name}", f"mask similarity at sparsity {fmt_num(sp)}")
        long = long.assign(model=model, sparsity=sp)
        longs.append(long)
    if longs:
        all_long = pd.concat(longs, ignore_index=True)
        all_long.to_csv(exp_dir / ANALYSIS_DIR / "mask_similarity.csv", index=False)
        doc.p("Long form (all pairs, with normalized Hamming distance): `mask_similarity.csv`.")
    else:
        doc.p("No sparsity has two tickets with files to compare.")
    return out_paths
