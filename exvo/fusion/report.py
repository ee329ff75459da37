"""``make_report()``: one table of every run, sorted by S_MTL, plus figures.

Columns (as in the papers' tables): system (run name), features, dims, learner/arch,
seeds, Emo-CCC, Cou-UAR, Age-MAE and S_MTL as mean ± std over seeds (Val), and the
S_MTL of the seed-averaged ("ensemble") predictions. Fusion runs have no seeds (no ±):
their number is the reported estimate (``select_on="cv"``: the out-of-fold score, see
:mod:`exvo.fusion.api`) and runs chosen and scored on Val are flagged as optimistic (†).

Writes ``report.md``, ``report.csv`` and the PNG figures to ``out_dir``:

* ``per_emotion_ccc.png``   per-emotion CCC of the top 5 runs (grouped bars)
* ``country_confusion.png`` country confusion matrix of the best run (Val)
* ``age_scatter.png``       true vs predicted age of the best run (Val)
* ``ssl_layers.png``        S_MTL per layer for runs that differ only in one SSL @layer

A figure with nothing to plot is skipped with a note.
"""
from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from exvo.corpus import Corpus
from exvo.fusion.cnn_report import cnn_section
from exvo.fusion.runs import Run, discover, feature_specs, n_seeds, read_json
from exvo.predictions import PredictionError, score as score_pred

TOP_EMOTION_RUNS = 5
MAX_CELL = 44
LAYER_SPEC = re.compile(r"^(?P<name>[^@]+)@(?P<layer>\d+)$")
METRICS = ("ccc", "uar", "mae", "s_mtl")


@dataclass
class Row:
    run: Run
    system: str
    kind: str
    features: str
    dims: str
    learner: str
    seeds: str
    mean: dict[str, float | None]
    std: dict[str, float | None]
    ensemble_s_mtl: float | None
    optimistic: bool = False
    ccc_per_emotion: dict[str, float] = field(default_factory=dict)
    note: str | None = None


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def _learner(cfg: dict) -> str:
    if cfg.get("kind") == "fusion":
        mode = str(cfg.get("mode", "?"))
        top = cfg.get("top", 1) or 1
        s = mode + (f"-top{top}" if mode == "hybrid" and top > 1 else "")
        if cfg.get("weighted"):
            s += " (weighted)"
        return s + (" cv" if cfg.get("select_on") == "cv" else "")
    learner = cfg.get("learner") or "?"
    arch = cfg.get("arch")
    return f"{learner}/{arch}" if arch else str(learner)


def _fusion_features(run: Run) -> str:
    rec = read_json(run.path / "fusion.json") or {}
    subs = rec.get("subtasks") or {}
    if rec.get("mode") == "mean":
        return f"mean of {len(run.config.get('sources') or [])} runs"
    if not subs:
        return "fusion of " + ", ".join(run.config.get("sources", []) or ["?"])
    short = {"emotion": "emo", "country": "cou", "age": "age"}
    chosen = {s: "+".join((subs.get(s) or {}).get("chosen") or ["?"]) for s in short}
    if len(set(chosen.values())) == 1:
        return f"all:{chosen['emotion']}"
    return " ".join(f"{short[s]}:{c}" for s, c in chosen.items())


def _row(run: Run, corpus: Corpus | None) -> Row:
    cfg, met = run.config, run.metrics
    kind = run.kind
    summ = met.get("summary") if isinstance(met.get("summary"), dict) else {}
    mean = {m: _num((summ.get(m) or {}).get("mean")) if isinstance(summ.get(m), dict) else None for m in METRICS}
    std = {m: _num((summ.get(m) or {}).get("std")) if isinstance(summ.get(m), dict) else None for m in METRICS}
    ens = met.get("ensemble") if isinstance(met.get("ensemble"), dict) else {}
    per = met.get("ccc_per_emotion") or ens.get("ccc_per_emotion") or {}
    per = per if isinstance(per, dict) else {}
    note = None
    if all(v is None for v in mean.values()) and corpus is not None and run.has("Val"):
        # no metrics.json: score val.csv so the run still gets a row (no seeds → no std)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sc = score_pred(run.load("Val"), corpus, "Val")
            mean = {m: sc[m] for m in METRICS}
            ens = {"s_mtl": sc["s_mtl"]}
            per = sc["ccc_per_emotion"]
            note = "no metrics.json: scored from val.csv"
        except (PredictionError, ValueError) as e:
            note = f"unscored: {e}"
    if kind == "fusion":
        features, dims, seeds = _fusion_features(run), "-", "-"
    else:
        features = "+".join(feature_specs(cfg, resolved=True)) or "?"
        dim = cfg.get("feature_dim", cfg.get("dim"))
        dims = str(dim) if dim is not None else "?"
        n_seed = n_seeds(cfg, met)
        seeds = str(n_seed) if n_seed else "?"
    sel = met.get("selection") if isinstance(met.get("selection"), dict) else {}
    if kind == "fusion":
        std = dict.fromkeys(METRICS)      # one set of predictions, no seeds: a ± would be a fake 0
    return Row(run, run.name, kind, features, dims, _learner(cfg), seeds, mean, std, _num(ens.get("s_mtl")),
               bool(sel.get("optimistic")), {k: float(v) for k, v in per.items() if _num(v) is not None}, note)


