"""One report row per run folder: what each number is, and the flags that keep it honest.

Every row carries two kinds of score, never mixed in one column:

* **mean ± std over seeds** (Val): learn runs score each seed; fusion runs are fused seed
  by seed (:mod:`exvo.fusion.seeds`), so they have per-seed scores too. S_MTL is averaged
  over the seeds where it is defined (CCC > 0 and UAR > 0); the others are counted, not
  averaged in as 0. One seed has no std: it is shown as undefined, not ± 0.
* **seed ensemble**: the score of the seed-averaged predictions (``val.csv``); for
  ``--select-on cv`` fusions, the out-of-fold score of the ensemble.

Beside them, for learn runs made with ``--stop-on folds``, the **out-of-fold (OOF) estimate**
from Train alone (``metrics.json["oof"]``: each Train clip predicted by the fold model that did
not train on its speaker; Val never used): S_MTL mean ± std over seeds and the 95 % speaker
bootstrap interval of the seed ensemble. :func:`constant_predictor` gives the trivial row
(Train mean emotions and age, majority country; ``config.json["constant_predictor_val"]``).

Flags: ``optimistic`` (:func:`optimism`: a learn run's epochs chosen on Val, a fusion chosen or
weighted on Val, or a fusion of any such run, scored on Val, †), ``stale`` (‡: any run
whose labels, input caches or own files changed since it was made, or a fusion whose sources
did, vanished, or that missed runs added since; :mod:`exvo.runs.provenance`) and
``probe`` notes for ``@best`` layers (the ridge probe's margin; ≈ when other layers lie
within one seed-std of the chosen one, a tie within noise).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

from exvo.corpus import Corpus
from exvo.fusion import seeds
from exvo.runs.reader import Run, feature_specs, n_seeds, read_json
from exvo.predictions import PredictionError, score as score_pred

METRICS = seeds.METRICS
MULTITASK_KINDS = ("learn", "fusion", "?")
"""Run kinds that are rows of the multitask table (``?``: a folder with val.csv but no config.json);
few-shot and verify runs have their own sections."""
LAYER_SPEC = re.compile(r"^(?P<name>[^@]+)@(?P<layer>\d+)$")


@dataclass
class Row:
    run: Run
    system: str
    kind: str
    features: str
    dims: str
    learner: str
    seeds: str
    mean: dict[str, float | None]                  # over seeds (S_MTL: over the seeds where it is defined)
    std: dict[str, float | None]                   # None: undefined (one seed) or unknown
    ensemble: dict[str, float | None]              # the seed ensemble's scores
    n_seeds: int | None = None                     # seeds scored
    s_mtl_defined: int | None = None               # seeds with a defined S_MTL
    optimistic: bool = False
    ccc_per_emotion: dict[str, float] = field(default_factory=dict)
    ccc_per_emotion_std: dict[str, float | None] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    probe: list[str] = field(default_factory=list)
    probe_tie: bool = False
    note: str | None = None
    ensemble_undefined: bool = False               # the ensemble's S_MTL is undefined (CCC or UAR <= 0)
    optimistic_why: list[str] = field(default_factory=list)    # why † (empty: clean)
    oof: dict | None = None                        # OOF S_MTL {"mean", "std", "n", "ci95": [lo, hi] | None}

    @property
    def sort_key(self) -> float | None:
        """The sort column: S_MTL mean over seeds."""
        return self.mean["s_mtl"]


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def learner_label(cfg: dict) -> str:
    if cfg.get("kind") == "fusion":
        mode = str(cfg.get("mode", "?"))
        top = cfg.get("top", 1) or 1
        s = mode + (f"-top{top}" if mode == "hybrid" and top > 1 else "")
        if cfg.get("weighted"):
            s += " (weighted)"
        return s + (f" {cfg['select_on']}" if cfg.get("select_on") in ("cv", "oof") else "")
    learner = cfg.get("learner") or "?"
    arch = cfg.get("arch")
    return f"{learner}/{arch}" if arch else str(learner)


def _fusion_features(run: Run) -> str:
    """The runs each subtask took; for cv fusions the per-half choices that produced the score."""
    rec = read_json(run.path / "fusion.json") or {}
    subs = rec.get("subtasks") or {}
    if rec.get("mode") == "mean":
        return f"mean of {len(run.record.get('sources') or [])} runs"
    if rec.get("mode") == "pool":
        return "pool of " + ", ".join(run.record.get("sources") or ["?"])
    if not subs:
        return "fusion of " + ", ".join(run.record.get("sources", []) or ["?"])
    short = {s: k for s, k in (("emotion", "emo"), ("country", "cou"), ("age", "age")) if s in subs}
    dirs = (rec.get("cv") or {}).get("directions") or []
    if rec.get("select_on") == "cv" and len(dirs) == 2:
        # the score is out of fold: half A is predicted by the choice made on B and vice versa
        chosen = {}
        for s in short:
            a, b = ("+".join((d.get("chosen") or {}).get(s) or ["?"]) for d in (dirs[1], dirs[0]))
            chosen[s] = a if a == b else f"{a}|{b}"
    else:
        chosen = {s: "+".join((subs.get(s) or {}).get("chosen") or ["?"]) for s in short}
    if len(set(chosen.values())) == 1:
        return f"all:{next(iter(chosen.values()))}"
    return " ".join(f"{short[s]}:{c}" for s, c in chosen.items())


def _stale(run: Run, learn_runs: list[Run]) -> list[str]:
    """Why a run no longer reflects its inputs (empty: up to date): its provenance
    (:attr:`exvo.runs.reader.Run.stale`), and for a fusion of "all learn runs" the runs made since.
    Runs made before provenance was recorded: a fusion whose sources are gone or newer than it."""
    cfg = run.record
    if run.provenance is not None:
        out = list(run.stale)
    else:
        out = []
        made = _num(cfg.get("created_unix"))
        for name in cfg.get("sources") or [] if run.kind == "fusion" else []:
            p = run.path.parent / name
            if not (p / "val.csv").is_file():
                out.append(f"source {name} is gone ({p})")
            elif made is not None and (p / "val.csv").stat().st_mtime > made:
                out.append(f"source {name} is newer than the fusion")
    if cfg.get("sources_from") == "all learn runs":
        have = set(cfg.get("sources") or [])
        new = sorted(r.name for r in learn_runs if r.name not in have and r.has("Val"))
        if new:
            out.append(f"fused 'all learn runs' but {len(new)} run(s) appeared since: {', '.join(new[:5])}"
                       + (" …" if len(new) > 5 else ""))
    return out


def _probe_notes(cfg: dict, s_mtl_std: float | None) -> tuple[list[str], bool]:
    """Margin of every ``@best`` layer choice; a tie when other layers are within one seed-std."""
    notes, tie = [], False
    for b in cfg.get("features") or []:
        if not isinstance(b, dict) or not isinstance((b.get("probe") or {}).get("layer_scores"), dict):
            continue
        raw = b["probe"]["layer_scores"]
        sc = {int(k): float(v) for k, v in raw.items() if _num(v) is not None}
        if len(sc) < 2:
            continue
        order = sorted(sc, key=lambda k: -sc[k])
        best, second = order[0], order[1]
        margin = sc[best] - sc[second]
        msg = (f"{b.get('spec', '?')}: the ridge probe chose layer {best} ({sc[best]:.3f}) over layer {second} "
               f"({sc[second]:.3f}) by {margin:.3f}")
        if s_mtl_std is not None and s_mtl_std > 0:
            near = [k for k in order if sc[best] - sc[k] <= s_mtl_std]
            if len(near) > 1:
                tie = True
                shown = ", ".join(map(str, near[:6])) + (f" … ({len(near)} of {len(sc)} layers)" if len(near) > 6 else "")
                msg += (f"; layers {shown} lie within one seed-std of S_MTL ({s_mtl_std:.3f}): "
                        "a tie within noise, the layer choice is arbitrary among them")
            else:
                msg += f", more than one seed-std of S_MTL ({s_mtl_std:.3f})"
        else:
            msg += " (no seed-std to compare with: one seed)"
        notes.append(msg)
    return notes, tie


def optimism(run: Run, seen: frozenset = frozenset()) -> list[str]:
    """Why ``run``'s Val figures are optimistic (†): empty when Val chose nothing behind them.

    One flag per run: a learn (or pool) run's ``config.json["val_optimistic"]`` (Val chose its
    epochs; older runs: ``metrics.json``); a fusion's own choice or weights made on Val
    (``metrics.json["selection"]["optimistic"]``), and every source it fused, recursively, so a
    ``fuse --mean`` of Val-stopped runs keeps their †.
    """
    cfg, met = run.record, run.metrics
    sel = met.get("selection") if isinstance(met.get("selection"), dict) else {}
    why = []
    if run.kind == "fusion":
        if sel.get("optimistic") and cfg.get("mode") != "pool":
            why.append(f"{run.name}: chosen/weighted on Val and scored on Val")
        for name in cfg.get("sources") or []:
            src = run.path.parent / str(name)
            if src.resolve() in seen or not src.is_dir():
                continue
            why += optimism(Run.open(src), seen | {run.path.resolve()})
    else:
        flag = cfg.get("val_optimistic", met.get("val_optimistic", sel.get("optimistic")))
        if flag:
            why.append(f"{run.name}: its epochs were chosen on Val (--stop-on val)")
    return list(dict.fromkeys(why))


def oof_summary(met: dict) -> dict | None:
    """The OOF S_MTL of a ``--stop-on folds`` run: ``{"mean", "std", "n", "ci95"}`` (None: no OOF)."""
    oof = met.get("oof")
    if not isinstance(oof, dict):
        return None
    s = ((oof.get("summary") or {}).get("s_mtl") or {}) if isinstance(oof.get("summary"), dict) else {}
    ci = (oof.get("ci95") or {}).get("s_mtl") if isinstance(oof.get("ci95"), dict) else None
    per = oof.get("per_seed") if isinstance(oof.get("per_seed"), list) else []
    ci = [float(ci[0]), float(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None
    why = oof.get("optimistic")
    return {"mean": _num(s.get("mean")), "std": _num(s.get("std")) if len(per) != 1 else None,
            "n": len(per), "ci95": ci, "optimistic": list(why) if isinstance(why, list) else []}


def canon(d):
    """A score record of another task with its combined ``score`` under ``s_mtl``, the report's
    one sort column (marked defined: only S_MTL is ever undefined), recursively; ExVo's unchanged."""
    if isinstance(d, list):
        return [canon(v) for v in d]
    if not isinstance(d, dict):
        return d
    out = {("s_mtl" if k == "score" and "s_mtl" not in d else k): canon(v) for k, v in d.items()}
    if "score" in d and "s_mtl" not in d and not isinstance(d["score"], dict):
        out.setdefault("s_mtl_defined", True)
    return out


