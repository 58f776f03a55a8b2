"""Figures (matplotlib, no pyplot state: each ``build_*`` returns a ``Figure``, each ``plot_*`` saves PNG + SVG).

1. :func:`build_loss_score_figure` — the paper's main figure: downstream score vs MLM (or KD) loss, one panel
   per sparsity, one colour per method (TAMT variants labelled TAMT-MLM / TAMT-KD / TAMT-MLM+KD; a random-init
   TAMT ticket uses its objective's colour with a triangle marker), the dense model as a star in every panel.
2. :func:`build_score_vs_sparsity` — score vs sparsity per method, mean ± std over tickets/seeds.
3. :func:`build_similarity_heatmap` — annotated mask-similarity heatmap.
4. :func:`build_steps_figure` — score and losses vs ticket-finding steps (TAMT at several steps vs IMP).

Every scatter/errorbar artist carries its method label (``get_label()``) so tests and users can read back the
points per method per panel (:func:`panel_points`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ORDER = ["Dense", "TAMT-MLM", "TAMT-KD", "TAMT-MLM+KD", "IMP", "OMP", "Random"]
COLOURS = {
    "Dense": "black",
    "TAMT-MLM": "tab:red",
    "TAMT-KD": "tab:blue",
    "TAMT-MLM+KD": "tab:purple",
    "IMP": "tab:green",
    "OMP": "tab:orange",
    "Random": "tab:gray",
}
_EXTRA = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold", "navy"]
PRETTY = {"mlm_loss": "MLM loss", "kd_loss": "KD loss", "avg_score": "average downstream score",
          "best_score": "downstream score", "omp_similarity": "similarity to OMP mask"}  # fmt: skip


def _base(label: str) -> str:
    return label.split(" (")[0]


def colour(label: str) -> str:
    b = _base(label)
    if b in COLOURS:
        return COLOURS[b]
    return _EXTRA[sum(map(ord, b)) % len(_EXTRA)]


def marker(label: str) -> str:
    if label == "Dense":
        return "*"
    return "^" if "random init" in label else "o"


def _label_key(label: str) -> tuple[int, str]:
    b = _base(label)
    return (ORDER.index(b) if b in ORDER else len(ORDER), label)


def _labels(df: pd.DataFrame) -> list[str]:
    return sorted(df["label"].dropna().unique().tolist(), key=_label_key)


def _finite(df: pd.DataFrame, cols: Iterable[str]) -> pd.DataFrame:
    cols = list(cols)
    if any(c not in df.columns for c in cols):
        return df.iloc[0:0]
    m = np.ones(len(df), bool)
    for c in cols:
        m &= np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(float))
    return df[m]


def _is_dense(df: pd.DataFrame) -> pd.Series:
    if "method" in df.columns:
        return df["method"].astype(object).eq("dense")
    return df["label"].eq("Dense")


def _empty(fig: Figure, msg: str) -> Figure:
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _sp(v: float) -> str:
    return f"{float(v):g}"


def _legend(fig: Figure, axes: list[Any]) -> None:
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    if handles:
        labs = sorted(handles, key=_label_key)
        fig.legend([handles[l] for l in labs], labs, loc="outside right center", fontsize="small")


# ---------------------------------------------------------------------------------------------------------------
# 1. score vs loss


def build_loss_score_figure(
    data: pd.DataFrame, loss: str = "mlm_loss", score: str = "avg_score", title: str | None = None
) -> Figure:
    """Score vs ``loss``: one panel per (non-zero) sparsity, one scatter per method label, dense as a star.

    ``data`` is the average table (``score="avg_score"``) or a one-task slice of the tidy table
    (``score="best_score"``); rows with a non-finite loss or score are not drawn."""
    d = _finite(data, [loss, score, "sparsity"]) if len(data) else data
    if not len(d):
        return _empty(Figure(figsize=(5, 3), layout="constrained"), f"no tickets with both {loss} and {score}")
    dense = d[_is_dense(d)]
    rest = d[~_is_dense(d)]
    sps = sorted(rest["sparsity"].astype(float).unique())
    if not sps:
        sps = [0.0]
    ncol = min(4, len(sps))
    nrow = math.ceil(len(sps) / ncol)
    fig = Figure(figsize=(3.6 * ncol + 1.6, 3.2 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True).ravel().tolist()
    for ax in axes[len(sps):]:
        ax.set_axis_off()
    axes = axes[: len(sps)]
    for ax, sp in zip(axes, sps):
        sub = rest[np.isclose(rest["sparsity"].astype(float), sp)]
        for lab in _labels(sub):
            pts = sub[sub["label"] == lab]
            ax.scatter(pts[loss].astype(float), pts[score].astype(float), c=colour(lab), marker=marker(lab),
                       s=36, alpha=0.85, label=lab, edgecolors="none")  # fmt: skip
        if len(dense):
            ax.scatter(dense[loss].astype(float), dense[score].astype(float), c="black", marker="*", s=220,
                       label="Dense", zorder=5)  # fmt: skip
        ax.set_title(f"sparsity {_sp(sp)}")
        ax.set_xlabel(PRETTY.get(loss, loss))
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes):
        if i % ncol == 0:
            ax.set_ylabel(PRETTY.get(score, score))
    _legend(fig, axes)
    if title:
        fig.suptitle(title)
    return fig


def panel_points(fig: Figure) -> dict[str, dict[str, int]]:
    """{panel title: {method label: number of points}} of a figure's scatter collections."""
    out: dict[str, dict[str, int]] = {}
    for ax in fig.axes:
        if not ax.get_title() and not ax.collections:
            continue
        per: dict[str, int] = {}
        for c in ax.collections:
            lab = c.get_label()
            if lab.startswith("_"):
                continue
            per[lab] = per.get(lab, 0) + len(c.get_offsets())
        out[ax.get_title()] = per
    return out


