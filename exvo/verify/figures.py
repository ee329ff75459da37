"""Report figures of enrol-to-verify runs (``<runs>/verify/<name>/``), drawn with matplotlib's object API.

* ``verify_np_curve.png`` — UAR on the queries against the number of enrolled clips per class
  N_p (paper Fig. 4), mean ± std over seeds, one line per run; chance and each run's "All"
  reference dashed;
* ``verify_projection.png`` — a 2-D PCA of one run's seed-0 embeddings: Train clips and
  prototypes of the seen classes, the task's queries, enrolled clips and prototypes, the
  unseen class highlighted.

:func:`verify_figures` is what ``exvo report`` calls.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from exvo.fusion.plots import new_figure, set_title
from exvo.metrics import EMOTIONS


def find_runs(verify_dir: Path) -> list[tuple[Path, dict, dict]]:
    """``(folder, config, metrics)`` of every complete verify run under ``verify_dir``, by name."""
    out = []
    if not verify_dir.is_dir():
        return out
    for p in sorted(verify_dir.iterdir()):
        if p.name.startswith(".") or not (p / "metrics.json").is_file() or not (p / "config.json").is_file():
            continue
        try:
            cfg, met = json.loads((p / "config.json").read_text()), json.loads((p / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if cfg.get("kind") == "verify":
            out.append((p, cfg, met))
    return out


def label(met: dict, cfg: dict | None = None) -> str:
    """What tells one verify run from another: loss, features (and encoder), task and its unseen class."""
    feats = "+".join(str(b.get("spec") or b.get("name") or "?") for b in (cfg or {}).get("features") or []
                     if isinstance(b, dict))
    enc = met.get("encoder")
    what = f"{feats} ({enc})" if feats and enc else feats or (enc or "")
    return f"{met['loss']}{f' · {what}' if what else ''} · {task_of(met)}"


def task_of(met: dict) -> str:
    return f"{' vs '.join(met['task'])} (unseen {', '.join(met['unseen'])})"


def curve_labels(found: list[tuple[Path, dict, dict]], shared_task: bool = False) -> list[str]:
    """One legend label per run, distinct: runs that :func:`label` cannot tell apart get their folder
    name; ``shared_task``: leave out the task, which every run shares (the title says it)."""
    labels = [label(m, c) for _, c, m in found]
    if shared_task:
        labels = [lab.removesuffix(f" · {task_of(m)}") for lab, (_, _, m) in zip(labels, found)]
    return [f"{lab} [{p.name}]" if labels.count(lab) > 1 else lab for lab, (p, _, _) in zip(labels, found)]


def np_curve(items: list[tuple[str, dict, dict | None]], path: Path, chance: float = 0.5, task: str = "") -> Path:
    """``items``: ``(label, {N_p: {"mean", "std"}}, all-reference UAR {"mean", "std"} or None)``;
    ``task``: what every curve shares (the task and its unseen class), said in the title."""
    import matplotlib

    fig = new_figure(8, 5.6)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10"]
    for k, (name, curve, ref) in enumerate(items):
        ns = sorted(int(n) for n in curve)
        m = np.array([curve[str(n)]["mean"] for n in ns])
        s = np.array([curve[str(n)]["std"] for n in ns])
        col = cmap(k % 10)
        dodge = 1.0 + 0.025 * (k - (len(items) - 1) / 2)        # side by side, so error bars stay readable
        ax.errorbar(np.array(ns) * dodge, m, yerr=s, marker="o", ms=4, capsize=2, color=col, label=name)
        if ref is not None:
            ax.axhline(ref["mean"], color=col, ls="--", lw=1, alpha=0.8)
    ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xscale("log")
    all_ns = sorted({int(n) for _, c, _ in items for n in c})
    if all_ns:
        ax.set_xticks(all_ns, [str(n) for n in all_ns])
    ax.set_xlabel("enrolled clips per class, N_p")
    ax.set_ylabel("UAR of the queries")
    set_title(fig, ax, "Enrol-to-verify: UAR of the queries against N_p" + (f", {task}" if task else "")
              + " (mean ± std over seeds; dashed: the \"All\" classifier trained on the task's classes)", 11)
    ax.grid(alpha=0.3)
    longest = max([len(name) for name, _, _ in items] + [12])
    fig.legend(fontsize=7, loc="outside lower center", ncols=1 if longest > 45 else 2)
    fig.savefig(path)
    return path


def pca2(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top-2 principal axes ``(E, 2)`` of ``X`` ``(n, E)``."""
    mu = X.mean(0)
    _, _, vt = np.linalg.svd(X - mu, full_matrices=False)
    return mu, vt[:2].T


