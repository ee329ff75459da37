"""Report figures as PNG, drawn with matplotlib's object API (no pyplot, no GUI backend).

Each function writes one file and returns its path; callers decide what to plot.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from exvo.metrics import COUNTRIES, EMOTIONS

DPI = 120


def new_figure(w: float, h: float):
    from matplotlib.figure import Figure

    # Figure() without pyplot renders through the Agg canvas on savefig: safe headless
    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


CHAR_EM = 0.62
"""Width of an average title character in ems (DejaVu Sans runs at about 0.55-0.6; a margin on top)."""


def fit_title(text: str, width_in: float, fontsize: float = 10.0) -> str:
    """``text`` wrapped (each of its lines, at spaces, hyphens or mid-word) so that no line is wider
    than ``width_in`` inches at ``fontsize`` points: a title never runs off the figure's edge."""
    import textwrap

    per_line = max(int(width_in * 72 / (fontsize * CHAR_EM)), 10)
    return "\n".join("\n".join(textwrap.wrap(ln, per_line) or [""]) for ln in text.splitlines())


def set_title(fig, ax, text: str, fontsize: float = 10.0) -> None:
    """The axes title, wrapped to the figure's width (see :func:`fit_title`)."""
    ax.set_title(fit_title(text, fig.get_figwidth() * 0.85, fontsize), fontsize=fontsize)


def per_emotion_ccc(runs: list[tuple[str, dict[str, float], dict[str, float | None]]], path: Path) -> Path:
    """Grouped bars: per-emotion Val CCC, mean over seeds with ±1 std error bars.

    ``runs``: ``(run name, {emotion: mean CCC}, {emotion: std or None})``; a run without a
    std (one seed, or no per-seed scores) is drawn without error bars and says so in its label.
    """
    fig = new_figure(11, 4.8)
    ax = fig.add_subplot()
    n = len(runs)
    width = 0.8 / n
    cols = list(EMOTIONS) if set(runs[0][1]) <= set(EMOTIONS) else list(runs[0][1])   # another task's columns
    x = np.arange(len(cols))
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    for k, (name, per, std) in enumerate(runs):
        vals = [per.get(e, np.nan) for e in cols]
        errs = [np.nan if std.get(e) is None else std[e] for e in cols]
        has_err = not np.all(np.isnan(errs))
        ax.bar(x - 0.4 + width * (k + 0.5), vals, width, color=cmap(k % 10),
               yerr=np.nan_to_num(errs) if has_err else None, capsize=2, error_kw={"lw": 0.8},
               label=name if has_err else f"{name} (no std)")
    ax.set_xticks(x, cols, rotation=30 if len(cols) <= 12 else 90, ha="right", fontsize=None if len(cols) <= 12 else 6)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("CCC (Val), mean ± std over seeds")
    dagger = "; † = chosen on Val, optimistic" if any("†" in name for name, _, _ in runs) else ""
    set_title(fig, ax, f"Per-emotion CCC of the top {n} run{'s' if n > 1 else ''} (Val, by S_MTL mean over seeds"
                       f"{dagger})", 12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(n, 3), loc="upper left", bbox_to_anchor=(0, -0.25), frameon=False)
    fig.savefig(path)
    return path


def country_confusion(true: np.ndarray, pred: np.ndarray, path: Path, title: str,
                      classes: tuple[str, ...] = COUNTRIES) -> Path:
    """Row-normalised confusion matrix (rows: true class, ExVo: country; cells: % of the row and count)."""
    COUNTRIES = classes     # noqa: N806 (the task's classes; ExVo's countries by default)
    k = len(COUNTRIES)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(true, int), np.asarray(pred, int)), 1)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    fig = new_figure(5.6, 4.8)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            label = f"{100 * frac[i, j]:.0f}%\n({cm[i, j]})" if rows[i, 0] else "–"   # no true clips of i
            ax.text(j, i, label, ha="center", va="center", fontsize=9,
                    color="white" if frac[i, j] > 0.55 else "black")
    ax.set_xticks(range(k), COUNTRIES, rotation=20, ha="right")
    ax.set_yticks(range(k), [c if rows[i, 0] else f"{c}\n(no clips)" for i, c in enumerate(COUNTRIES)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    set_title(fig, ax, title)
    fig.colorbar(im, ax=ax, label="recall (row fraction)", shrink=0.85)
    fig.savefig(path)
    return path


def age_scatter(true: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
    """True vs predicted age (years) with the identity line."""
    true = np.asarray(true, float)
    pred = np.asarray(pred, float)
    lo = float(min(true.min(), pred.min())) - 2
    hi = float(max(true.max(), pred.max())) + 2
    fig = new_figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--", label="perfect")
    ax.scatter(true, pred, s=10, alpha=0.5, edgecolors="none", label="Val clips")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    set_title(fig, ax, title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(path)
    return path


MIN_LAYER_SPAN = 0.05
"""Smallest y-range of the layer plot (S_MTL units), so that a gap inside the seed noise does not look steep."""


def layer_curves(groups: dict[str, list[dict]], path: Path) -> Path:
    """S_MTL (mean ± std over seeds) against SSL layer, one line per group.

    ``groups``: ``{label: [{"layer", "mean", "std" (None: one seed), "how", "system"}]}``
    (see :func:`exvo.fusion.rows.layer_groups`). Layers reached by ``@best`` or by the default
    (last) layer are ringed and labelled. The shaded band is the best point's mean ± std:
    points inside it are within one seed-std of the best. The y-range spans at least
    :data:`MIN_LAYER_SPAN` and always covers the error bars.
    """
    fig = new_figure(8, 4.6)
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    lo, hi = np.inf, -np.inf
    for g, (label, pts) in enumerate(groups.items()):
        color = cmap(g % 10)
        x = np.array([p["layer"] for p in pts])
        y = np.array([p["mean"] for p in pts], dtype=float)
        e = np.array([np.nan if p["std"] is None else p["std"] for p in pts], dtype=float)
        ax.errorbar(x, y, yerr=np.nan_to_num(e), marker="o", ms=4, capsize=3, color=color, label=label)
        lo = min(lo, float(np.min(y - np.nan_to_num(e))))
        hi = max(hi, float(np.max(y + np.nan_to_num(e))))
        b = int(np.argmax(y))
        if not np.isnan(e[b]):
            ax.axhspan(y[b] - e[b], y[b] + e[b], color=color, alpha=0.12, lw=0)
        for p, xi, yi in zip(pts, x, y):
            tags = [t for t in (p["how"], (p.get("also") or "").split(" ")[0]) if t in ("best", "last")]
            if tags:
                ax.plot([xi], [yi], marker="o", ms=11, mfc="none", mec=color, mew=1.2)
                label = " / ".join({"best": "@best", "last": "default (last)"}[t] for t in dict.fromkeys(tags))
                ax.annotate(label, (xi, yi), textcoords="offset points",
                            xytext=(0, 9), ha="center", fontsize=8, color=color)
    mid, span = (lo + hi) / 2, max(hi - lo, MIN_LAYER_SPAN) * 1.15
    ax.set_ylim(mid - span / 2, mid + span / 2)
    ax.set_xlabel("layer (0 = input embeddings)")
    ax.set_ylabel("S_MTL (Val, mean ± std over seeds)")
    set_title(fig, ax, f"S_MTL per SSL layer (band: best layer ± 1 seed-std; y-range ≥ {MIN_LAYER_SPAN})")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path
