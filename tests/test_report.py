"""The report: table sorted by S_MTL with the numbers from metrics.json, CSV/MD files, PNGs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exvo.cli import app
from exvo.commands.common import command_table
from exvo.corpus import Corpus
from exvo.fusion.report import make_report
from exvo.metrics import EMOTIONS
from exvo.predictions import Predictions, save_split


def write_learn_run(runs: Path, name: str, corpus: Corpus, s_mtl: tuple[float, float], features: list[str],
                    *, ccc=(0.4, 0.02), uar=(0.5, 0.03), mae=(4.0, 0.1), ens=0.41, dim=88, seed=0,
                    learner="mlp", arch="sys2", blocks: list[dict] | None = None, oof: bool = False) -> Path:
    """A learn-run folder with hand-set summary numbers and noisy Val predictions (``oof``: and noisy
    out-of-fold Train predictions, as a ``--stop-on folds`` run has).

    ``blocks``: write ``features`` as the learner's feature blocks (dicts) and ``dim``
    instead of spec strings and ``feature_dim``; the report must read both.
    """
    d = runs / name
    d.mkdir(parents=True)
    cfg = {"kind": "learn", "features": features, "feature_dim": dim, "learner": learner, "arch": arch, "seeds": 3}
    if blocks is not None:
        cfg.pop("feature_dim")
        cfg.update(features=blocks, dim=dim, seeds=[0, 1, 2])
    (d / "config.json").write_text(json.dumps(cfg))
    per = {e: ccc[0] + 0.01 * k for k, e in enumerate(EMOTIONS)}
    summary = {"ccc": dict(zip(("mean", "std"), ccc)), "uar": dict(zip(("mean", "std"), uar)),
               "mae": dict(zip(("mean", "std"), mae)), "s_mtl": dict(zip(("mean", "std"), s_mtl))}
    (d / "metrics.json").write_text(json.dumps({
        "split": "Val", "n": 0, "ccc_convention": "challenge", "summary": summary, "per_seed": [],
        "ensemble": {"ccc": ccc[0], "uar": uar[0], "mae": mae[0], "s_mtl": ens, "ccc_per_emotion": per},
        "ccc_per_emotion": per}))
    rng = np.random.default_rng(seed)
    emo, cou, age = corpus.labels("Val")
    n = len(cou)
    right = rng.random(n) < 0.6
    country = np.where(right, cou, rng.integers(0, 4, n))
    save_split(Predictions(corpus.split_ids("Val"), np.clip(emo + rng.normal(0, 0.1, emo.shape), 0, 1),
                           country, age + rng.normal(0, 4, n)), d, "Val")
    if oof:
        emo, cou, age = corpus.labels("Train")
        n = len(cou)
        country = np.where(rng.random(n) < 0.6, cou, rng.integers(0, 4, n))
        save_split(Predictions(corpus.split_ids("Train"), np.clip(emo + rng.normal(0, 0.1, emo.shape), 0, 1),
                               country, age + rng.normal(0, 4, n)), d, "OOF")
    return d


@pytest.fixture
def report_runs(small_demo_corpus_dir, tmp_path):
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    runs = tmp_path / "runs"
    write_learn_run(runs, "compare_mlp", corpus, (0.349, 0.004), ["compare"], dim=6373, seed=1)
    write_learn_run(runs, "wavlm12", corpus, (0.391, 0.006), ["wavlm@12"], dim=2048, seed=2, ens=0.402)
    write_learn_run(runs, "wavlm0", corpus, (0.300, 0.010), ["wavlm@0"], dim=2048, seed=3)
    write_learn_run(runs, "wavlm6", corpus, (0.360, 0.008), [], dim=2048, seed=4,
                    blocks=[{"spec": "wavlm@6", "name": "wavlm", "layer": 6, "n_layers": 25, "dim": 2048}])
    write_learn_run(runs, "wavlm_best", corpus, (0.250, 0.008), [], dim=2048, seed=6,
                    blocks=[{"spec": "wavlm@best", "name": "wavlm", "layer": 9, "n_layers": 25, "dim": 2048}])
    write_learn_run(runs, "xgb_raw", corpus, (0.338, 0.0), ["raw_exvo_er"], dim=20, learner="xgb", arch=None, seed=5)
    return corpus, runs


def test_table_sorted_by_s_mtl_with_the_right_numbers(report_runs, tmp_path):
    corpus, runs = report_runs
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    order = ["wavlm12", "wavlm6", "compare_mlp", "xgb_raw", "wavlm0", "wavlm_best"]
    lines = [ln for ln in text.splitlines() if ln.split()[1:2] and ln.split()[1] in order]
    assert [ln.split()[1] for ln in lines] == order
    assert "0.391 ± 0.006" in lines[0] and "0.402" in lines[0] and "2048" in lines[0]
    assert "mlp/sys2" in lines[0] and "wavlm@12" in lines[0]
    assert "xgb " in lines[3] and "0.338 ± 0.000" in lines[3]
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["system"] for r in rows] == order
    assert [float(r["s_mtl_mean"]) for r in rows] == [0.391, 0.36, 0.349, 0.338, 0.3, 0.25]
    assert rows[1]["features"] == "wavlm@6" and rows[1]["dims"] == "2048"      # learner's block format
    assert rows[1]["seeds"] == "3" and rows[0]["seeds"] == "3"
    assert rows[5]["features"] == "wavlm@best(=9)"
    assert float(rows[0]["ccc_mean"]) == 0.4 and float(rows[0]["mae_std"]) == 0.1
    assert rows[2]["dims"] == "6373" and rows[0]["rank"] == "1"
    md = (out / "report.md").read_text()
    assert "| 1 | wavlm12 | wavlm@12 | 2048 | mlp/sys2 | 3 | 0.400 ± 0.020 | 0.500 ± 0.030 | 4.00 ± 0.10 | 0.391 ± 0.006 | 0.402 |" in md
    for f in ("per_emotion_ccc.png", "country_confusion.png", "age_scatter.png", "ssl_layers.png"):
        assert f"]({f})" in md


def test_figures_are_valid_pngs(report_runs, tmp_path):
    import matplotlib.image as mpimg

    corpus, runs = report_runs
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    for f in ("per_emotion_ccc.png", "country_confusion.png", "age_scatter.png", "ssl_layers.png"):
        img = mpimg.imread(out / f)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img.shape[2] in (3, 4), f
        assert img[..., :3].std() > 0.01, f"{f} is blank"
        assert f"figure: {out / f}" in text


def test_missing_figures_are_skipped_with_a_note(tmp_path, small_demo_corpus_dir):
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    runs = tmp_path / "runs"
    write_learn_run(runs, "only", corpus, (0.3, 0.01), ["egemaps"])
    (runs / "broken").mkdir()
    (runs / "broken" / "config.json").write_text("{}")    # tolerant: a row of "?"
    text = make_report(runs, tmp_path / "rep", corpus=None)
    assert "ssl_layers.png skipped: no runs of the same feature set at two or more layers" in text
    assert "skipped: no corpus given" in text
    assert not (tmp_path / "rep" / "ssl_layers.png").exists()
    assert (tmp_path / "rep" / "per_emotion_ccc.png").exists()
    lines = text.splitlines()
    assert lines[2].split()[1] == "only" and lines[3].split()[1] == "broken" and "?" in lines[3]


def test_fusion_rows_are_flagged_and_scored_from_their_metrics(report_runs, tmp_path):
    from exvo.fusion.api import fuse

    corpus, runs = report_runs
    fuse(corpus, select_on="val", runs_dir=runs, mode="hybrid", echo=lambda *_: None)
    fuse(corpus, runs_dir=runs, mode="hybrid", select_on="cv", echo=lambda *_: None)
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    assert "hybrid †" in text and "† fusion chosen on Val and scored on Val: optimistic" in text
    with open(out / "report.csv", newline="") as f:
        rows = {r["system"]: r for r in csv.DictReader(f)}
    fused = json.loads((runs / "hybrid" / "metrics.json").read_text())
    # these learn runs have no per-seed files: the fusion has a seed-ensemble score only, and
    # the report leaves its mean ± std empty instead of passing the ensemble off as a mean
    assert rows["hybrid"]["s_mtl_mean"] == "" and rows["hybrid"]["s_mtl_std"] == ""
    assert float(rows["hybrid"]["ensemble_s_mtl"]) == fused["ensemble"]["s_mtl"]
    assert "seed-ensemble score only" in text
    assert rows["hybrid"]["optimistic"] == "True" and rows["hybrid_cv"]["optimistic"] == "False"
    assert rows["hybrid"]["learner"] == "hybrid" and rows["hybrid_cv"]["learner"] == "hybrid cv"
    assert rows["hybrid"]["features"].startswith("emo:")


def test_empty_runs_folder_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to report under .*no multitask runs"):
        make_report(tmp_path / "runs", tmp_path / "rep")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        make_report(tmp_path / "missing", tmp_path / "rep")


def test_fewshot_runs_alone_make_a_report(tmp_path):
    """A user who ran only `exvo fewshot` gets its table, not 'no run folders'."""
    run = tmp_path / "runs" / "fewshot" / "fs_egemaps"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": "fewshot", "variant": "none",
                                                 "features": [{"spec": "egemaps"}]}))
    (run / "metrics.json").write_text(json.dumps({
        "summary": {"ccc": {"mean": 0.5, "std": 0.01}}, "per_seed": [{}, {}],
        "ensemble": {"ccc": 0.512, "ci95": [0.48, 0.54]}}))
    text = make_report(tmp_path / "runs", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "no multitask runs under" in text
    assert "| 1 | fs_egemaps | egemaps | none | 2 | 0.500 ± 0.010 | 0.512 [0.480–0.540] | - |" in md


# ----------------------------------------------------------------------- the demo pipeline
def test_demo_pipeline_skips_what_is_missing_and_reuses_runs(small_demo_copy, tmp_path, monkeypatch):
    """Extraction and learning faked: the demo's own logic (skips, reuse, fuse, report) is real."""
    import sys
    import types

    import exvo.extract.base as base
    import exvo.extract.run as run
    from exvo.pipeline import run_demo

    calls = {"extract": [], "learn": []}

    class Summary:
        failures: list = []

        def __init__(self, name):
            self.name = name

        def line(self):
            return f"{self.name}: all cached"

    def fake_extract(corpus, name, cache_dir, opts, progress=True):
        calls["extract"].append(name)
        if name == "compare":
            raise RuntimeError("openSMILE exploded\nsecond line")
        return Summary(name)

    class Result:
        def summary_line(self):
            return "learned"

    def fake_learn(corpus, cfg, cache_dir, runs_dir, name=None, echo=print, overwrite=False):
        calls["learn"].append((tuple(cfg.features), cfg.seeds.n))
        shutil.rmtree(runs_dir / name, ignore_errors=True)      # a real learn run replaces its folder
        write_learn_run(runs_dir, name, corpus, (0.3 + 0.01 * len(calls["learn"]), 0.01), cfg.features,
                        seed=len(calls["learn"]), oof=True)     # the demo's runs use speaker folds
        cfg_path = runs_dir / name / "config.json"
        c = json.loads(cfg_path.read_text())
        c["seeds"] = cfg.seeds.list                              # the learner records the seed list
        cfg_path.write_text(json.dumps(c))
        return Result()

    import exvo.pipeline as pipeline

    monkeypatch.setattr(base, "names", lambda: ["compare", "egemaps", "zff_exvo_er"])
    monkeypatch.setattr(run, "extract", fake_extract)
    # the recipes and the FID table have their own tests (test_recipes, test_generate): here only their call
    monkeypatch.setattr(pipeline, "_papers", lambda corpus, d, c, r, seeds, echo, commands: calls.setdefault("papers", []).append(seeds))
    monkeypatch.setattr(pipeline, "_fid_table", lambda corpus, c, r, ready, echo: calls.setdefault("fid", []).append(ready))
    monkeypatch.setitem(sys.modules, "exvo.learn.api",
                        types.SimpleNamespace(learn=fake_learn))
    runs = tmp_path / "runs"
    lines: list[str] = []
    table = run_demo(small_demo_copy, tmp_path / "cache", runs, seeds=2, echo=lines.append, commands=command_table(app))
    text = "\n".join(lines)
    assert calls["extract"] == ["egemaps", "compare", "zff_exvo_er"]
    assert "skip raw_exvo_er: not a registered extractor" in text
    assert "skip wavlm: not a registered extractor" in text
    assert "skip compare: failed: RuntimeError: openSMILE exploded" in text and "second line" not in text
    assert calls["learn"] == [(("egemaps",), 2), (("zff_exvo_er",), 2)]
    assert "skip egemaps+raw_exvo_er: its cache is missing" in text
    assert (runs / "hybrid_oof" / "fusion.json").is_file() and (runs / "hybrid_cv" / "fusion.json").is_file()
    assert "egemaps_mlp_sys2" in table and (runs / "zff_exvo_er_mlp_sys2").is_dir() and (runs / "report" / "report.md").is_file()
    assert calls["papers"] == [2] and calls["fid"] == [["egemaps", "zff_exvo_er"]]
    assert "5/7 papers" in text and "6/7 generate" in text
    # every stage ends with its time and the load; the timings are kept for the README's script
    import re as _re

    for stage in ("corpus", "extract", "learn", "fuse", "papers", "generate", "report"):
        assert _re.search(rf"^  \[{stage}: \d+ s, load (\d+\.\d|nan)\]$", text, _re.M), stage
    assert _re.search(r"^demo finished in \d+ s \(\d+\.\d min: corpus \d+ s, extract \d+ s, .*report \d+ s; "
                      r"1-min load average [\d.]+–[\d.]+, mean [\d.]+, on \d+ cores\)$", text, _re.M), lines[-1]
    rec = json.loads((runs / "report" / "demo_timings.json").read_text())
    assert set(rec["seconds"]) == {"corpus", "extract", "learn", "fuse", "papers", "generate", "report"}
    assert rec["seeds"] == 2 and rec["cores"] >= 1 and set(rec["load_1min_over_run"]) >= {"min", "mean", "max"}
    assert "EXVO_PROGRESS" not in __import__("os").environ       # the demo's line interval does not leak
    # the fusions say what chose each subtask, on which quantity
    assert "emotion: chosen on each candidate's Val CCC of its seed" in text

    lines.clear()
    run_demo(small_demo_copy, tmp_path / "cache", runs, seeds=2, echo=lines.append, commands=command_table(app))
    assert len(calls["learn"]) == 2                         # second run: nothing retrained
    assert f"reuse {runs / 'egemaps_mlp_sys2'} (delete it to retrain)" in "\n".join(lines)
    run_demo(small_demo_copy, tmp_path / "cache", runs, seeds=3, echo=lines.append, commands=command_table(app))
    assert len(calls["learn"]) == 4                         # other seeds: retrained


