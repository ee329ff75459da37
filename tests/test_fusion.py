"""Late fusion: hybrid per-subtask selection, averaging ensembles, selection bias (cv).

Everything runs on a hand-written 8-clip Val split (4 speakers, one per country, 2 clips
each) and hand-designed run folders whose scores are known without the code:

* run A: emotions = truth (challenge CCC (n-1)/n = 7/8: its variances use n-1, the
  covariance n), Country always 0 (UAR .25), Age = truth + 10 (MAE 10)
* run B: emotions = truth/2 + .25 (0 < CCC < 1), Country = truth (UAR 1), Age = truth + 5
* run C: emotions = .5 constant (CCC 0), Country right for 2 of 4 countries (UAR .5), Age = truth + 1
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exvo.corpus import Corpus
from exvo.fusion.api import fuse
from exvo.fusion.cv import speaker_halves
from exvo.metrics import COUNTRIES, EMOTIONS, ccc
from exvo.predictions import PredictionError, Predictions, load_split, save_split

VAL_COUNTRY = np.array([0, 0, 1, 1, 2, 2, 3, 3])
VAL_AGE = np.array([20.0, 25, 30, 35, 40, 45, 50, 55])
VAL_SPK = ["Speaker_0", "Speaker_0", "Speaker_1", "Speaker_1", "Speaker_2", "Speaker_2", "Speaker_3", "Speaker_3"]
VAL_IDS = [f"[001{k:02d}]" for k in range(8)]
TEST_IDS = [f"[002{k:02d}]" for k in range(4)]
RNG = np.random.default_rng(7)
VAL_EMO = RNG.integers(0, 101, size=(8, 10)) / 100.0


def write_corpus(root: Path) -> Corpus:
    """data_info.csv only (fusion never reads audio): 2 Train, 8 Val, 4 Test rows."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS])
        for k in range(2):
            w.writerow([f"[000{k:02d}]", "Train", "Speaker_9", 1, 33, COUNTRIES[1], *[0.5] * 10])
        for k in range(8):
            w.writerow([VAL_IDS[k], "Val", VAL_SPK[k], VAL_COUNTRY[k], VAL_AGE[k], COUNTRIES[VAL_COUNTRY[k]],
                        *VAL_EMO[k]])
        for k in range(4):
            w.writerow([TEST_IDS[k], "Test", f"Speaker_{10 + k}", "", "", "", *[""] * 10])
    return Corpus.from_dir(root)


def soft(country: np.ndarray, p: float) -> np.ndarray:
    """Probabilities with ``p`` on ``country`` and the rest spread evenly."""
    out = np.full((len(country), 4), (1 - p) / 3)
    out[np.arange(len(country)), country] = p
    return out


def write_run(runs: Path, name: str, val: Predictions, test: Predictions | None, **cfg) -> Path:
    d = runs / name
    d.mkdir(parents=True, exist_ok=True)
    save_split(val, d, "Val")
    if test is not None:
        save_split(test, d, "Test")
    config = {"kind": "learn", "features": [name.lower()], "feature_dim": 10, "learner": "mlp", "arch": "sys2",
              "seeds": 1, **cfg}
    (d / "config.json").write_text(json.dumps(config))
    return d


def val_preds() -> dict[str, Predictions]:
    c_country = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    return {
        "A": Predictions(VAL_IDS, VAL_EMO, np.zeros(8, int), VAL_AGE + 10, soft(np.zeros(8, int), 0.7)),
        "B": Predictions(VAL_IDS, VAL_EMO / 2 + 0.25, VAL_COUNTRY, VAL_AGE + 5, soft(VAL_COUNTRY, 0.6)),
        "C": Predictions(VAL_IDS, np.full((8, 10), 0.5), c_country, VAL_AGE + 1, soft(c_country, 0.5)),
    }


def make_test_preds() -> dict[str, Predictions]:
    rng = np.random.default_rng(11)
    out = {}
    for n in "ABC":
        cou = rng.integers(0, 4, 4)
        out[n] = Predictions(TEST_IDS, rng.random((4, 10)), cou, rng.uniform(20, 60, 4), soft(cou, 0.4 + 0.1 * "ABC".index(n)))
    return out


