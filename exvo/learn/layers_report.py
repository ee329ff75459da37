"""The layer sweep and the weighted sum in ``exvo report``: tables and figures.

* a layer sweep (``<runs>/layers/<name>/sweep.json``, :mod:`exvo.learn.layers`): its table
  (every layer, the weighted sum, the best-k concatenation: per-subtask Val scores of the seed
  ensemble with speaker-bootstrap 95 % intervals, S_MTL mean ± std over seeds, the Train-side
  score that ranked the layers) and ``layers_<name>.png``: the score per layer with its 95 %
  band, the weighted sum and the concatenation as lines, the weights underneath;
* every ``wsum`` learn run (``models/layer_weights.json``): ``wsum_<run>.png``, one bar chart
  per task of the softmax layer weights, mean ± std over seeds.

Figures use the object API of matplotlib (no pyplot), as :mod:`exvo.fusion.plots`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAYERS_DIR = "layers"
"""Sweeps live in ``<runs>/layers/<name>/`` (not report rows of their own)."""

SUBTASKS = (("ccc", "Emo-CCC", 3), ("uar", "Cou-UAR", 3), ("mae", "Age-MAE", 2), ("s_mtl", "S_MTL", 3))
HEADER = ["candidate", "rank (Train)", "Train sel. S_MTL", *(f"{n} ens. [95% CI]" for _, n, _ in SUBTASKS),
          "S_MTL mean ± std (seeds)"]


def _ci_cell(m: dict, key: str, digits: int) -> str:
    v = m["ensemble"][key]
    lo, hi = m.get("ci95", {}).get(key, (None, None))
    return f"{v:.{digits}f}" + (f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None else "")


def table_rows(rec: dict) -> list[list[str]]:
    """One row per candidate: the layers in cache order, then the weighted sum and the concatenation."""
    rank = {layer: k + 1 for k, layer in enumerate(rec["ranking"])}
    out = []
    for c in rec["candidates"]:
        m, s = c["metrics"], c["metrics"]["summary"]["s_mtl"]
        label = c["label"] + (" *" if c["kind"] == "layer" and c["layer"] in rec["top_k"] else "")
        if c["kind"] == "concat":
            label += " (" + ",".join(map(str, c["layers"])) + ")"
        seeds = "undefined" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
        out.append([label, str(rank[c["layer"]]) if c["kind"] == "layer" else "–", f"{c['train_score']:.3f}",
                    *(_ci_cell(m, k, d) for k, _, d in SUBTASKS), seeds])
    return out


def table_notes(rec: dict) -> list[str]:
    dag = " †" if rec["selection"]["optimistic"] else ""
    return [f"Val{dag}, {len(rec['seeds'])} seeds, head {rec['head']}; selection: {rec['selection']['description']}",
            "ens. = the seed-averaged predictions, [95% CI] = speaker bootstrap of them (CCC in the population "
            "convention); S_MTL mean ± std over seeds in the challenge convention, as `exvo learn`",
            f"rank (Train): layers ranked by the selection S_MTL on {'Val †' if dag else 'Train alone'} (mean over "
            f"seeds); * = the {len(rec['top_k'])} concatenated (chosen on it, never on Val{' here' if not dag else ''})"]


def table_markdown(rec: dict) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in table_rows(rec)]
    md = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(md + [""] + [f"- {n}" for n in table_notes(rec)])


def table_text(rec: dict) -> str:
    rows = table_rows(rec)
    w = [max(len(r[j]) for r in [HEADER, *rows]) for j in range(len(HEADER))]
    line = lambda r: "  ".join(c.ljust(w[j]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(r)).rstrip()  # noqa: E731
    return "\n".join([f"layer sweep {rec['name']} ({rec['features']})", line(HEADER), "  ".join("-" * x for x in w),
                      *map(line, rows), *(f"  {n}" for n in table_notes(rec))])


def _new_figure(w: float, h: float):
    from exvo.fusion.plots import new_figure

    return new_figure(w, h)


def _weight_bars(ax, layers: list[int], tasks: list[str], mean: np.ndarray, std: np.ndarray | None) -> None:
    """Grouped bars of ``(T, L)`` softmax weights at the layer positions, ±1 std over seeds."""
    T, L = mean.shape
    width = 0.8 / T
    x = np.arange(L)
    for t in range(T):
        ax.bar(x - 0.4 + width * (t + 0.5), mean[t], width, yerr=None if std is None else std[t], capsize=2,
               error_kw={"lw": 0.7}, label=tasks[t])
    ax.axhline(1.0 / L, color="grey", lw=0.8, ls="--", label=f"uniform 1/{L}")
    ax.set_xticks(x, [str(v) for v in layers], fontsize=7 if L > 16 else 9)
    ax.set_xlim(-0.6, L - 0.4)
    ax.set_xlabel("layer")
    ax.set_ylabel("softmax weight")
    ax.legend(fontsize=7, ncols=T + 1)
    ax.grid(axis="y", alpha=0.3)


def _score_panel(ax, rec: dict, key: str, name: str, big: bool) -> None:
    layers = [c for c in rec["candidates"] if c["kind"] == "layer"]
    x = np.arange(len(layers))
    ens = np.array([c["metrics"]["ensemble"][key] for c in layers], dtype=float)
    ci = np.array([c["metrics"].get("ci95", {}).get(key, (np.nan, np.nan)) for c in layers], dtype=float)
    ax.fill_between(x, ci[:, 0], ci[:, 1], color="tab:blue", alpha=0.18, lw=0, label="layer: 95% CI")
    ax.plot(x, ens, "o-", color="tab:blue", ms=4 if big else 2.5, label="layer (seed ensemble)")
    if big:
        mean = np.array([np.nan if c["metrics"]["summary"][key]["mean"] is None else
                         c["metrics"]["summary"][key]["mean"] for c in layers], dtype=float)
        std = np.array([c["metrics"]["summary"][key]["std"] or 0.0 for c in layers], dtype=float)
        ax.errorbar(x + 0.12, mean, yerr=std, fmt="none", ecolor="tab:blue", alpha=0.6, capsize=2,
                    label="layer: mean ± std over seeds")
        top = [k for k, c in enumerate(layers) if c["layer"] in rec["top_k"]]
        ax.plot(x[top], ens[top], "o", ms=10, mfc="none", mec="black", label="top-k on Train")
    for c, color, ls in ((next(c for c in rec["candidates"] if c["kind"] == "wsum"), "tab:red", "-"),
                         (next(c for c in rec["candidates"] if c["kind"] == "concat"), "tab:green", "--")):
        v = c["metrics"]["ensemble"][key]
        ax.axhline(v, color=color, ls=ls, lw=1.4, label=c["label"] if big else None)
        lo, hi = c["metrics"].get("ci95", {}).get(key, (None, None))
        if big and lo is not None and c["kind"] == "wsum":
            ax.axhspan(lo, hi, color=color, alpha=0.08, lw=0)
    ax.set_xticks(x, [str(c["layer"]) for c in layers], fontsize=7 if len(layers) > 16 else 9)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_title(name + (" (lower is better)" if key == "mae" else ""), fontsize=10 if big else 9)
    ax.grid(alpha=0.3)
    if big:
        ax.set_ylabel("Val" + (" †" if rec["selection"]["optimistic"] else ""))
        ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.07), frameon=False)


def sweep_figure(rec: dict, path: Path) -> Path:
    """S_MTL per layer (CI band, seeds' spread, the weighted sum and the concatenation as lines),
    the three subtasks, and the weighted sum's layer weights underneath."""
    fig = _new_figure(11, 10)
    gs = fig.add_gridspec(3, 3, height_ratios=[2.2, 1.3, 1.4])
    _score_panel(fig.add_subplot(gs[0, :]), rec, "s_mtl", f"S_MTL per layer — {rec['features']}", True)
    for j, (key, name, _) in enumerate(SUBTASKS[:3]):
        _score_panel(fig.add_subplot(gs[1, j]), rec, key, name, False)
    w = next(c for c in rec["candidates"] if c["kind"] == "wsum")["weights"]
    ax = fig.add_subplot(gs[2, :])
    _weight_bars(ax, rec["layers"], w["tasks"], np.asarray(w["mean"]), np.asarray(w["std"]))
    ax.set_title(f"weighted-sum layer weights, mean ± std over {len(w['seeds'])} seeds", fontsize=10)
    fig.savefig(path)
    return path


def weights_figure(record: dict, layers: list[int], path: Path, title: str) -> Path:
    """One bar chart per task of a wsum run's layer weights (mean ± std over seeds)."""
    from exvo.learn.wsum import weights_by_seed

    seeds, W = weights_by_seed(record)                 # (S, T, L)
    T = W.shape[1]
    fig = _new_figure(max(6.0, 0.3 * W.shape[2] + 3), 2.4 * T + 0.6)
    for t in range(T):
        ax = fig.add_subplot(T, 1, t + 1)
        _weight_bars(ax, layers, [record["tasks"][t]], W[:, t].mean(0)[None], W[:, t].std(0)[None])
        if t == 0:
            ax.set_title(f"{title}: layer weights, mean ± std over {len(seeds)} seed(s)", fontsize=10)
    fig.savefig(path)
    return path


def _sweeps(runs_dir: Path) -> list[dict]:
    out = []
    for p in sorted((Path(runs_dir) / LAYERS_DIR).glob("*/sweep.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _wsum_layers(record: dict, n: int) -> list[int]:
    used = [k for f in record.get("features") or [] if isinstance(f, dict)
            for k in (f.get("layers") or [f.get("layer")])]
    return used if len(used) == n and all(isinstance(v, int) for v in used) else list(range(n))


def report_section(rows, out_dir: Path, corpus, runs_dir: Path):
    """``exvo report``'s section "Layers" (None without sweeps and wsum runs)."""
    from exvo.fusion.report import Section
    from exvo.learn.wsum import read_weights

    md, figures, text = [], [], []
    for rec in _sweeps(runs_dir):
        md += [f"### Layer sweep {rec['name']} ({rec['features']})", "", table_markdown(rec), ""]
        figures.append((f"Layer sweep {rec['name']}", sweep_figure(rec, Path(out_dir) / f"layers_{rec['name']}.png")))
        text.append(table_text(rec))
    for r in rows:
        if r.run.record.get("learner") != "wsum":
            continue
        w = read_weights(r.run.path / "models")
        if not w:
            continue
        layers = _wsum_layers(r.run.record, int(w["n_layers"]))
        figures.append((f"wsum layer weights of {r.system}",
                        weights_figure(w, layers, Path(out_dir) / f"wsum_{r.system}.png", r.system)))
    if not figures:
        return None
    return Section("Layers", "\n".join(md), figures=figures, text=text)