# ----------------------------------------------------------------------- like-for-like rows
def write_seeded_run(runs: Path, name: str, corpus: Corpus, n_seeds: int, noise: float, *, seed: int = 0,
                     flat_seeds: tuple[int, ...] = (), blocks: list[dict] | None = None) -> Path:
    """A learn run as `exvo learn` writes it: per-seed predictions, per-seed scores, the seed ensemble.

    ``flat_seeds``: those seeds predict constant emotions (CCC 0, so S_MTL undefined).
    """
    from exvo.learn import runs as lr
    from exvo.predictions import SeedPredictions, save_seed_predictions

    rng = np.random.default_rng(seed)
    emo, cou, age = corpus.labels("Val")
    ids = corpus.split_ids("Val")
    n = len(ids)
    E = np.stack([np.full_like(emo, 0.5) if k in flat_seeds else np.clip(emo + rng.normal(0, noise, emo.shape), 0, 1)
                  for k in range(n_seeds)])
    P = np.stack([np.eye(4)[np.where(rng.random(n) < 0.7, cou, rng.integers(0, 4, n))] * 0.7 + 0.075
                  for _ in range(n_seeds)])
    A = np.stack([age + rng.normal(0, 5 * noise * 10, n) for _ in range(n_seeds)])
    sp = SeedPredictions(ids, list(range(n_seeds)), E, P, A)
    per = [lr.score_quiet(sp.seed(k), corpus, "Val")[0] for k in range(n_seeds)]
    ens = lr.score_quiet(sp.ensemble(), corpus, "Val")[0]
    d = runs / name
    d.mkdir(parents=True)
    save_split(sp.ensemble(), d, "Val")
    save_seed_predictions(sp, d, "Val")
    cfg = {"kind": "learn", "features": blocks or [name], "dim": 10, "learner": "mlp", "arch": "sys2",
           "seeds": list(range(n_seeds))}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "metrics.json").write_text(json.dumps(lr.metrics_json(per, list(range(n_seeds)), [None] * n_seeds, ens,
                                                               "Val", n)))
    return d