def constant_predictor(runs: list[Run]) -> tuple[dict | None, list[str]]:
    """``(Val scores of the trivial predictor, notes)`` from the learn runs' records
    (``config.json["constant_predictor_val"]``: Train mean emotions and age, majority country);
    None when no run recorded it."""
    found: dict[tuple, tuple[dict, list[str]]] = {}
    for r in runs:
        c = canon(r.record.get("constant_predictor_val")) if r.kind == "learn" else None
        if isinstance(c, dict) and _num(c.get("s_mtl")) is not None:
            key = tuple(round(float(c[m]), 9) if _num(c.get(m)) is not None else None for m in METRICS)
            found.setdefault(key, ({m: (float(c[m]) if _num(c.get(m)) is not None else None) for m in METRICS},
                                   []))[1].append(r.name)
    if not found:
        return None, ["no constant-predictor row: no learn run records config.json constant_predictor_val "
                      "(runs made before exvo recorded it; learn again to get it)"]
    ranked = sorted(found.values(), key=lambda v: -len(v[1]))
    notes = []
    if len(ranked) > 1:
        notes.append(f"the learn runs record {len(ranked)} different constant predictors (different corpora or "
                     f"labels?); shown: the one of {len(ranked[0][1])} run(s), not that of "
                     + ", ".join(n for _, names in ranked[1:] for n in names[:3]))
    return ranked[0][0], notes


