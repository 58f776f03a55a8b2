"""What the figures share: a colour and marker per method label, the legend, hollow markers for cut-short scores,
the per-method x dodge, and small frame helpers. No pyplot state."""

from __future__ import annotations

from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from sparsebert.tickets.finders import figure_order, label_colours  # noqa: E402

from .results_io import stopped_mask  # noqa: E402

ORDER = figure_order()  # from the finder registry: each spec carries its labels, colours and figure order
COLOURS = label_colours()
_EXTRA = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold", "navy"]
PRETTY = {"mlm_loss": "MLM loss", "kd_loss": "KD loss", "avg_score": "average downstream score",
          "best_score": "downstream score", "omp_similarity": "similarity to OMP mask"}  # fmt: skip

#: gid of the scatter collections that draw cut-short points (hollow), and their legend entry
STOPPED_GID = "stopped_early"
HOLLOW_LABEL = "hollow: stopped early by the scheduler (lower bound)"


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


def _hollow(artist: Any) -> bool:
    return getattr(artist, "get_gid", lambda: None)() == STOPPED_GID


def _legend(fig: Figure, axes: list[Any]) -> None:
    """One figure legend of every labelled artist (first filled handle per label), plus the hollow-marker entry
    when any axes holds a cut-short point."""
    handles: dict[str, Any] = {}
    hollow = False
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in handles or (_hollow(handles[l]) and not _hollow(h)):
                handles[l] = h
        hollow = hollow or any(c.get_gid() == STOPPED_GID for c in ax.collections)
    if handles:
        labs = sorted(handles, key=_label_key)
        hs = [handles[l] for l in labs]
        if hollow:
            hs.append(Line2D([], [], ls="", marker="o", mfc="none", mec="dimgray"))
            labs.append(HOLLOW_LABEL)
        fig.legend(hs, labs, loc="outside right center", fontsize="small")


# ---------------------------------------------------------------------------------------------------------------
# cut-short points and dodging


def scatter_marked(ax: Any, x: Iterable[float], y: Iterable[float], stopped: Iterable[bool], label: str,
                   c: str, mk: str, s: float = 36, **kw: Any) -> None:
    """Scatter the points filled, those with ``stopped`` hollow (``facecolors="none"``, gid :data:`STOPPED_GID`).

    The filled collection carries ``label``; the hollow one "_<label> stopped" (no second legend entry), or
    ``label`` when the method has no filled point. :func:`stopped_label` reads the method back."""
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    st = np.asarray(list(stopped), bool) if len(x) else np.zeros(0, bool)
    if (~st).any():
        ax.scatter(x[~st], y[~st], c=c, marker=mk, s=s, label=label, **kw)
    if st.any():
        kw = {k: v for k, v in kw.items() if k not in ("edgecolors", "alpha")}
        ax.scatter(x[st], y[st], facecolors="none", edgecolors=c, marker=mk, s=s, linewidths=1.3,
                   label=f"_{label} stopped" if (~st).any() else label, gid=STOPPED_GID, **kw)  # fmt: skip


def stopped_label(artist: Any) -> str:
    """The method label of a (possibly hollow, "_<label> stopped") artist."""
    lab = artist.get_label()
    if artist.get_gid() == STOPPED_GID and lab.startswith("_"):
        return lab[1:].removesuffix(" stopped")
    return lab


def errorbar_marked(ax: Any, x: Any, y: Any, yerr: Any, stopped: Iterable[bool], label: str, c: str, fmt: str,
                    **kw: Any) -> None:
    """``ax.errorbar`` whose markers are filled only where not ``stopped``; stopped points get a hollow marker
    (a scatter with gid :data:`STOPPED_GID`, unlabelled). The container keeps ``label`` and every (x, y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    st = np.asarray(list(stopped), bool)
    mk = fmt.lstrip("-")
    clean = [i for i in range(len(x)) if not st[i]]
    ax.errorbar(x, y, yerr=yerr, fmt=fmt, c=c, label=label, markevery=clean if st.any() else None, **kw)
    if st.any():
        ms = kw.get("ms", 6.0)
        ax.scatter(x[st], y[st], facecolors="none", edgecolors=c, marker=mk or "o", s=ms**2, linewidths=1.3,
                   label=f"_{label} stopped", gid=STOPPED_GID, zorder=kw.get("zorder", 3))  # fmt: skip


def hollow_points(fig: Figure) -> dict[str, dict[str, int]]:
    """{panel title: {method label: number of hollow (cut-short) points}} of a figure."""
    out: dict[str, dict[str, int]] = {}
    for ax in fig.axes:
        per: dict[str, int] = {}
        for c in ax.collections:
            if c.get_gid() != STOPPED_GID:
                continue
            lab = stopped_label(c)
            per[lab] = per.get(lab, 0) + len(c.get_offsets())
        if per:
            out[ax.get_title()] = per
    return out


def dodge(labels: Iterable[str], xs: Iterable[float], max_width: float = 0.08) -> dict[str, float]:
    """x offset per method label so that methods at one x sit side by side: evenly spaced over at most
    ``max_width`` (and half the smallest gap between distinct ``xs``), centred on 0, in legend order; "Dense"
    stays at 0."""
    labs = sorted({l for l in labels if l != "Dense"}, key=_label_key)
    u = np.unique(np.asarray([float(v) for v in xs if np.isfinite(float(v))], float))
    gap = float(np.diff(u).min()) if len(u) > 1 else max_width * 2
    width = min(max_width, gap / 2)
    out = {"Dense": 0.0}
    k = len(labs)
    for i, l in enumerate(labs):
        out[l] = 0.0 if k < 2 else (i - (k - 1) / 2) * width / (k - 1)
    return out


def cut_short(df: pd.DataFrame) -> np.ndarray:
    """:func:`analysis.results_io.stopped_mask` as a numpy bool array."""
    return stopped_mask(df).to_numpy(bool)