def csv_rows(out: Path) -> dict[str, dict]:
    with open(out / "report.csv", newline="") as f:
        return {r["system"]: r for r in csv.DictReader(f)}


@pytest.fixture
def seeded_runs(small_demo_corpus_dir, tmp_path):
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    runs = tmp_path / "runs"
    write_seeded_run(runs, "good", corpus, 3, 0.05, seed=1)
    write_seeded_run(runs, "worse", corpus, 3, 0.3, seed=2)
    return corpus, runs


def test_every_row_shows_mean_std_over_seeds_and_the_ensemble_apart(seeded_runs, tmp_path):
    """A hybrid that copies one run has exactly that run's numbers: it cannot outrank it."""
    from exvo.fusion.api import fuse

    corpus, runs = seeded_runs
    res = fuse(corpus, select_on="val", runs_dir=runs, mode="hybrid", run_names=["good"], name="copy", echo=lambda *_: None)
    assert res.chosen == {"emotion": ["good"], "country": ["good"], "age": ["good"]}
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    rows = csv_rows(out)
    good = json.loads((runs / "good" / "metrics.json").read_text())
    for m in ("ccc", "uar", "mae", "s_mtl"):
        assert float(rows["copy"][f"{m}_mean"]) == pytest.approx(good["summary"][m]["mean"], abs=1e-6)
        assert float(rows["copy"][f"{m}_std"]) == pytest.approx(good["summary"][m]["std"], abs=1e-6)
        assert float(rows["copy"][f"ensemble_{m}"]) == pytest.approx(good["ensemble"][m], abs=1e-6)
        assert float(rows["good"][f"{m}_mean"]) == pytest.approx(good["summary"][m]["mean"])
    assert float(rows["good"]["ensemble_s_mtl"]) == pytest.approx(good["ensemble"]["s_mtl"])
    assert rows["copy"]["seeds"] == "3"
    head = text.splitlines()[0]
    assert "S_MTL ▼" in head and "ens. S_MTL" in head
    assert "sorted by S_MTL ▼ = the S_MTL mean over seeds (Val)" in text
    # the sort column is the seed mean, even where the ensemble is higher
    means = [float(r["s_mtl_mean"]) for r in sorted(rows.values(), key=lambda r: int(r["rank"]))]
    assert means == sorted(means, reverse=True)