def _from_per_seed(per: list[dict]) -> tuple[dict, dict, int, int, dict, dict]:
    summ = seeds.summarise(per)
    pe_mean, pe_std = seeds.per_emotion(per)
    none = {"mean": None, "std": None}         # a metric the task does not have
    return ({m: summ.get(m, none)["mean"] for m in METRICS}, {m: summ.get(m, none)["std"] for m in METRICS}, len(per),
            summ["s_mtl"]["n"], pe_mean, pe_std)


def make_row(run: Run, corpus: Corpus | None, learn_runs: list[Run]) -> Row:
    cfg, met = run.record, canon(run.metrics)
    kind = run.kind
    summ = met.get("summary") if isinstance(met.get("summary"), dict) else {}
    per = [r for r in (met.get("per_seed") or []) if isinstance(r, dict)] if isinstance(met.get("per_seed"), list) else []
    ens_d = met.get("ensemble") if isinstance(met.get("ensemble"), dict) else {}
    if kind == "fusion" and cfg.get("select_on") == "cv" and "full_val_ensemble" not in met:
        ens_d = {}    # older cv fusions kept the optimistic full-Val score here: not shown as the estimate
    ensemble = {m: _num(ens_d.get(m)) for m in METRICS}
    if ensemble["ccc"] is not None and ensemble["uar"] is not None and not seeds.s_mtl_defined(ensemble):
        ensemble["s_mtl"] = None       # undefined (CCC or UAR <= 0), not the 0.0 written to metrics.json
        ens_undefined = True
    else:
        ens_undefined = False
    note = None
    pe_mean, pe_std = {}, {}
    count = n_seeds(cfg, met) if kind != "fusion" else (len(per) or None)
    n_def = None
    if per:
        mean, std, count, n_def, pe_mean, pe_std = _from_per_seed(per)
    elif kind != "fusion" and summ:
        # older learn runs: only the summary (mean, std) is known
        mean = {m: _num((summ.get(m) or {}).get("mean")) if isinstance(summ.get(m), dict) else None for m in METRICS}
        std = {m: _num((summ.get(m) or {}).get("std")) if isinstance(summ.get(m), dict) else None for m in METRICS}
        if count == 1:
            std = dict.fromkeys(METRICS)
        pe = met.get("ccc_per_emotion") or ens_d.get("ccc_per_emotion") or {}
        pe_mean = {k: float(v) for k, v in pe.items() if _num(v) is not None} if isinstance(pe, dict) else {}
    else:
        mean, std = dict.fromkeys(METRICS), dict.fromkeys(METRICS)
        if kind == "fusion":
            if all(v is None for v in ensemble.values()):     # fusions without per-seed sources
                ensemble = {m: _num((summ.get(m) or {}).get("mean")) if isinstance(summ.get(m), dict) else None
                            for m in METRICS}
            note = "fused from runs without per-seed predictions: seed-ensemble score only, no mean ± std"
    if all(v is None for v in mean.values()) and all(v is None for v in ensemble.values()) \
            and corpus is not None and run.has("Val"):
        # no metrics.json: score val.csv so the run still gets a row (the seed ensemble's score)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sc = score_pred(run.load("Val"), corpus, "Val")
            sc = canon(sc)
            ensemble = {m: sc.get(m) for m in METRICS}
            note = "no metrics.json: val.csv scored (seed-ensemble score only)"
        except (PredictionError, ValueError) as e:
            note = f"unscored: {e}"
    if kind == "fusion":
        features, dims = _fusion_features(run), "-"
    else:
        features = "+".join(feature_specs(cfg, resolved=True)) or "?"
        dim = cfg.get("feature_dim", cfg.get("dim"))
        dims = str(dim) if dim is not None else "?"
    seeds_cell = str(count) if count else ("-" if kind == "fusion" else "?")
    stale = _stale(run, learn_runs)
    probe, tie = _probe_notes(cfg, std["s_mtl"]) if kind != "fusion" else ([], False)
    why = optimism(run)
    return Row(run, run.name, kind, features, dims, learner_label(cfg), seeds_cell, mean, std, ensemble, count,
               n_def, bool(why), pe_mean, pe_std, stale, probe, tie, note, ens_undefined, why, oof_summary(met))