@pytest.fixture
def setup(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    runs = tmp_path / "runs"
    v, t = val_preds(), make_test_preds()
    for n in "ABC":
        write_run(runs, n, v[n], t[n])
    return corpus, runs, v, t


def quiet(*_):
    pass


def test_hybrid_takes_the_obvious_winner_of_each_subtask(setup):
    corpus, runs, v, t = setup
    lines = []
    res = fuse(corpus, select_on="val", runs_dir=runs, mode="hybrid", echo=lines.append)
    assert res.name == "hybrid" and res.path == runs / "hybrid"
    assert res.chosen == {"emotion": ["A"], "country": ["B"], "age": ["C"]}
    for split, src in (("Val", v), ("Test", t)):
        out = load_split(res.path, split)
        assert out.ids == src["A"].ids
        np.testing.assert_array_equal(out.emotions, src["A"].emotions)
        np.testing.assert_array_equal(out.country, src["B"].country)
        np.testing.assert_array_equal(out.country_proba, src["B"].country_proba)
        np.testing.assert_array_equal(out.age, src["C"].age)
    # hand-known scores: CCC 7/8 (A), UAR 1 (B), MAE 1 (C) → S_MTL = 3 / (8/7 + 1 + 1) = 21/22
    assert res.val["ccc"] == pytest.approx(7 / 8) and res.val["uar"] == 1.0 and res.val["mae"] == pytest.approx(1.0)
    assert res.val["s_mtl"] == pytest.approx(21 / 22)
    rec = json.loads((res.path / "fusion.json").read_text())
    assert rec["subtasks"]["country"]["chosen"] == ["B"]
    cands = {c["run"]: c["uar"] for c in rec["subtasks"]["country"]["candidates"]}
    assert cands == pytest.approx({"A": 0.25, "B": 1.0, "C": 0.5})
    ages = [c["run"] for c in rec["subtasks"]["age"]["candidates"]]
    assert ages == ["C", "B", "A"]                         # best (lowest MAE) first
    assert {c["run"]: c["mae"] for c in rec["subtasks"]["age"]["candidates"]} == pytest.approx({"A": 10, "B": 5, "C": 1})
    cfg = json.loads((res.path / "config.json").read_text())
    met = json.loads((res.path / "metrics.json").read_text())
    assert cfg["kind"] == "fusion" and met["summary"]["s_mtl"]["mean"] == pytest.approx(21 / 22)
    assert met["selection"]["optimistic"] is True and met["per_seed"] == []
    assert set(met["ccc_per_emotion"]) == set(EMOTIONS)
    text = "\n".join(lines)
    assert "optimistic" in text and "test.csv" not in " ".join(rec["notes"])


def test_mean_ensemble_known_answer(setup):
    corpus, runs, v, _ = setup
    res = fuse(corpus, runs_dir=runs, mode="mean", echo=quiet)
    assert res.name == "mean_3runs"
    out = load_split(res.path, "Val")
    # (truth + (truth/2 + .25) + .5) / 3 = truth/2 + .25
    np.testing.assert_allclose(out.emotions, VAL_EMO / 2 + 0.25, atol=1e-12)
    np.testing.assert_allclose(out.age, VAL_AGE + 16 / 3, atol=1e-12)
    pa, pb, pc = (v[n].country_proba for n in "ABC")
    np.testing.assert_allclose(out.country_proba, (pa + pb + pc) / 3, atol=1e-12)
    # by hand: A's .7 on China outvotes B's .6 for South Africa only where C also votes China
    np.testing.assert_array_equal(out.country, [0, 0, 1, 1, 0, 0, 0, 0])
    assert res.val["mae"] == pytest.approx(16 / 3)
    assert res.val["uar"] == pytest.approx(0.5)
    met = json.loads((res.path / "metrics.json").read_text())
    assert met["selection"]["optimistic"] is False        # a plain mean chooses nothing on Val


def test_weighted_mean_known_answer(setup):
    corpus, runs, v, _ = setup
    res = fuse(corpus, select_on="val", runs_dir=runs, mode="mean", weighted=True, echo=quiet)
    assert res.name == "mean_3runs_weighted"
    out = load_split(res.path, "Val")
    # age weights 1/MAE = 1/10, 1/5, 1/1 → offset (10*.1 + 5*.2 + 1*1) / 1.3 = 3 / 1.3
    np.testing.assert_allclose(out.age, VAL_AGE + 3 / 1.3, atol=1e-9)
    assert res.val["mae"] == pytest.approx(30 / 13)
    # emotion weights CCC: A 7/8, B b, C 0
    b = np.mean([ccc(VAL_EMO[:, j], v["B"].emotions[:, j]) for j in range(10)])
    assert 0 < b < 7 / 8
    np.testing.assert_allclose(out.emotions, (7 / 8 * VAL_EMO + b * v["B"].emotions) / (7 / 8 + b), atol=1e-9)
    # country weights UAR: .25, 1, .5
    pa, pb, pc = (v[n].country_proba for n in "ABC")
    np.testing.assert_allclose(out.country_proba, (0.25 * pa + pb + 0.5 * pc) / 1.75, atol=1e-9)
    rec = json.loads((res.path / "fusion.json").read_text())
    assert rec["subtasks"]["age"]["weights"] == pytest.approx({"C": 1 / 1.3, "B": 0.2 / 1.3, "A": 0.1 / 1.3})


def test_hybrid_top_k_averages_the_k_best(setup):
    corpus, runs, v, t = setup
    res = fuse(corpus, select_on="val", runs_dir=runs, mode="hybrid", top=2, echo=quiet)
    assert res.name == "hybrid_top2"
    assert res.chosen == {"emotion": ["A", "B"], "country": ["B", "C"], "age": ["C", "B"]}
    out = load_split(res.path, "Val")
    np.testing.assert_allclose(out.emotions, 0.75 * VAL_EMO + 0.125, atol=1e-12)
    np.testing.assert_allclose(out.age, VAL_AGE + 3, atol=1e-12)
    np.testing.assert_allclose(out.country_proba, (v["B"].country_proba + v["C"].country_proba) / 2, atol=1e-12)
    test = load_split(res.path, "Test")
    np.testing.assert_allclose(test.age, (t["B"].age + t["C"].age) / 2, atol=1e-12)


def test_mismatched_ids_are_refused(setup):
    corpus, runs, v, _ = setup
    d = v["A"]
    keep = VAL_IDS[:7]
    write_run(runs, "D", d.take(keep), None)
    with pytest.raises(PredictionError, match=r"runs do not share the same Val ids: D \(7 ids\) vs A \(8 ids\): "
                                              r"D lacks 1 \[\[00107\]\]"):
        fuse(corpus, select_on="val", runs_dir=runs, echo=quiet)
    assert not (runs / "hybrid").exists()


def test_runs_from_another_corpus_are_refused(setup, tmp_path):
    corpus, runs, v, _ = setup
    other = [i.replace("[001", "[009") for i in VAL_IDS]
    for n in "ABC":
        p = v[n]
        write_run(tmp_path / "other", n, Predictions(other, p.emotions, p.country, p.age, p.country_proba), None)
    with pytest.raises(PredictionError, match=r"do not match the Val split of .*8 missing"):
        fuse(corpus, select_on="val", runs_dir=tmp_path / "other", echo=quiet)


def test_ties_are_broken_by_name_and_reported(setup):
    corpus, runs, v, t = setup
    shutil.copytree(runs / "B", runs / "A0")                # identical to B, sorts before it
    lines = []
    res = fuse(corpus, select_on="val", runs_dir=runs, echo=lines.append)
    assert res.chosen["country"] == ["A0"]
    assert res.chosen["emotion"] == ["A"] and res.chosen["age"] == ["C"]
    text = "\n".join(lines)
    assert "tie on country (UAR 1.0000) between A0, B: took A0 by name order" in text
    rec = json.loads((res.path / "fusion.json").read_text())
    assert any("tie on country" in n for n in rec["subtasks"]["country"]["notes"])
    assert not [n for n in rec["subtasks"]["emotion"]["notes"] if "tie" in n]   # A0/B tie for 2nd place: no effect on top 1


def test_missing_test_csv_of_a_chosen_run(setup):
    corpus, runs, *_ = setup
    (runs / "C" / "test.csv").unlink()
    (runs / "C" / "test_country_proba.csv").unlink()
    lines = []
    res = fuse(corpus, select_on="val", runs_dir=runs, echo=lines.append)
    assert not res.test_written and not (res.path / "test.csv").exists()
    assert (res.path / "val.csv").exists()
    assert "no test.csv written: chosen run(s) C have no test.csv" in "\n".join(lines)
    rec = json.loads((res.path / "fusion.json").read_text())
    assert rec["test"]["written"] is False and rec["test"]["runs_with_test"] == ["A", "B"]


def test_missing_test_csv_of_an_unused_run_is_harmless(setup):
    corpus, runs, v, _ = setup
    bad = v["A"]
    write_run(runs, "D", Predictions(VAL_IDS, np.full((8, 10), 0.5), np.zeros(8, int), VAL_AGE + 30), None)
    res = fuse(corpus, select_on="val", runs_dir=runs, echo=quiet)
    assert res.chosen == {"emotion": ["A"], "country": ["B"], "age": ["C"]}
    assert res.test_written and (res.path / "test.csv").exists()
    assert bad is v["A"]


def test_fusion_runs_are_skipped_unless_named_and_rerun_replaces(setup):
    corpus, runs, *_ = setup
    first = fuse(corpus, select_on="val", runs_dir=runs, echo=quiet)
    lines = []
    again = fuse(corpus, select_on="val", runs_dir=runs, echo=lines.append)     # same default name: replaced, not stacked
    assert again.path == first.path and sorted(p.name for p in runs.iterdir()) == ["A", "B", "C", "hybrid"]
    text = "\n".join(lines)
    assert "skipped 1 fusion run(s) (hybrid)" in text and "replaced the earlier fusion run" in text
    named = fuse(corpus, runs_dir=runs, run_names=["hybrid", "A"], mode="mean", name="m2", echo=quiet)
    assert (named.path / "val.csv").exists()
    with pytest.raises(ValueError, match=r"runs/A exists and is not a fusion run \(kind='learn'\)"):
        fuse(corpus, select_on="val", runs_dir=runs, name="A", run_names=["B", "C"], echo=quiet)
    with pytest.raises(ValueError, match="top=3 applies to mode='hybrid' only"):
        fuse(corpus, runs_dir=runs, mode="mean", top=3, echo=quiet)


# ----------------------------------------------------------------------- selection bias
def test_speaker_halves_are_disjoint_deterministic_and_order_free():
    spk = np.array([f"S{k % 9}" for k in range(40)])
    a, b = speaker_halves(spk, seed=0)
    assert set(spk[a]).isdisjoint(spk[b]) and len(a) + len(b) == 40
    assert {len(set(spk[a])), len(set(spk[b]))} == {5, 4}
    perm = np.random.default_rng(0).permutation(40)
    a2, _ = speaker_halves(spk[perm], seed=0)
    assert set(spk[perm][a2]) == set(spk[a])
    assert any(set(spk[speaker_halves(spk, seed=s)[0]]) != set(spk[a]) for s in range(1, 6))
    with pytest.raises(ValueError, match="needs at least 2 Val speakers"):
        speaker_halves(["S1", "S1"])


def test_cv_selection_scores_on_the_other_half(tmp_path):
    """P is great on half A's ages and awful on half B's; Q is mediocre everywhere.

    Full Val picks Q for age (MAE 5 < 10.5), but choosing on half A picks P, which then
    scores 20 on half B; choosing on half B picks Q, which scores 5 on half A.
    """
    corpus = write_corpus(tmp_path / "data")
    half_a, half_b = speaker_halves(np.array(VAL_SPK), seed=0)
    off = np.zeros(8)
    off[half_a], off[half_b] = 1.0, 20.0
    runs = tmp_path / "runs"
    write_run(runs, "P", Predictions(VAL_IDS, VAL_EMO, VAL_COUNTRY, VAL_AGE + off, soft(VAL_COUNTRY, 0.9)), None)
    write_run(runs, "Q", Predictions(VAL_IDS, VAL_EMO / 2 + 0.25, np.zeros(8, int), VAL_AGE + 5), None)
    lines = []
    res = fuse(corpus, runs_dir=runs, select_on="cv", echo=lines.append)
    assert res.name == "hybrid_cv" and res.select_on == "cv"
    assert res.chosen["age"] == ["Q"]                     # the written predictions: chosen on all of Val
    rec = json.loads((res.path / "fusion.json").read_text())
    cv = rec["cv"]
    assert set(cv["speakers_a"]) == {VAL_SPK[i] for i in half_a}
    assert set(cv["speakers_a"]).isdisjoint(cv["speakers_b"])
    assert set(cv["speakers_a"]) | set(cv["speakers_b"]) == set(VAL_SPK)
    d1, d2 = cv["directions"]
    assert d1["chosen"]["age"] == ["P"] and d1["scores"]["mae"] == pytest.approx(20)
    assert d2["chosen"]["age"] == ["Q"] and d2["scores"]["mae"] == pytest.approx(5)
    # P's emotions are the truth: challenge CCC (n-1)/n = 3/4 on a 4-clip half
    assert d1["scores"]["ccc"] == pytest.approx(3 / 4) and d1["scores"]["uar"] == 1.0
    s1, s2 = 3 / (4 / 3 + 1 + 20), 3 / (4 / 3 + 1 + 5)
    assert cv["mean_of_halves"]["s_mtl"] == pytest.approx((s1 + s2) / 2)
    assert cv["std_of_halves"]["mae"] == pytest.approx(7.5)
    # reported: out of fold, half B's ages from P (+20), half A's from Q (+5); emotions and
    # country from P everywhere (truth) → CCC 7/8 and UAR 1 on all 8 clips
    met = json.loads((res.path / "metrics.json").read_text())
    assert met["summary"]["mae"]["mean"] == pytest.approx(12.5)
    assert met["summary"]["ccc"]["mean"] == pytest.approx(7 / 8) and met["summary"]["uar"]["mean"] == 1.0
    assert met["summary"]["s_mtl"]["mean"] == pytest.approx(3 / (8 / 7 + 1 + 12.5))
    assert met["ensemble"]["mae"] == pytest.approx(12.5)  # the seed ensemble, out of fold too
    assert met["full_val_ensemble"]["mae"] == pytest.approx(5)   # optimistic score of val.csv, kept apart
    assert met["selection"] == {"select_on": "cv", "optimistic": False, "note": rec["selection_note"]}
    text = "\n".join(lines)
    assert "--select-on cv" in text and "choose on A, score on B" in text
    assert "cv: out-of-fold over held-out halves of Val" in res.summary_line()
    assert not res.test_written                            # no run has test.csv


def test_cli_fuse_and_bad_mode(setup):
    from typer.testing import CliRunner

    from exvo.cli import app

    corpus, runs, *_ = setup
    r = CliRunner().invoke(app, ["fuse", "--hybrid", "--select-on", "val", "--data", str(corpus.root), "--runs", str(runs)])
    assert r.exit_code == 0, r.output
    assert "hybrid: Emo-CCC 0.875  Cou-UAR 1.000  Age-MAE 1.00  S_MTL 0.955" in r.output
    r = CliRunner().invoke(app, ["fuse", "--mean", "--data", str(corpus.root), "--runs", str(runs),
                                 "--select-on", "half"])
    assert r.exit_code == 2 and "select_on must be one of" in r.output


def test_cv_equals_the_val_score_when_the_same_runs_win_everywhere(setup):
    corpus, runs, *_ = setup
    res = fuse(corpus, runs_dir=runs, select_on="cv", echo=quiet)
    rec = json.loads((res.path / "fusion.json").read_text())
    for d in rec["cv"]["directions"]:
        assert d["chosen"] == {"emotion": ["A"], "country": ["B"], "age": ["C"]}
    for k in ("ccc", "uar", "mae", "s_mtl"):
        assert res.reported[k]["mean"] == pytest.approx(res.val[k])
    # whereas the mean of the half scores is not the full-Val score: CCC (n-1)/n with n = 4
    assert rec["cv"]["mean_of_halves"]["ccc"] == pytest.approx(3 / 4)


def test_mean_counts_a_run_without_probabilities_as_one_hot(setup):
    corpus, runs, v, _ = setup
    (runs / "C" / "val_country_proba.csv").unlink()
    lines = []
    res = fuse(corpus, runs_dir=runs, mode="mean", echo=lines.append)
    out = load_split(res.path, "Val")
    one_hot_c = np.eye(4)[v["C"].country]
    np.testing.assert_allclose(out.country_proba, (v["A"].country_proba + v["B"].country_proba + one_hot_c) / 3)
    assert "run(s) C have no country probabilities: their Country counts as one-hot" in "\n".join(lines)


# ----------------------------------------------------------------------- seed by seed
def write_seed_run(runs: Path, name: str, per_seed: list[Predictions], test: list[Predictions] | None = None,
                   seed_values: list[int] | None = None) -> Path:
    """A learn run with per_seed/val.npz (and test) whose val.csv is the seed average, as `exvo learn` writes."""
    from exvo.fusion.seeds import stack
    from exvo.predictions import save_seed_predictions

    seeds = seed_values or list(range(len(per_seed)))
    sp = stack(per_seed, seeds)
    d = write_run(runs, name, sp.ensemble(), None if test is None else stack(test, seeds).ensemble(), seeds=seeds)
    save_seed_predictions(sp, d, "Val")
    if test is not None:
        save_seed_predictions(stack(test, seeds), d, "Test")
    return d


def seeded(base: Predictions, age_offsets: list[float]) -> list[Predictions]:
    return [Predictions(base.ids, base.emotions, base.country, base.age + o, base.country_proba) for o in age_offsets]


def test_fusion_is_seed_by_seed_with_mean_and_std(tmp_path):
    """Age from C: C's seeds are truth+1 and truth+3 → fused seeds MAE 1 and 3 (mean 2, std 1); ensemble +2."""
    corpus = write_corpus(tmp_path / "data")
    runs = tmp_path / "runs"
    v, t = val_preds(), make_test_preds()
    offsets = {"A": [0, 2], "B": [0, 2], "C": [0, 2]}      # C's ages: truth + 1, truth + 3
    for n in "ABC":
        write_seed_run(runs, n, seeded(v[n], offsets[n]), seeded(t[n], offsets[n]), seed_values=[3, 4])
    lines = []
    res = fuse(corpus, select_on="val", runs_dir=runs, mode="hybrid", echo=lines.append)
    assert res.chosen == {"emotion": ["A"], "country": ["B"], "age": ["C"]} and res.n_seeds == 2
    met = json.loads((res.path / "metrics.json").read_text())
    assert [r["mae"] for r in met["per_seed"]] == pytest.approx([1, 3])
    assert met["summary"]["mae"] == pytest.approx({"mean": 2.0, "std": 1.0, "n": 2})
    assert met["ensemble"]["mae"] == pytest.approx(2.0)
    assert met["summary"]["ccc"]["mean"] == pytest.approx(7 / 8) and met["summary"]["ccc"]["std"] == pytest.approx(0)
    assert met["per_seed"][0]["sources"] == {"A": 3, "B": 3, "C": 3}
    s1, s3 = 3 / (8 / 7 + 1 + 1), 3 / (8 / 7 + 1 + 3)
    assert met["summary"]["s_mtl"]["mean"] == pytest.approx((s1 + s3) / 2)
    from exvo.predictions import load_seed_predictions

    for split, src in (("Val", v), ("Test", t)):
        sp = load_seed_predictions(res.path, split)
        assert sp is not None and sp.seeds == [0, 1]
        np.testing.assert_allclose(sp.age[1], src["C"].age + 2, atol=1e-9)       # seed index 1 of C
        np.testing.assert_allclose(sp.emotions[0], src["A"].emotions, atol=1e-6)
        np.testing.assert_allclose(sp.country_proba[1], src["B"].country_proba, atol=1e-6)
        out = load_split(res.path, split)                                          # val/test.csv = seed ensemble
        np.testing.assert_allclose(out.age, src["C"].age + 1, atol=1e-9)
    assert "S_MTL" in res.summary_line() and "± " in res.summary_line() and "2 fused seeds" in res.summary_line()

    # a fusion of fusions works the same way: it has per-seed files
    res2 = fuse(corpus, runs_dir=runs, run_names=["hybrid", "A"], mode="mean", name="mm", echo=quiet)
    assert res2.n_seeds == 2 and json.loads((res2.path / "metrics.json").read_text())["summary"]["mae"]["std"] is not None


def test_different_seed_counts_pair_by_index_up_to_the_smallest(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    runs = tmp_path / "runs"
    v = val_preds()
    write_seed_run(runs, "A", seeded(v["A"], [0, 2, 4]))     # ages truth + 10, 12, 14
    write_seed_run(runs, "B", seeded(v["B"], [0, 2]))        # ages truth + 5, 7
    lines = []
    res = fuse(corpus, runs_dir=runs, mode="mean", echo=lines.append)
    assert res.n_seeds == 2
    assert "seeds paired by index up to the smallest count (2): the extra seeds of A (3) are not used" in "\n".join(lines)
    # mean of A and B seed k: ages +7.5 and +9.5 (A's third seed, +14, unused)
    met = json.loads((res.path / "metrics.json").read_text())
    assert [r["mae"] for r in met["per_seed"]] == pytest.approx([7.5, 9.5])
    np.testing.assert_allclose(load_split(res.path, "Val").age, VAL_AGE + 8.5, atol=1e-9)


def test_undefined_s_mtl_seeds_are_not_averaged_in_as_zero(tmp_path):
    """Seed 1 of the only run predicts constant emotions (CCC 0): its S_MTL is undefined."""
    corpus = write_corpus(tmp_path / "data")
    runs = tmp_path / "runs"
    a = val_preds()["B"]
    flat = Predictions(a.ids, np.full((8, 10), 0.5), a.country, a.age, a.country_proba)
    write_seed_run(runs, "B", [a, flat])
    res = fuse(corpus, runs_dir=runs, mode="mean", echo=quiet)
    met = json.loads((res.path / "metrics.json").read_text())
    assert [r["s_mtl_defined"] for r in met["per_seed"]] == [True, False]
    assert met["summary"]["s_mtl"]["n"] == 1 and met["summary"]["s_mtl"]["std"] is None
    assert met["summary"]["s_mtl"]["mean"] == pytest.approx(met["per_seed"][0]["s_mtl"])
    assert met["summary"]["ccc"]["n"] == 2        # CCC itself is defined (0) for both seeds


def test_cv_fusion_is_out_of_fold_for_every_seed(tmp_path):
    """As test_cv_selection_scores_on_the_other_half, with 2 seeds (ages +0 / +2 more on seed 1).

    Full Val picks Q (ens. MAE 6 < 11.5); choosing on half A picks P, scored on B: 20 / 22;
    choosing on half B picks Q, scored on A: 5 / 7 → out-of-fold MAE per seed 12.5 / 14.5.
    """
    corpus = write_corpus(tmp_path / "data")
    half_a, half_b = speaker_halves(np.array(VAL_SPK), seed=0)
    off = np.zeros(8)
    off[half_a], off[half_b] = 1.0, 20.0
    runs = tmp_path / "runs"
    p = Predictions(VAL_IDS, VAL_EMO, VAL_COUNTRY, VAL_AGE + off, soft(VAL_COUNTRY, 0.9))
    q = Predictions(VAL_IDS, VAL_EMO / 2 + 0.25, np.zeros(8, int), VAL_AGE + 5, soft(np.zeros(8, int), 0.9))
    write_seed_run(runs, "P", seeded(p, [0, 2]))
    write_seed_run(runs, "Q", seeded(q, [0, 2]))
    res = fuse(corpus, runs_dir=runs, select_on="cv", echo=quiet)
    met = json.loads((res.path / "metrics.json").read_text())
    assert [r["mae"] for r in met["per_seed"]] == pytest.approx([12.5, 14.5])
    assert met["summary"]["mae"] == pytest.approx({"mean": 13.5, "std": 1.0, "n": 2})
    assert met["ensemble"]["mae"] == pytest.approx(13.5)              # ensemble, out of fold
    assert met["full_val_ensemble"]["mae"] == pytest.approx(6)        # optimistic, kept apart


def test_pool_takes_every_seed_of_runs_that_differ_only_in_the_cnn_seed(tmp_path):
    """CNN 0's learner seeds have age errors 1, 3; CNN 1's 5, 7 → pooled MAE 4 ± √5 over 4 seeds."""
    from exvo.fusion.pool import pool
    from exvo.predictions import load_seed_predictions

    corpus = write_corpus(tmp_path / "data")
    runs = tmp_path / "runs"
    v, t = val_preds(), make_test_preds()
    for k, offs in ((0, [-4, -2]), (1, [0, 2])):          # B's ages are truth + 5
        d = write_seed_run(runs, f"cr@{k}", seeded(v["B"], offs), seeded(t["B"], offs))
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "features": [f"raw_exvo_cr@{k}"], "preset": "default"}))
    lines: list[str] = []
    out = pool(corpus, runs, ["cr@0", "cr@1"], "cr_pooled", echo=lines.append)
    met = json.loads((out / "metrics.json").read_text())
    assert [r["mae"] for r in met["per_seed"]] == pytest.approx([1, 3, 5, 7])
    assert met["summary"]["mae"] == pytest.approx({"mean": 4.0, "std": 5 ** 0.5, "n": 4})
    assert met["ensemble"]["mae"] == pytest.approx(4.0) and not met["val_optimistic"]
    assert [r["sources"] for r in met["per_seed"]] == [{"cr@0": 0}, {"cr@0": 1}, {"cr@1": 0}, {"cr@1": 1}]
    sp = load_seed_predictions(out, "Test")
    assert sp.seeds == [0, 1, 2, 3]
    np.testing.assert_allclose(sp.age[3], t["B"].age + 2, atol=1e-9)
    np.testing.assert_allclose(load_split(out, "Test").age, t["B"].age - 1, atol=1e-9)
    assert "4 seeds" in lines[0] and "MAE 4.00±2.24" in lines[0]
    from exvo.fusion.report import make_report

    text = make_report(runs, tmp_path / "rep", corpus=corpus)
    row = {r["system"]: r for r in csv.DictReader((tmp_path / "rep" / "report.csv").open())}["cr_pooled"]
    assert (row["seeds"], row["learner"], row["features"]) == ("4", "pool", "pool of cr@0, cr@1")
    assert float(row["mae_std"]) == pytest.approx(5 ** 0.5) and "includes the task CNN's own seed variance" in text

    # like with like: another learner, or a fusion, is refused with the reason
    d = write_seed_run(runs, "xgb@2", seeded(v["B"], [0]), seeded(t["B"], [0]))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "features": ["raw_exvo_cr@2"], "preset": "default",
                                               "learner": "xgb"}))
    with pytest.raises(ValueError, match=r"differ in more than the layer of their features \(learner: 'mlp' vs 'xgb'\)"):
        pool(corpus, runs, ["cr@0", "xgb@2"], "bad", echo=quiet)
    with pytest.raises(ValueError, match="pooling takes learn runs only"):
        pool(corpus, runs, ["cr@0", "cr_pooled"], "bad", echo=quiet)
    with pytest.raises(ValueError, match="at least 2 runs"):
        pool(corpus, runs, ["cr@0"], "bad", echo=quiet)