def test_one_seed_std_is_undefined_and_undefined_s_mtl_is_not_averaged_as_zero(small_demo_corpus_dir, tmp_path):
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    runs = tmp_path / "runs"
    write_seeded_run(runs, "one", corpus, 1, 0.05, seed=1)
    write_seeded_run(runs, "flaky", corpus, 3, 0.05, seed=3, flat_seeds=(1,))
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    rows = csv_rows(out)
    assert rows["one"]["s_mtl_std"] == "" and rows["one"]["ccc_std"] == ""
    line = next(ln for ln in text.splitlines() if ln.split()[1:2] == ["one"])
    assert "± n/a" in line and "± 0.000" not in line
    flaky = json.loads((runs / "flaky" / "metrics.json").read_text())["per_seed"]
    assert flaky[1]["s_mtl"] == 0.0                       # the learner's file says 0 ...
    defined = [flaky[0]["s_mtl"], flaky[2]["s_mtl"]]
    assert float(rows["flaky"]["s_mtl_mean"]) == pytest.approx(np.mean(defined))   # ... the report leaves it out
    assert rows["flaky"]["s_mtl_seeds_defined"] == "2"
    assert "(2/3)" in next(ln for ln in text.splitlines() if ln.split()[1:2] == ["flaky"])
    assert "S_MTL (k/n): defined for k of n seeds only" in text