# ---------------------------------------------------------------------------------------------------------------
# 2. score vs sparsity


def sparsity_summary(data: pd.DataFrame, score: str = "avg_score") -> pd.DataFrame:
    """label, sparsity, mean, std, n of ``score`` (over tickets and seeds in ``data``)."""
    d = _finite(data, [score, "sparsity"]) if len(data) else data
    if not len(d):
        return pd.DataFrame(columns=["label", "sparsity", "mean", "std", "n"])
    g = d.groupby(["label", "sparsity"])[score].agg(["mean", "std", "size"]).reset_index()
    return g.rename(columns={"size": "n"})


def build_score_vs_sparsity(data: pd.DataFrame, score: str = "avg_score", facet: str | None = None) -> Figure:
    """Mean ± std of ``score`` vs sparsity, one errorbar line per method; the dense model as a star at 0 and
    a dashed line. ``facet="task"`` draws one panel per task (tidy table, ``score="best_score"``)."""
    d = _finite(data, [score, "sparsity"]) if len(data) else data
    if not len(d):
        return _empty(Figure(figsize=(5, 3), layout="constrained"), f"no finite {score}")
    facets = [None] if facet is None or facet not in d.columns else sorted(d[facet].dropna().unique())
    ncol = min(4, len(facets))
    nrow = math.ceil(len(facets) / ncol)
    fig = Figure(figsize=(4.2 * ncol + 1.6, 3.3 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel().tolist()
    for ax in axes[len(facets):]:
        ax.set_axis_off()
    axes = axes[: len(facets)]
    for ax, f in zip(axes, facets):
        sub = d if f is None else d[d[facet] == f]
        summ = sparsity_summary(sub, score)
        for lab in sorted(summ["label"].unique(), key=_label_key):
            s = summ[summ["label"] == lab].sort_values("sparsity")
            if lab == "Dense":
                ax.errorbar(s["sparsity"], s["mean"], yerr=s["std"].fillna(0), fmt="*", ms=14, c="black",
                            label=lab, zorder=5)  # fmt: skip
                for m in s["mean"]:
                    ax.axhline(m, ls="--", c="black", lw=0.8, alpha=0.6)
                continue
            ax.errorbar(s["sparsity"], s["mean"], yerr=s["std"].fillna(0), fmt="-" + marker(lab), c=colour(lab),
                        capsize=3, label=lab)  # fmt: skip
        ax.set_xlabel("sparsity")
        ax.set_ylabel(PRETTY.get(score, score))
        ax.set_title(f"{facet} {f}" if f is not None else "score vs sparsity")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def errorbar_points(fig: Figure) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{panel title: {method label: [(x, y), ...]}} of a figure's errorbar containers."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for ax in fig.axes:
        per = {}
        for c in ax.containers:
            line = c.lines[0]
            if line is None:
                continue
            per[c.get_label()] = list(zip(map(float, line.get_xdata()), map(float, line.get_ydata())))
        if per:
            out[ax.get_title()] = per
    return out


# ---------------------------------------------------------------------------------------------------------------
# 3. similarity heatmap


def build_similarity_heatmap(matrix: pd.DataFrame, title: str = "mask similarity (Jaccard)",
                             annotate: bool | None = None, vmin: float = 0.0, vmax: float = 1.0) -> Figure:
    """Annotated heatmap of a square label x label matrix (e.g. :func:`analysis.masks.similarity_matrix`)."""
    n = len(matrix)
    if n == 0:
        return _empty(Figure(figsize=(4, 3), layout="constrained"), "no tickets to compare")
    size = max(3.5, 0.55 * n + 2.5)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    vals = matrix.to_numpy(float)
    im = ax.imshow(vals, cmap="viridis", vmin=vmin, vmax=vmax)
    labels = [str(c) for c in matrix.columns]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(n), [str(i) for i in matrix.index], fontsize="small")
    if annotate is None:
        annotate = n <= 25
    if annotate:
        for i in range(n):
            for j in range(n):
                v = vals[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="x-small",
                            color="white" if v < (vmin + vmax) / 2 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# 4. steps study


def build_steps_figure(
    data: pd.DataFrame, score: str = "avg_score", losses: tuple[str, ...] = ("mlm_loss", "kd_loss"),
    methods: tuple[str, ...] = ("tamt", "imp"),
) -> Figure:
    """Score and losses vs steps spent finding the ticket (rows: score, then each loss with data; columns: one per
    sparsity), one line per method label (mean over tickets at equal steps); the dense model as a dashed line."""
    if not len(data) or "steps" not in data.columns or "method" not in data.columns:
        return _empty(Figure(figsize=(5, 3), layout="constrained"), "no step data")
    d = data[data["method"].isin(methods)].copy()
    d["steps"] = pd.to_numeric(d["steps"], errors="coerce")
    d = d[d["steps"].notna() & (d["steps"] > 0)]
    dense = data[_is_dense(data)]
    ys = [c for c in (score, *losses) if c in d.columns and len(_finite(d, [c]))]
    if not len(d) or not ys:
        return _empty(Figure(figsize=(5, 3), layout="constrained"), "no tickets with steps > 0")
    sps = sorted(d["sparsity"].dropna().astype(float).unique())
    fig = Figure(figsize=(4.0 * len(sps) + 1.6, 3.0 * len(ys)), layout="constrained")
    axes = fig.subplots(len(ys), len(sps), squeeze=False)
    for j, sp in enumerate(sps):
        sub = d[np.isclose(d["sparsity"].astype(float), sp)]
        for i, y in enumerate(ys):
            ax = axes[i][j]
            for lab in _labels(sub):
                s = _finite(sub[sub["label"] == lab], [y]).groupby("steps")[y].agg(["mean", "std"]).reset_index()
                if not len(s):
                    continue
                ax.errorbar(s["steps"], s["mean"], yerr=s["std"].fillna(0), fmt="-" + marker(lab), c=colour(lab),
                            capsize=3, label=lab)  # fmt: skip
            if y in dense.columns:
                for v in _finite(dense, [y])[y]:
                    ax.axhline(float(v), ls="--", c="black", lw=0.8, label="Dense")
            ax.set_title(f"sparsity {_sp(sp)}" if i == 0 else "")
            ax.set_xlabel("steps" if i == len(ys) - 1 else "")
            ax.set_ylabel(PRETTY.get(y, y) if j == 0 else "")
            ax.grid(alpha=0.3)
    _legend(fig, list(np.ravel(axes)))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# saving


def save(fig: Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``out_dir/name.png`` and ``.svg``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    return paths


def plot_loss_score(data: pd.DataFrame, out_dir: str | os.PathLike, score: str = "avg_score",
                    losses: tuple[str, ...] = ("mlm_loss", "kd_loss"), prefix: str = "") -> list[Path]:
    """The main figure, one file pair per loss that has data: ``{prefix}score_vs_{loss}.png|svg``."""
    paths: list[Path] = []
    for loss in losses:
        if loss not in data.columns or not len(_finite(data, [loss, score])):
            continue
        paths += save(build_loss_score_figure(data, loss, score), out_dir, f"{prefix}score_vs_{loss}")
    return paths


def plot_score_vs_sparsity(data: pd.DataFrame, out_dir: str | os.PathLike, score: str = "avg_score",
                           facet: str | None = None, name: str = "score_vs_sparsity") -> list[Path]:
    return save(build_score_vs_sparsity(data, score, facet), out_dir, name)


def plot_similarity_heatmap(matrix: pd.DataFrame, out_dir: str | os.PathLike, name: str = "mask_similarity",
                            title: str = "mask similarity (Jaccard)") -> list[Path]:
    return save(build_similarity_heatmap(matrix, title), out_dir, name)


def plot_steps(data: pd.DataFrame, out_dir: str | os.PathLike, score: str = "avg_score",
               name: str = "steps") -> list[Path]:
    return save(build_steps_figure(data, score), out_dir, name)
