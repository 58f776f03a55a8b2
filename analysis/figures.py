"""Figures (matplotlib, no pyplot state: each ``build_*`` returns a ``Figure``, each ``plot_*`` saves PNG + SVG).

1. :func:`build_loss_score_figure` — the paper's main figure: downstream score vs MLM (or KD) loss, one panel
   per sparsity, one colour per method (TAMT variants labelled TAMT-MLM / TAMT-KD / TAMT-MLM+KD; a random-init
   TAMT ticket uses its objective's colour with a triangle marker), the dense model as a star in every panel.
2. :func:`build_score_vs_sparsity` — score vs sparsity per method, mean ± std over tickets/seeds.
3. :func:`build_similarity_heatmap` — annotated mask-similarity heatmap.
4. :func:`build_steps_figure` — score and losses vs ticket-finding steps (TAMT at several steps vs IMP).

Every scatter/errorbar artist carries its method label (``get_label()``) so tests and users can read back the
points per method per panel (:func:`panel_points`). Scores of trials the scheduler stopped early (lower bounds;
for a mean: when any score averaged is one) are drawn hollow (:func:`analysis.figure_style.hollow_points` reads
them back). Score vs sparsity offsets each method's x a little (:func:`analysis.figure_style.dodge`). A ``plot_*``
whose figure would have fewer than two distinct x values or no data writes nothing and appends the reason to
``skipped``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# re-exported: the style names this module held before it was split
from .figure_style import (  # noqa: E402,F401
    COLOURS, HOLLOW_LABEL, ORDER, PRETTY, STOPPED_GID, _base, _empty, _finite, _is_dense, _label_key, _labels,
    _legend, _sp, colour, cut_short, dodge, errorbar_marked, hollow_points, marker, scatter_marked, stopped_label,
)
from .results_io import fmt_num  # noqa: E402


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
            scatter_marked(ax, pts[loss].astype(float), pts[score].astype(float), cut_short(pts), lab, colour(lab),
                           marker(lab), s=36, alpha=0.85, edgecolors="none")  # fmt: skip
        if len(dense):
            scatter_marked(ax, dense[loss].astype(float), dense[score].astype(float), cut_short(dense), "Dense",
                           "black", "*", s=220, zorder=5)  # fmt: skip
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
    """{panel title: {method label: number of points}} of a figure's scatter collections (hollow ones too)."""
    out: dict[str, dict[str, int]] = {}
    for ax in fig.axes:
        if not ax.get_title() and not ax.collections:
            continue
        per: dict[str, int] = {}
        for c in ax.collections:
            lab = stopped_label(c)
            if lab.startswith("_"):
                continue
            per[lab] = per.get(lab, 0) + len(c.get_offsets())
        out[ax.get_title()] = per
    return out


# ---------------------------------------------------------------------------------------------------------------
# 2. score vs sparsity


def sparsity_summary(data: pd.DataFrame, score: str = "avg_score") -> pd.DataFrame:
    """label, sparsity, mean, std, n, n_stopped of ``score`` (over tickets and seeds in ``data``; n_stopped: rows
    cut short by the scheduler, see :func:`analysis.results_io.stopped_mask`)."""
    d = _finite(data, [score, "sparsity"]) if len(data) else data
    if not len(d):
        return pd.DataFrame(columns=["label", "sparsity", "mean", "std", "n", "n_stopped"])
    d = d.assign(_stopped=cut_short(d).astype(int))
    g = d.groupby(["label", "sparsity"]).agg(mean=(score, "mean"), std=(score, "std"), n=(score, "size"),
                                             n_stopped=("_stopped", "sum")).reset_index()  # fmt: skip
    return g