def test_cv_fusion_row_shows_out_of_fold_ensemble_and_per_half_choices(seeded_runs, tmp_path):
    from exvo.fusion.api import fuse

    corpus, runs = seeded_runs
    fuse(corpus, runs_dir=runs, mode="hybrid", select_on="cv", echo=lambda *_: None)
    met = json.loads((runs / "hybrid_cv" / "metrics.json").read_text())
    rec = json.loads((runs / "hybrid_cv" / "fusion.json").read_text())
    out = tmp_path / "rep"
    make_report(runs, out, corpus=corpus)
    row = csv_rows(out)["hybrid_cv"]
    assert float(row["ensemble_s_mtl"]) == pytest.approx(rec["cv"]["out_of_fold"]["s_mtl"])
    assert float(row["ensemble_s_mtl"]) == pytest.approx(met["ensemble"]["s_mtl"])
    assert float(row["s_mtl_mean"]) == pytest.approx(met["summary"]["s_mtl"]["mean"])
    d_ab, d_ba = rec["cv"]["directions"]
    # half A is predicted by the choice made on B, and vice versa: the features name both
    for s, short in (("emotion", "emo"), ("country", "cou"), ("age", "age")):
        a, b = d_ba["chosen"][s][0], d_ab["chosen"][s][0]
        want = a if a == b else f"{a}|{b}"
        assert f"{short}:{want}" in row["features"] or row["features"] == f"all:{want}"