def test_what_chose_each_subtask_is_printed_and_kept_with_the_seed_means(tmp_path):
    """Age: X's seeds are truth ± 4 (seed MAE 4, seed ensemble exact), Y's truth + 1 (MAE 1 both ways):
    the ensemble score chooses X; the output says so and that the seed means would choose Y."""
    corpus = write_corpus(tmp_path / "data")
    runs = tmp_path / "runs"
    v, t = val_preds(), make_test_preds()
    write_seed_run(runs, "A", seeded(v["A"], [0, 0]), seeded(t["A"], [0, 0]))
    write_seed_run(runs, "B", seeded(v["B"], [0, 0]), seeded(t["B"], [0, 0]))
    write_seed_run(runs, "X", seeded(v["C"], [3, -5]), seeded(t["C"], [3, -5]))     # C's ages are truth + 1
    write_seed_run(runs, "Y", seeded(v["C"], [0, 0]), seeded(t["C"], [0, 0]))
    lines = []
    res = fuse(corpus, select_on="val", runs_dir=runs, mode="hybrid", echo=lines.append)
    assert res.chosen["age"] == ["X"]
    text = "\n".join(lines)
    assert ("age: chosen on each candidate's Val MAE of its seed ensemble (the scores above); seed mean ± std of "
            "the same MAE: X 4.00 ± 0.00, Y 1.00 ± 0.00") in text
    assert "the seed means would choose Y instead (Y 1.00 vs X 4.00: a gap of 3.00, beyond one seed-std)" in text
    assert "emotion: chosen on each candidate's Val CCC of its seed ensemble" in text
    rec = json.loads((res.path / "fusion.json").read_text())
    assert any("would choose Y" in n for n in rec["subtasks"]["age"]["notes"])
    # a plain mean chooses nothing: nothing to explain
    res = fuse(corpus, runs_dir=runs, mode="mean", run_names=["A", "B"], echo=quiet)
    assert not any("chosen on each candidate" in n for n in res.notes)


def test_a_default_named_fusion_of_other_runs_is_refused_not_replaced(setup):
    corpus, runs, *_ = setup
    first = fuse(corpus, runs_dir=runs, run_names=["A", "B"], mode="mean", echo=quiet)
    assert first.path.name == "mean_2runs"
    before = (first.path / "val.csv").read_text()
    with pytest.raises(ValueError, match=r"mean_2runs is a fusion of other runs \(A, B\); this one fuses A, C\. "
                                         r"Pass --name NEW to keep both"):
        fuse(corpus, runs_dir=runs, run_names=["A", "C"], mode="mean", echo=quiet)
    assert (first.path / "val.csv").read_text() == before            # the first fusion is kept
    again = fuse(corpus, runs_dir=runs, run_names=["B", "A"], mode="mean", echo=quiet)   # the same runs: re-made
    assert again.path == first.path
