"""Demo corpus generator and `exvo score` end to end."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exvo.cli import app
from exvo.corpus import Corpus
from exvo.demo import make_demo_corpus
from exvo.metrics import EMOTIONS
from exvo.predictions import Predictions, PredictionError, score

runner = CliRunner()


def test_demo_corpus_is_deterministic(tmp_path):
    a = make_demo_corpus(tmp_path / "a", speakers=8, clips_per_speaker=2, seed=5, progress=False)
    b = make_demo_corpus(tmp_path / "b", speakers=8, clips_per_speaker=2, seed=5, progress=False)
    assert (a / "data_info.csv").read_text() == (b / "data_info.csv").read_text()
    assert (a / "wav" / "00003.wav").read_bytes() == (b / "wav" / "00003.wav").read_bytes()
    c = Corpus.from_dir(a)
    assert len(c) == 16 and set(c.splits) == {"Train", "Val", "Test"}


def test_demo_corpus_labels_carry_acoustic_signal(small_demo_corpus_dir):
    """The burst type drives emotions; its audio must differ (else the demo is noise)."""
    from exvo.corpus import load_audio

    c = Corpus.from_dir(small_demo_corpus_dir)
    dur = np.array([load_audio(c.audio_path(i)).size / 16000 for i in c.ids])
    assert 0.4 <= dur.min() and dur.max() <= 5.0
    lab = c.emotions.copy()
    lab[np.isnan(lab)] = 0
    # cries (Distress/Sadness-dominant) are the longest bursts by construction
    sad = lab[:, EMOTIONS.index("Sadness")] > 0.5
    if sad.any() and (~sad).any():
        assert dur[sad].mean() > dur[~sad].mean()


def _perfect(c: Corpus, split: str) -> Predictions:
    emo, cou, age = c.labels(split)
    return Predictions(c.split_ids(split), emo, cou, age)


def test_score_perfect_prediction(small_demo_corpus_dir, tmp_path):
    c = Corpus.from_dir(small_demo_corpus_dir)
    p = _perfect(c, "Val")
    p.write(tmp_path / "val.csv")
    res = runner.invoke(app, ["score", str(tmp_path / "val.csv"), "--data", str(small_demo_corpus_dir),
                              "--convention", "population"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ccc"] == pytest.approx(1.0) and out["uar"] == 1.0 and out["mae"] == 0.0
    assert out["s_mtl"] == pytest.approx(1.5)
    assert set(out["ccc_per_emotion"]) == set(EMOTIONS)
    # the official (challenge) convention gives (n-1)/n for a perfect prediction
    n = len(c.indices("Val"))
    assert score(p, c, "Val")["ccc"] == pytest.approx((n - 1) / n)


def test_score_test_split_uses_hidden_labels(small_demo_corpus_dir):
    c = Corpus.from_dir(small_demo_corpus_dir)
    assert score(_perfect(c, "Test"), c, "Test", "population")["uar"] == 1.0


def test_score_rejects_missing_extra_ids_and_columns(small_demo_corpus_dir, tmp_path):
    c = Corpus.from_dir(small_demo_corpus_dir)
    p = _perfect(c, "Val")
    short = Predictions(p.ids[1:] + ["[99999]"], p.emotions[:, :][1:].tolist() + [[0.5] * 10],
                        p.country[1:].tolist() + [0], p.age[1:].tolist() + [30])
    with pytest.raises(PredictionError, match=r"1 missing id\(s\) \[" + p.ids[0].replace("[", r"\[")):
        score(short, c, "Val")
    short.write(tmp_path / "bad.csv")
    res = runner.invoke(app, ["score", str(tmp_path / "bad.csv"), "--data", str(small_demo_corpus_dir)])
    assert res.exit_code == 2 and "extra id(s) [[99999]]" in res.output
    (tmp_path / "cols.csv").write_text("File_ID,Country,Age,Awe\n[00000],1,30,0.5\n")
    res = runner.invoke(app, ["score", str(tmp_path / "cols.csv"), "--data", str(small_demo_corpus_dir)])
    assert res.exit_code == 2 and "missing ['Excitement'" in res.output


def test_prediction_file_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    p = Predictions.from_proba(["[1]", "[2]", "[3]"], rng.random((3, 10)), rng.dirichlet(np.ones(4), 3), [20.5, 31.0, 44.25])
    p.write(tmp_path / "p.csv")
    p.write_proba(tmp_path / "pp.csv")
    q = Predictions.read(tmp_path / "p.csv", tmp_path / "pp.csv")
    assert q.ids == p.ids
    np.testing.assert_array_equal(q.emotions, p.emotions)  # repr() keeps full float precision
    np.testing.assert_array_equal(q.country_proba, p.country_proba)
    np.testing.assert_array_equal(q.country, p.country)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "File_ID,Country,Age," + ",".join(EMOTIONS)


def test_cli_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    for cmd in ("extract", "learn", "fuse", "report", "score", "demo-corpus", "demo", "predict", "train-cnn"):
        assert cmd in res.output


def test_score_of_another_split_suggests_the_right_split(small_demo_corpus_dir, tmp_path):
    c = Corpus.from_dir(small_demo_corpus_dir)
    _perfect(c, "Test").write(tmp_path / "test.csv")
    res = runner.invoke(app, ["score", str(tmp_path / "test.csv"), "--data", str(small_demo_corpus_dir)])
    assert res.exit_code == 2
    assert "these are exactly the Test ids of the corpus: score them with `--split Test`" in res.output
    p = _perfect(c, "Test")
    part = p.take(p.ids[:-1])                                # a Test file missing one clip
    with pytest.raises(PredictionError, match=rf"{len(part)} of the {len(part)} ids belong to the Test split "
                                              rf"\({len(p)} clips\): did you mean `--split Test`\?"):
        score(part, c, "Val")
    with pytest.raises(PredictionError) as e:                # Val ids with one stray: no hint
        v = _perfect(c, "Val")
        score(v.take(v.ids[1:]), c, "Val")
    assert "--split" not in str(e.value)


def test_predict_on_a_fusion_run_points_to_its_test_csv(tmp_path, small_demo_corpus_dir):
    run = tmp_path / "runs" / "hybrid"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": "fusion", "sources": ["a", "b"]}))
    args = ["predict", str(run), "--data", str(small_demo_corpus_dir), "--cache", str(tmp_path / "cache")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "is a fusion run" in res.output and "no test.csv" in res.output
    (run / "test.csv").write_text("File_ID\n")
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert f"Its Test predictions are {run / 'test.csv'}" in res.output.replace("\n", "")


def test_readme_demo_figures_come_from_the_demos_own_records(tmp_path):
    """scripts/demo_figures.py fills the README's marked blocks from demo_timings.json and the reduced tables."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("demo_figures", Path(__file__).parents[1] / "scripts" / "demo_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = tmp_path / "runs"
    (runs / "report").mkdir(parents=True)
    (runs / "report" / "demo_timings.json").write_text(json.dumps({
        "seconds": {"corpus": 6, "extract": 300, "learn": 120, "fuse": 6, "papers": 900, "generate": 3, "report": 9},
        "total_seconds": 1344, "load_1min_at_stage_end": {"start": 2.0, "corpus": 2.5, "papers": 6.1},
        "load_1min_over_run": {"min": 1.7, "mean": 5.4, "max": 6.9, "every_seconds": 10},
        "cores": 2, "seeds": 3}))
    t = runs / "reproduce-idiap2022-reduced"
    t.mkdir()
    (t / "table.md").write_text("# Idiap ExVo-MultiTask 2022 (paper 001): Table 2 — reduced\n")
    (t / "table.csv").write_text(
        "row,system,source,paper S_MTL,paper Test S_MTL,ours S_MTL,ours ens. S_MTL,paper rank (S_MTL),ours rank (S_MTL),status\n"
        "compare-sys1,ComParE Sys-1,T2,0.349,0.335,0.340 ± 0.020 †,0.356 †,1,1,done\n"
        "trivial,constant predictor,–,,,undefined (CCC 0),,,,reference\n")
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- demo:timings -->\nold\n<!-- /demo:timings -->\ny\n<!-- demo:papers -->\nold\n"
                      "<!-- /demo:papers -->\nz\n")
    assert mod.main([str(runs), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert ("A fresh `make demo` took 22.4 minutes on 2 cores at a 1-minute load average of 1.7–6.9, mean 5.4, with "
            "other jobs running, 3 seeds per run; its stages, in minutes: corpus 0.1, extract 5.0, learn 2.0") in text
    assert "| idiap2022 compare-sys1: ComParE Sys-1 | S_MTL 0.349 | 0.340 ± 0.020 † | 1 / 1 |" in text
    assert "| idiap2022 trivial: constant predictor | – | undefined (CCC 0) | – |" in text
    assert text.startswith("x\n") and text.endswith("z\n") and "old" not in text


def test_demo_jitter_and_shimmer_are_cycle_to_cycle():
    """The demo's age cue: each glottal cycle's own period and amplitude, perturbed by N(0, jitter)
    and N(0, shimmer). At a steady 100 Hz (160-sample periods) the local jitter (mean |ΔT| / mean T)
    is at most j·√2·√(2/π) ≈ 1.13 j (the perturbed cycles do not line up exactly with the periods:
    0.89 j measured with this seed), and the cycle peaks' relative std ≈ shimmer; without them
    both are 0. exvo ≤ 0.1's slow pitch wander gave no cycle-to-cycle jitter at all."""
    from exvo.demo import SR, _glottal_source

    def measure(jitter, shimmer):
        v = _glottal_source(np.full(2 * SR, 100.0), jitter, shimmer, np.random.default_rng(0))
        starts = np.flatnonzero(v > 0.5)                      # the pulse opening each cycle
        T = np.diff(starts).astype(float)
        return np.abs(np.diff(T)).mean() / T.mean(), v[starts].std() / v[starts].mean()

    j0, s0 = measure(0.0, 0.0)
    assert j0 == 0.0 and s0 < 1e-9
    j, s = measure(0.02, 0.1)
    assert 0.014 < j < 0.0226 and 0.08 < s < 0.12
    j2, s2 = measure(0.04, 0.0)
    assert j2 > 1.5 * j and s2 < 0.001                        # jitter grows with the speaker's value