def test_stale_fusions_are_flagged(seeded_runs, tmp_path):
    from exvo.fusion.api import fuse

    corpus, runs = seeded_runs
    fuse(corpus, runs_dir=runs, mode="mean", echo=lambda *_: None)           # all learn runs
    fuse(corpus, select_on="val", runs_dir=runs, mode="hybrid", run_names=["good"], name="named", echo=lambda *_: None)
    text = make_report(runs, tmp_path / "r0", corpus=corpus)
    assert "‡" not in text and csv_rows(tmp_path / "r0")["mean_2runs"]["stale"] == ""
    write_seeded_run(runs, "newer", corpus, 3, 0.1, seed=9)                   # a run appears after the fusion
    shutil.rmtree(runs / "good")                                             # a source is retrained
    write_seeded_run(runs, "good", corpus, 3, 0.07, seed=5)
    text = make_report(runs, tmp_path / "r1", corpus=corpus)
    rows = csv_rows(tmp_path / "r1")
    assert "source good changed since the fusion" in rows["mean_2runs"]["stale"]
    assert "1 run(s) appeared since: newer" in rows["mean_2runs"]["stale"]
    assert rows["named"]["stale"] == "source good changed since the fusion"  # named: new runs are not its business
    assert "mean_2runs ‡" in text and "‡ named is stale: source good changed since the fusion; fuse again" in text


def test_best_layer_probe_margin_and_ties_within_noise(small_demo_corpus_dir, tmp_path):
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    runs = tmp_path / "runs"
    probe = {"layer_scores": {"0": 0.0, "2": 0.360, "5": 0.359, "7": 0.358, "9": 0.05}}
    block = {"spec": "wavlm@best", "name": "wavlm", "layer": 2, "layer_choice": "best (ridge probe)",
             "n_layers": 10, "dim": 10, "probe": probe}
    write_seeded_run(runs, "tied", corpus, 3, 0.05, seed=1, blocks=[block])
    clear = dict(block, probe={"layer_scores": {"0": 0.0, "2": 0.36, "5": -0.1}})
    write_seeded_run(runs, "clear", corpus, 3, 0.05, seed=1, blocks=[clear])
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    rows = csv_rows(out)
    std = float(rows["tied"]["s_mtl_std"])
    assert 0.002 < std < 0.3                                 # the noise scale the tie is judged against
    assert rows["tied"]["probe_tie"] == "True" and rows["clear"]["probe_tie"] == "False"
    assert "tied ≈" in text
    assert ("≈ tied: wavlm@best: the ridge probe chose layer 2 (0.360) over layer 5 (0.359) by 0.001; "
            "layers 2, 5, 7 lie within one seed-std") in text
    assert "clear: wavlm@best: the ridge probe chose layer 2 (0.360) over layer 0 (0.000) by 0.360, more than" in text


def test_layer_plot_has_every_layer_reached_including_best_and_last(report_runs, tmp_path):
    from exvo.fusion.rows import layer_groups, make_rows
    from exvo.runs.reader import discover

    corpus, runs = report_runs
    write_learn_run(runs, "wavlm_last", corpus, (0.33, 0.01), [], dim=2048, seed=7,
                    blocks=[{"spec": "wavlm", "name": "wavlm", "layer": 24, "layer_choice": "last",
                             "n_layers": 25, "dim": 2048}])
    groups = layer_groups(make_rows(discover(runs), corpus))
    (label, pts), = [(k, v) for k, v in groups.items() if k.startswith("wavlm@*")]
    assert [p["layer"] for p in pts] == [0, 6, 9, 12, 24]
    how = {p["layer"]: p["how"] for p in pts}
    assert how[9] == "best" and how[24] == "last" and how[12] == "given"


def test_learn_summary_line_of_one_seed_shows_no_fake_zero_std():
    from exvo.learn.runs import summary_line

    met = {"split": "Val", "summary": {k: {"mean": 0.5, "std": 0.0} for k in ("ccc", "uar", "mae", "s_mtl")},
           "per_seed": [{}], "ensemble": {"s_mtl": 0.5}}
    line = summary_line("runs/x", met)
    assert "±" not in line and "one seed, std undefined" in line
    met["per_seed"] = [{}, {}]
    assert "S_MTL 0.500±0.000" in summary_line("runs/x", met)


