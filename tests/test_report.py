"""The report: table sorted by S_MTL with the numbers from metrics.json, CSV/MD files, PNGs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exvo.corpus import Corpus
from exvo.fusion.report import make_report
from exvo.metrics import EMOTIONS
from exvo.predictions import Predictions, save_split


def write_learn_run(runs: Path, name: str, corpus: Corpus, s_mtl: tuple[float, float], features: list[str],
                    *, ccc=(0.4, 0.02), uar=(0.5, 0.03), mae=(4.0, 0.1), ens=0.41, dim=88, seed=0,
                    learner="mlp", arch="sys2", blocks: list[dict] | None = None) -> Path:
    """A learn-run folder with hand-set summary numbers and noisy Val predictions.

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
    assert "ssl_layers.png skipped: no runs of the same feature set at two or more @layers" in text
    assert "skipped: no corpus given" in text
    assert not (tmp_path / "rep" / "ssl_layers.png").exists()
    assert (tmp_path / "rep" / "per_emotion_ccc.png").exists()
    lines = text.splitlines()
    assert lines[2].split()[1] == "only" and lines[3].split()[1] == "broken" and "?" in lines[3]


def test_fusion_rows_are_flagged_and_scored_from_their_metrics(report_runs, tmp_path):
    from exvo.fusion.api import fuse

    corpus, runs = report_runs
    fuse(corpus, runs_dir=runs, mode="hybrid", echo=lambda *_: None)
    fuse(corpus, runs_dir=runs, mode="hybrid", select_on="cv", echo=lambda *_: None)
    out = tmp_path / "rep"
    text = make_report(runs, out, corpus=corpus)
    assert "hybrid †" in text and "† fusion chosen on Val and scored on Val: optimistic" in text
    with open(out / "report.csv", newline="") as f:
        rows = {r["system"]: r for r in csv.DictReader(f)}
    fused = json.loads((runs / "hybrid" / "metrics.json").read_text())
    assert float(rows["hybrid"]["s_mtl_mean"]) == fused["summary"]["s_mtl"]["mean"]
    assert rows["hybrid"]["optimistic"] == "True" and rows["hybrid_cv"]["optimistic"] == "False"
    assert rows["hybrid"]["learner"] == "hybrid" and rows["hybrid_cv"]["learner"] == "hybrid cv"
    assert rows["hybrid"]["features"].startswith("emo:")


def test_empty_runs_folder_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="no run folders under"):
        make_report(tmp_path / "runs", tmp_path / "rep")


# ----------------------------------------------------------------------- the demo pipeline
def test_demo_pipeline_skips_what_is_missing_and_reuses_runs(small_demo_copy, tmp_path, monkeypatch):
    """Extraction and learning faked: the demo's own logic (skips, reuse, fuse, report) is real."""
    import sys
    import types
    from dataclasses import dataclass, field

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

    @dataclass
    class LearnConfig:
        features: list = field(default_factory=list)
        learner: str = "mlp"
        arch: str = "sys2"
        seeds: int = 5

    class Result:
        def summary_line(self):
            return "learned"

    def fake_learn(corpus, cfg, cache_dir, runs_dir, name=None, echo=print, overwrite=False):
        calls["learn"].append((tuple(cfg.features), cfg.seeds))
        shutil.rmtree(runs_dir / name, ignore_errors=True)      # a real learn run replaces its folder
        write_learn_run(runs_dir, name, corpus, (0.3 + 0.01 * len(calls["learn"]), 0.01), cfg.features,
                        seed=len(calls["learn"]))
        cfg_path = runs_dir / name / "config.json"
        c = json.loads(cfg_path.read_text())
        c["seeds"] = list(range(cfg.seeds))                      # the learner records the seed list
        cfg_path.write_text(json.dumps(c))
        return Result()

    monkeypatch.setattr(base, "names", lambda: ["compare", "egemaps", "zff_exvo_er"])
    monkeypatch.setattr(run, "extract", fake_extract)
    monkeypatch.setitem(sys.modules, "exvo.learn.api",
                        types.SimpleNamespace(LearnConfig=LearnConfig, learn=fake_learn))
    runs = tmp_path / "runs"
    lines: list[str] = []
    table = run_demo(small_demo_copy, tmp_path / "cache", runs, seeds=2, echo=lines.append)
    text = "\n".join(lines)
    assert calls["extract"] == ["egemaps", "compare", "zff_exvo_er"]
    assert "skip raw_exvo_er: not a registered extractor" in text
    assert "skip wavlm: not a registered extractor" in text
    assert "skip compare: failed: RuntimeError: openSMILE exploded" in text and "second line" not in text
    assert calls["learn"] == [(("egemaps",), 2), (("zff_exvo_er",), 2)]
    assert "skip egemaps+raw_exvo_er: its cache is missing" in text
    assert (runs / "hybrid" / "fusion.json").is_file() and (runs / "hybrid_cv" / "fusion.json").is_file()
    assert "egemaps_mlp_sys2" in table and (runs / "zff_exvo_er_mlp_sys2").is_dir() and (runs / "report" / "report.md").is_file()

    lines.clear()
    run_demo(small_demo_copy, tmp_path / "cache", runs, seeds=2, echo=lines.append)
    assert len(calls["learn"]) == 2                         # second run: nothing retrained
    assert f"reuse {runs / 'egemaps_mlp_sys2'} (delete it to retrain)" in "\n".join(lines)
    run_demo(small_demo_copy, tmp_path / "cache", runs, seeds=3, echo=lines.append)
    assert len(calls["learn"]) == 4                         # other seeds: retrained