def _fmt(m: float | None, s: float | None, digits: int) -> str:
    if m is None:
        return "?"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None else "")


def _cells(rank: int, r: Row) -> list[str]:
    return [str(rank), r.system + (" †" if r.optimistic else ""), r.features, r.dims, r.learner, r.seeds,
            _fmt(r.mean["ccc"], r.std["ccc"], 3), _fmt(r.mean["uar"], r.std["uar"], 3),
            _fmt(r.mean["mae"], r.std["mae"], 2), _fmt(r.mean["s_mtl"], r.std["s_mtl"], 3),
            "?" if r.ensemble_s_mtl is None else f"{r.ensemble_s_mtl:.3f}"]


HEADER = ["#", "system", "features", "dims", "learner", "seeds", "Emo-CCC", "Cou-UAR", "Age-MAE", "S_MTL",
          "ens. S_MTL"]


def _text_table(rows: list[list[str]]) -> str:
    def cut(c: str) -> str:
        return c if len(c) <= MAX_CELL else c[: MAX_CELL - 1] + "…"

    rows = [[cut(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in [HEADER, *rows]) for j in range(len(HEADER))]
    right = {0, 3, 5, 6, 7, 8, 9, 10}

    def line(r):
        return "  ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(HEADER), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _md_table(rows: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---:" if j in {0, 3, 5, 6, 7, 8, 9, 10} else "---"
                                                             for j in range(len(HEADER))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _layer_groups(rows: list[Row]) -> dict[str, list[tuple[int, float, float]]]:
    """``{label: [(layer, S_MTL mean, std)]}`` for learn runs differing only in one ``name@layer`` spec."""
    groups: dict[tuple, dict[int, Row]] = {}
    for r in rows:
        feats = feature_specs(r.run.config)
        if r.kind == "fusion" or not feats or r.mean["s_mtl"] is None:
            continue
        layered = [(k, LAYER_SPEC.match(str(f))) for k, f in enumerate(feats)]
        layered = [(k, m) for k, m in layered if m]
        if len(layered) != 1:
            continue
        k, m = layered[0]
        key_feats = [str(f) if j != k else f"{m['name']}@*" for j, f in enumerate(feats)]
        key = ("+".join(key_feats), _learner(r.run.config))
        # rows arrive sorted by S_MTL, so a duplicate layer keeps the better run
        groups.setdefault(key, {}).setdefault(int(m["layer"]), r)
    return {f"{feats} ({learner})": [(layer, r.mean["s_mtl"], r.std["s_mtl"] or 0.0) for layer, r in by.items()]
            for (feats, learner), by in groups.items() if len(by) >= 2}


def _figures(rows: list[Row], out_dir: Path, corpus: Corpus | None) -> tuple[list[tuple[str, Path]], list[str]]:
    from exvo.fusion import plots

    made: list[tuple[str, Path]] = []
    notes: list[str] = []
    top = [(r.system, r.ccc_per_emotion) for r in rows if r.ccc_per_emotion][:TOP_EMOTION_RUNS]
    if top:
        made.append(("Per-emotion CCC of the top runs", plots.per_emotion_ccc(top, out_dir / "per_emotion_ccc.png")))
    else:
        notes.append("per_emotion_ccc.png skipped: no run has per-emotion CCC in metrics.json")

    best = next((r for r in rows if r.run.has("Val")), None)
    if corpus is None:
        notes.append("country_confusion.png and age_scatter.png skipped: no corpus given (labels needed)")
    elif best is None:
        notes.append("country_confusion.png and age_scatter.png skipped: no run has val.csv")
    else:
        try:
            emo, cou, age = corpus.labels("Val")
            pred = best.run.load("Val").take(corpus.split_ids("Val"))
        except (PredictionError, ValueError) as e:
            notes.append(f"country_confusion.png and age_scatter.png skipped: best run {best.system}: {e}")
        else:
            from exvo.metrics import mae, uar

            made.append((f"Country confusion of the best run ({best.system})", plots.country_confusion(
                cou, pred.country, out_dir / "country_confusion.png",
                f"Country, {best.system} (Val, UAR {uar(cou, pred.country):.3f})")))
            made.append((f"Age, true vs predicted, best run ({best.system})", plots.age_scatter(
                age, pred.age, out_dir / "age_scatter.png",
                f"Age, {best.system} (Val, MAE {mae(age, pred.age):.2f} years)")))

    groups = _layer_groups(rows)
    if groups:
        made.append(("S_MTL per SSL layer", plots.layer_curves(groups, out_dir / "ssl_layers.png")))
    else:
        notes.append("ssl_layers.png skipped: no runs of the same feature set at two or more @layers")
    return made, notes


def make_report(runs_dir: str | Path, out_dir: str | Path, corpus: Corpus | None = None) -> str:
    """Write ``report.md``, ``report.csv`` and figures to ``out_dir``; return the table as text.

    ``corpus`` supplies the Val labels for the confusion matrix and the age scatter (and
    scores runs without ``metrics.json``); without it those figures are skipped.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs = [r for r in discover(runs_dir) if r.path.resolve() != out_dir.resolve()]
    if not runs:
        raise FileNotFoundError(f"no run folders under {runs_dir}; train some with `exvo learn --runs {runs_dir}`")
    rows = [_row(r, corpus) for r in runs]
    rows.sort(key=lambda r: (r.mean["s_mtl"] is None, -(r.mean["s_mtl"] or 0.0), r.system))
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = [_cells(k + 1, r) for k, r in enumerate(rows)]
    made, fig_notes = _figures(rows, out_dir, corpus)

    notes = []
    if any(r.optimistic for r in rows):
        notes.append("† fusion chosen on Val and scored on Val: optimistic (fuse with select_on='cv' for a held-out estimate)")
    if any(r.kind == "fusion" and r.run.config.get("select_on") == "cv" for r in rows):
        notes.append("cv fusion runs: each half of the Val speakers predicted by the runs chosen on the other half "
                     "(out-of-fold), scored on all of Val")
    notes.append("mean ± std over seeds on Val (challenge CCC); ens. S_MTL = S_MTL of the seed-averaged predictions")
    notes += [f"{r.system}: {r.note}" for r in rows if r.note]

    with open(out_dir / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "system", "kind", "features", "dims", "learner", "seeds",
                    *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "ensemble_s_mtl", "optimistic", "path"])
        for k, r in enumerate(rows):
            w.writerow([k + 1, r.system, r.kind, r.features, r.dims, r.learner, r.seeds,
                        *("" if d[m] is None else repr(d[m]) for m in METRICS for d in (r.mean, r.std)),
                        "" if r.ensemble_s_mtl is None else repr(r.ensemble_s_mtl), r.optimistic, str(r.run.path)])
    md = [f"# exvo report: {runs_dir}", "", _md_table(cells), ""] + [f"- {n}" for n in notes] + ["", "## Figures", ""]
    md += [f"### {title}\n\n![{title}]({p.name})\n" for title, p in made]
    md += [f"- {n}" for n in fig_notes]
    cnn_md, cnn_text = cnn_section(runs, out_dir)    # task CNNs: Table 1 and Fig. 2 (cnn_report.py)
    md += cnn_md
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    text = [_text_table(cells), ""] + [f"  {n}" for n in notes]
    text += [f"  figure: {p}" for _, p in made] + [f"  {n}" for n in fig_notes]
    text += cnn_text
    text.append(f"  written: {out_dir / 'report.md'}, {out_dir / 'report.csv'}")
    return "\n".join(text)