def make_rows(runs: list[Run], corpus: Corpus | None) -> list[Row]:
    """Rows sorted by the sort column (S_MTL mean over seeds, best first); rows without it last,
    by their seed-ensemble S_MTL."""
    learn_runs = [r for r in runs if r.kind == "learn"]
    rows = [make_row(r, corpus, learn_runs) for r in runs]
    rows.sort(key=lambda r: (r.sort_key is None, -(r.sort_key or 0.0),
                             r.ensemble["s_mtl"] is None, -(r.ensemble["s_mtl"] or 0.0), r.system))
    return rows


def layer_groups(rows: list[Row]) -> dict[str, list[dict]]:
    """``{label: [{"layer", "mean", "std", "how", "system"}]}``: learn runs that differ only in the
    layer of one SSL feature set, at every layer they reached (given, ``@best`` or the default last).

    Two runs at the same layer (``wavlm@best`` that chose 6 and ``wavlm@6``) are one point:
    the run that named the layer is kept, and the other's choice is named in ``how``.
    """
    groups: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r.kind == "fusion" or r.mean["s_mtl"] is None:
            continue
        raw = r.run.record.get("features")
        if not isinstance(raw, list) or not raw:
            continue
        layered = []
        for k, f in enumerate(raw):
            if isinstance(f, dict):
                if (f.get("cache_config") or {}).get("family") == "waveform_cnn":
                    continue      # a task CNN's layers are CNN seeds, not depths (see `exvo fuse --pool`)
                if isinstance(f.get("n_layers"), int) and f["n_layers"] > 1 and f.get("layer") is not None:
                    spec = str(f.get("spec") or "")
                    how = ("best" if spec.endswith("@best") else "last" if "@" not in spec
                           else str(f.get("layer_choice") or "given").split(" ")[0])
                    layered.append((k, str(f.get("name")), int(f["layer"]), how))
            else:
                m = LAYER_SPEC.match(str(f))
                if m:
                    layered.append((k, m["name"], int(m["layer"]), "given"))
        if len(layered) != 1:
            continue
        k, name, layer, how = layered[0]
        specs = feature_specs(r.run.record)
        key_feats = [s if j != k else f"{name}@*" for j, s in enumerate(specs)]
        key = ("+".join(key_feats), learner_label(r.run.record))
        point = {"layer": layer, "mean": r.mean["s_mtl"], "std": r.std["s_mtl"], "how": how, "system": r.system}
        by = groups.setdefault(key, {})
        old = by.get(layer)
        if old is None or (old["how"] != "given" and how == "given"):
            if old is not None:
                point["also"] = f"{old['how']} ({old['system']})"
            by[layer] = point
        elif how != "given":
            old["also"] = f"{how} ({r.system})"
    return {f"{feats} ({learner})": sorted(by.values(), key=lambda p: p["layer"])
            for (feats, learner), by in groups.items() if len(by) >= 2}