def test_undefined_ensemble_s_mtl_is_not_shown_as_zero(small_demo_corpus_dir, tmp_path):
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    runs = tmp_path / "runs"
    write_seeded_run(runs, "flat", corpus, 2, 0.05, seed=1, flat_seeds=(0, 1))    # every seed: CCC 0
    text = make_report(runs, tmp_path / "rep", corpus=corpus)
    line = next(ln for ln in text.splitlines() if ln.split()[1:2] == ["flat"])
    ens_cell, oof_cell = line.rstrip().rsplit(None, 2)[1:]     # the last two columns: ens. S_MTL, OOF S_MTL
    assert "undefined (0/2)" in line and ens_cell == "undefined" and oof_cell == "–"
    assert "0.000" not in line.split("±")[-1]
    row = csv_rows(tmp_path / "rep")["flat"]
    assert row["ensemble_s_mtl"] == "" and row["ensemble_s_mtl_defined"] == "False" and row["s_mtl_mean"] == ""


def test_learn_summary_leaves_undefined_s_mtl_seeds_out():
    from exvo.learn.runs import metrics_json, summary_line

    def sc(ccc, uar, mae, s):
        return {"ccc": ccc, "uar": uar, "mae": mae, "s_mtl": s, "ccc_per_emotion": dict.fromkeys(EMOTIONS, ccc)}

    per = [sc(0.5, 0.5, 1.0, 0.6), sc(0.0, 0.5, 1.0, 0.0), sc(0.5, 0.5, 1.0, 0.8)]
    m = metrics_json(per, [0, 1, 2], [None] * 3, sc(0.5, 0.5, 1.0, 0.7), "Val", 10)
    assert m["summary"]["s_mtl"] == pytest.approx({"mean": 0.7, "std": 0.1, "n_defined": 2})
    assert m["summary"]["ccc"]["mean"] == pytest.approx(1 / 3)          # CCC itself is defined (0) on seed 1
    assert "S_MTL 0.700±0.100 (2/3 seeds defined)" in summary_line("r", m)
    m = metrics_json(per[1:2], [1], [None], per[1], "Val", 10)
    assert m["summary"]["s_mtl"]["mean"] is None and "S_MTL undefined (ensemble S_MTL undefined" in summary_line("r", m)


# ----------------------------------------------------------------------- OOF, the trivial row, tracks, inherited †
def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_oof_estimate_column_and_the_constant_predictor_row(seeded_runs, tmp_path):
    corpus, runs = seeded_runs
    good = json.loads((runs / "good" / "metrics.json").read_text())
    worse = json.loads((runs / "worse" / "metrics.json").read_text())
    mae = (good["summary"]["mae"]["mean"] + worse["summary"]["mae"]["mean"]) / 2   # good beats it, worse does not
    const = {"ccc": 0.0, "uar": 0.25, "mae": mae, "s_mtl": 0.0}
    for r in ("good", "worse"):
        _edit_json(runs / r / "config.json", constant_predictor_val=const)
    oof = {"split": "OOF", "summary": {"s_mtl": {"mean": 0.3526, "std": 0.0036, "n_defined": 3}},
           "per_seed": [{}, {}, {}], "ensemble": {"s_mtl": 0.368}, "ci95": {"s_mtl": [0.3203, 0.4227]}}
    _edit_json(runs / "good" / "metrics.json", oof=oof)
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    lines = text.splitlines()
    assert lines[0].rstrip().endswith("OOF S_MTL") and "ens. S_MTL" in lines[0]
    row = {ln.split()[1]: ln for ln in lines[2:5]}
    assert row["good"].rstrip().endswith("0.353 ± 0.004 [0.320, 0.423]") and row["worse"].rstrip().endswith("–")
    assert "✗" in row["worse"] and "✗" not in row["good"]
    assert lines[4].split()[:3] == ["–", "constant", "predictor"] and f"{mae:.2f}" in lines[4]
    assert "undefined (CCC 0)" in lines[4]
    assert ("OOF S_MTL: the out-of-fold estimate from Train alone (`--stop-on folds`: every Train clip predicted by "
            "the fold model that never trained on its speaker; Val never used)") in text
    assert f"✗ no better than the constant predictor (seed mean, Val): Age-MAE (constant {mae:.3f}): 1 of 2 rows, worse " in text
    rows = csv_rows(out)
    assert float(rows["good"]["oof_s_mtl_mean"]) == 0.3526 and rows["good"]["oof_s_mtl_ci95_hi"] == "0.4227"
    assert rows["worse"]["not_learned"] == "mae" and rows["worse"]["oof_s_mtl_mean"] == ""
    assert float(rows["constant predictor"]["mae_mean"]) == pytest.approx(mae)