def projection(npz: Path, path: Path, title: str) -> Path:
    """PCA of a run's ``embeddings.npz`` (unit-normalised, since verification compares cosines)."""
    import matplotlib

    z = np.load(npz)

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    parts = {k: unit(z[k]) for k in ("seen_train_emb", "seen_proto", "query_emb", "enrol_emb")}
    task = [int(c) for c in z["task_class"]]
    seen = [int(c) for c in z["seen_class"]]
    mu, W = pca2(np.concatenate([parts["seen_train_emb"], parts["query_emb"]]))

    def proj(a):
        return (a - mu) @ W

    fig = new_figure(10, 6)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10"]
    colour = {c: cmap(k % 10) for k, c in enumerate(seen + [c for c in task if c not in seen])}
    p = proj(parts["seen_train_emb"])
    for c in seen:
        sel = z["seen_train_class"] == c
        ax.scatter(*p[sel].T, s=8, alpha=0.25, color=colour[c])
    for c, q in zip(seen, proj(parts["seen_proto"])):
        ax.scatter(*q, s=260, marker="*", color=colour[c], edgecolor="black", zorder=5,
                   label=f"{EMOTIONS[c]} (seen, Train prototype)")
    pq, pe = proj(parts["query_emb"]), proj(parts["enrol_emb"])
    for c in task:
        new = c not in seen
        sel = z["query_class"] == c
        ax.scatter(*pq[sel].T, s=22 if new else 14, marker="^" if new else "o", facecolor="none",
                   edgecolor=colour[c], lw=1.2, label=f"{EMOTIONS[c]} queries{' (UNSEEN)' if new else ''}")
        es = z["enrol_class"] == c
        ax.scatter(*pe[es].mean(0), s=200, marker="X", color=colour[c], edgecolor="black", zorder=6,
                   label=f"{EMOTIONS[c]} enrolled prototype (projected mean)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    set_title(fig, ax, title, 9)
    fig.legend(fontsize=7, loc="outside right center")
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def verify_figures(verify_dir: str | Path, out_dir: str | Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The report's enrol-to-verify figures and one summary line per run: ``(made, notes)``."""
    verify_dir, out_dir = Path(verify_dir), Path(out_dir)
    found = find_runs(verify_dir)
    if not found:
        return [], [f"verify figures skipped: no enrol-to-verify runs under {verify_dir} (make them with `exvo verify`)"]
    notes = []
    for p, c, m in found:
        ref = m.get("all_reference")
        notes.append(
            f"verify {p.name}: {label(m, c)}, enrol {m['enrol']}: UAR {m['uar']['mean']:.3f} ± {m['uar']['std']:.3f}, "
            f"weighted F1 {m['f1_weighted']['mean']:.3f} ± {m['f1_weighted']['std']:.3f}"
            + (f", {m['margin'].get('kind', 'learned')} m {m['margin']['mean']:.3f} ± {m['margin']['std']:.3f}"
               if m["margin"]["mean"] is not None else "")
            + (f"; All {ref['uar']['mean']:.3f} ± {ref['uar']['std']:.3f}" if ref else "")
            + f" (mean ± std over {m['seeds']} seeds; queries: {m['queries']['split'].split(' (')[0]}, n = {m['queries']['n']})"
            + "".join(f"; {n}" for n in m.get("notes", [])))
    made = []
    shared = len({task_of(m) for _, _, m in found}) == 1
    curves = [(lab, m["np_curve"], (m.get("all_reference") or {}).get("uar"))
              for lab, (_, _, m) in zip(curve_labels(found, shared), found) if m.get("np_curve")]
    if curves:
        made.append(("Enrol-to-verify: UAR against enrolled clips per class",
                     np_curve(curves[:10], out_dir / "verify_np_curve.png", found[0][2].get("chance_uar", 0.5),
                              task_of(found[0][2]) if shared else "")))
    # projection: a NAMP run if there is one (the paper's method), else the first
    pick = next((r for r in found if r[2]["loss"] == "namp"), found[0])
    if (pick[0] / "embeddings.npz").is_file():
        m = pick[2]
        split = str((m.get('queries') or {}).get('split', '?')).split(' (')[0]
        made.append((f"Enrol-to-verify embeddings, PCA ({pick[0].name})", projection(
            pick[0] / "embeddings.npz", out_dir / "verify_projection.png",
            f"{label(m, pick[1])}\nseed-0 embeddings, PCA of unit vectors (UAR of the {split} queries "
            f"{m['uar']['mean']:.3f} ± {m['uar']['std']:.3f} over {m['seeds']} seeds)")))
    return made, notes


def report_section(rows, out_dir: Path, corpus, runs_dir: Path):
    """``exvo report``'s enrol-to-verify section (None when there are no verify runs)."""
    from exvo.fusion.report import Section

    if not find_runs(Path(runs_dir) / "verify"):
        return None
    made, notes = verify_figures(Path(runs_dir) / "verify", out_dir)
    return Section("Enrol-to-verify: unseen emotion classes", "Runs of `exvo verify` (nearest prototype by cosine; "
                   "UAR mean ± std over seeds).", made, notes)