def build_score_vs_sparsity(data: pd.DataFrame, score: str = "avg_score", facet: str | None = None) -> Figure:
    """Mean ± std of ``score`` vs sparsity, one errorbar line per method, x offset per method by :func:`dodge`
    (ticks at the true sparsities); the dense model as a star at 0 and a dashed line. A point is hollow when any
    score in its mean was cut short. ``facet="task"`` draws one panel per task (tidy table, ``score="best_score"``)."""
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
    sps = sorted(d["sparsity"].astype(float).unique())
    off = dodge(d["label"].dropna().unique(), sps)
    for ax, f in zip(axes, facets):
        sub = d if f is None else d[d[facet] == f]
        summ = sparsity_summary(sub, score)
        for lab in sorted(summ["label"].unique(), key=_label_key):
            s = summ[summ["label"] == lab].sort_values("sparsity")
            x, st = s["sparsity"].astype(float) + off.get(lab, 0.0), s["n_stopped"] > 0
            if lab == "Dense":
                errorbar_marked(ax, x, s["mean"], s["std"].fillna(0), st, lab, "black", "*", ms=14, zorder=5)
                for m in s["mean"]:
                    ax.axhline(m, ls="--", c="black", lw=0.8, alpha=0.6)
                continue
            errorbar_marked(ax, x, s["mean"], s["std"].fillna(0), st, lab, colour(lab), "-" + marker(lab), capsize=3)
        ax.set_xticks(sps, [_sp(v) for v in sps])
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
    sparsity), one line per method label (mean over tickets at equal steps, hollow where any was cut short); the
    dense model as a dashed line."""
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
                pts = _finite(sub[sub["label"] == lab], [y])
                s = pts.assign(_st=cut_short(pts).astype(int)).groupby("steps").agg(
                    mean=(y, "mean"), std=(y, "std"), n_stopped=("_st", "sum")).reset_index()
                if not len(s):
                    continue
                errorbar_marked(ax, s["steps"], s["mean"], s["std"].fillna(0), s["n_stopped"] > 0, lab, colour(lab),
                                "-" + marker(lab), capsize=3)  # fmt: skip
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
# skipping and saving


def loss_skip_reason(data: pd.DataFrame, loss: str, score: str = "avg_score") -> str | None:
    """Why score vs ``loss`` has nothing to show (no point, or one loss value), else None."""
    d = _finite(data, [loss, score]) if len(data) else data.iloc[0:0]
    if not len(d):
        return f"no ticket has both {loss} and {score}"
    u = np.unique(d[loss].astype(float))
    return f"every ticket has the same {loss} ({fmt_num(u[0])})" if len(u) < 2 else None


def sparsity_skip_reason(data: pd.DataFrame, score: str = "avg_score") -> str | None:
    """Why score vs sparsity has nothing to show (no finite score, or one sparsity), else None."""
    d = _finite(data, [score, "sparsity"]) if len(data) else data.iloc[0:0]
    if not len(d):
        return f"no finite {score}"
    u = np.unique(d["sparsity"].astype(float))
    return f"every score is at one sparsity ({_sp(u[0])})" if len(u) < 2 else None


def steps_skip_reason(data: pd.DataFrame, methods: tuple[str, ...] = ("tamt", "imp")) -> str | None:
    """Why the steps figure has nothing to show (no ticket of ``methods`` with steps > 0, or no sparsity with two
    step counts), else None."""
    if not len(data) or "steps" not in data.columns or "method" not in data.columns:
        return "no step data"
    d = data[data["method"].isin(methods)]
    d = d.assign(steps=pd.to_numeric(d["steps"], errors="coerce"))
    d = d[d["steps"].notna() & (d["steps"] > 0)]
    if not len(d):
        return f"no {' or '.join(m.upper() for m in methods)} ticket with steps > 0"
    u = np.unique(d["steps"].astype(float))
    if len(u) < 2:
        return f"every ticket used the same step count ({fmt_num(u[0])})"
    if d.groupby(d["sparsity"].astype(float).round(6))["steps"].nunique().max() < 2:
        return "no sparsity has tickets at two or more step counts"
    return None


def _skip(out_dir: str | os.PathLike, name: str, reason: str, skipped: list[str] | None) -> list[Path]:
    """Record "<name> figure skipped: <reason>" and remove a stale ``name.png|svg`` of an earlier run."""
    if skipped is not None:
        skipped.append(f"{name} figure skipped: {reason}")
    for ext in (".png", ".svg"):
        (Path(out_dir) / f"{name}{ext}").unlink(missing_ok=True)
    return []


def save(fig: Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``out_dir/name.png`` and ``.svg``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    return paths


def plot_loss_score(data: pd.DataFrame, out_dir: str | os.PathLike, score: str = "avg_score",
                    losses: tuple[str, ...] = ("mlm_loss", "kd_loss"), prefix: str = "",
                    skipped: list[str] | None = None) -> list[Path]:
    """The main figure, one file pair per loss that has data: ``{prefix}score_vs_{loss}.png|svg``."""
    paths: list[Path] = []
    for loss in losses:
        name = f"{prefix}score_vs_{loss}"
        why = loss_skip_reason(data, loss, score)
        paths += _skip(out_dir, name, why, skipped) if why else save(build_loss_score_figure(data, loss, score),
                                                                      out_dir, name)  # fmt: skip
    return paths


def plot_score_vs_sparsity(data: pd.DataFrame, out_dir: str | os.PathLike, score: str = "avg_score",
                           facet: str | None = None, name: str = "score_vs_sparsity",
                           skipped: list[str] | None = None) -> list[Path]:
    why = sparsity_skip_reason(data, score)
    return _skip(out_dir, name, why, skipped) if why else save(build_score_vs_sparsity(data, score, facet), out_dir,
                                                               name)  # fmt: skip


def plot_similarity_heatmap(matrix: pd.DataFrame, out_dir: str | os.PathLike, name: str = "mask_similarity",
                            title: str = "mask similarity (Jaccard)") -> list[Path]:
    return save(build_similarity_heatmap(matrix, title), out_dir, name)


def plot_steps(data: pd.DataFrame, out_dir: str | os.PathLike, score: str = "avg_score",
               name: str = "steps", skipped: list[str] | None = None) -> list[Path]:
    why = steps_skip_reason(data)
    return _skip(out_dir, name, why, skipped) if why else save(build_steps_figure(data, score), out_dir, name)