def test_fewshot_runs_are_never_rows_of_the_multitask_table(seeded_runs, tmp_path):
    corpus, runs = seeded_runs
    fs = runs / "fewshot" / "fs_egemaps"
    fs.mkdir(parents=True)
    (fs / "config.json").write_text(json.dumps({"kind": "fewshot", "variant": "none", "features": [{"spec": "egemaps"}]}))
    (fs / "metrics.json").write_text(json.dumps({"summary": {"ccc": {"mean": 0.5, "std": 0.01}}, "per_seed": [{}, {}],
                                                 "ensemble": {"ccc": 0.512, "ci95": [0.48, 0.54]}}))
    (fs / "val.csv").write_text("File_ID\n")
    # `exvo report --runs runs/fewshot`: a clear message, not rows of "?"
    with pytest.raises(FileNotFoundError, match=r"1 fewshot run\(s\) under .*fewshot \(fs_egemaps\) are not multitask "
                                                r"runs .*`exvo report --runs .*runs` shows them in their own section"):
        make_report(runs / "fewshot", tmp_path / "rep0", corpus=corpus)
    # beside multitask runs: their own section, and the note
    shutil.copytree(fs, runs / "fs_here")
    text = make_report(runs, tmp_path / "rep", corpus=corpus)
    assert "fs_here" not in [ln.split()[1] for ln in text.splitlines()[2:] if len(ln.split()) > 1]
    assert "1 fewshot run(s) under" in text and "ExVo-FewShot" in text


def test_a_mean_of_val_stopped_runs_keeps_their_dagger(seeded_runs, tmp_path):
    from exvo.fusion.api import fuse

    corpus, runs = seeded_runs
    _edit_json(runs / "good" / "config.json", val_optimistic=True)
    fuse(corpus, runs_dir=runs, mode="mean", run_names=["good", "worse"], name="avg", echo=lambda *_: None)
    text = make_report(runs, tmp_path / "rep", corpus=corpus)
    names = [ln.split()[1:3] for ln in text.splitlines()[2:5]]
    assert ["avg", "†"] in names and ["good", "†"] in names and ["worse", "†"] not in names
    assert "† avg fuses runs whose Val figures are optimistic, so its are too: good: its epochs were chosen on Val" in text
    assert csv_rows(tmp_path / "rep")["avg"]["optimistic"] == "True"


def test_long_titles_wrap_inside_the_figure(tmp_path):
    """The headline number leads the title and a long run name wraps: nothing is drawn on the edges."""
    import matplotlib.image as mpimg

    from exvo.fusion import plots

    rng = np.random.default_rng(0)
    name = "reproduce-idiap2022-raw-er+zff-er-sys2_with_an_even_longer_suffix_than_usual"
    true, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    paths = [plots.country_confusion(true, pred, tmp_path / "c.png", f"Country UAR 0.512 (Val, seed ensemble, † Val "
                                                                          f"chose it)\n{name}"),
             plots.age_scatter(rng.normal(30, 5, 200), rng.normal(30, 5, 200), tmp_path / "a.png",
                               f"Age MAE 4.37 years (Val, seed ensemble)\n{name}")]
    for p in paths:
        img = mpimg.imread(p)[..., :3]
        edges = np.concatenate([img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3), img[:2].reshape(-1, 3)])
        assert edges.min() > 0.9, f"{p.name}: something is drawn on the figure's edge (a clipped title?)"
    assert all(len(ln) <= 60 for ln in plots.fit_title("x " * 200, 5.6 * 0.85, 10).splitlines())


def test_verify_curves_of_different_features_get_different_labels(tmp_path):
    from exvo.verify.figures import curve_labels

    met = {"loss": "namp", "task": ["Amusement", "Awkwardness"], "unseen": ["Awkwardness"], "encoder": "mlp"}
    found = [(tmp_path / "a", {"features": [{"spec": "egemaps"}]}, met),
             (tmp_path / "b", {"features": [{"spec": "compare"}]}, met),
             (tmp_path / "c", {"features": [{"spec": "compare"}]}, met)]
    labels = curve_labels(found)
    assert labels[0] == "namp · egemaps (mlp) · Amusement vs Awkwardness (unseen Awkwardness)"
    assert labels[1].startswith("namp · compare (mlp)") and labels[1].endswith("[b]") and labels[2].endswith("[c]")
    assert len(set(labels)) == 3
