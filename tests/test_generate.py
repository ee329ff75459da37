"""ExVo-Generate evaluation (exvo.generate): FID, bins, HEEP, S_GEN, the Train-vs-Val table, the CLI.

Known answers are computed by hand in the comments; the CLI tests run on a tiny demo
corpus with the fast hand-checkable ``_test_rms`` extractor (6 dims) so covariances are
full rank with a handful of clips.
"""
from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import fault_extractor as fx  # noqa: F401  (registers _test_rms)

from exvo.config import build
from exvo.generate import heep as H
from exvo.generate.bins import bin_mask, emotion_bin
from exvo.generate.fid import (FIDError, SmallSampleWarning, fid, frechet_distance, gaussian_stats, sqrt_psd)
from exvo.metrics import EMOTIONS


def _with_moments(rng, n: int, mean, cov) -> np.ndarray:
    """``n`` samples whose empirical mean and covariance (ddof 1) are exactly ``mean``, ``cov``."""
    Z = rng.standard_normal((n, len(mean)))
    Z -= Z.mean(0)
    L0 = np.linalg.cholesky(Z.T @ Z / (n - 1))
    W = Z @ np.linalg.inv(L0).T                     # empirical covariance = I
    return W @ np.linalg.cholesky(np.asarray(cov, float)).T + np.asarray(mean, float)


# ----------------------------------------------------------------------------- FID
def test_fid_of_a_set_against_itself_is_zero_also_when_singular():
    rng = np.random.default_rng(0)
    for n, d in ((200, 5), (7, 30)):            # full rank, and fewer clips than dims
        X = rng.standard_normal((n, d)) * rng.uniform(0.1, 50, d) + rng.uniform(-5, 5, d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSampleWarning)
            v = fid(X, X)
        assert v == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(X.T)))


def test_fid_equals_the_closed_form_on_2d_gaussians():
    rng = np.random.default_rng(1)
    # non-commuting covariances: Tr sqrt(A) of a 2x2 PSD A is sqrt(tr A + 2 sqrt(det A)), and
    # det(C1 C2) = det C1 det C2. C1 = [[2,1],[1,2]], C2 = diag(1,4): tr(C1 C2) = 2 + 8 = 10,
    # det C1 = 3, det C2 = 4; ‖μ1 − μ2‖² = 1 + 4 = 5; tr C1 + tr C2 = 4 + 5 = 9
    expected = 5 + 9 - 2 * math.sqrt(10 + 2 * math.sqrt(12))         # = 14 − 2·sqrt(16.9282) = 5.771220
    assert expected == pytest.approx(5.771220, abs=1e-6)
    X = _with_moments(rng, 50, [0, 0], [[2, 1], [1, 2]])
    Y = _with_moments(rng, 80, [1, 2], [[1, 0], [0, 4]])
    assert fid(X, Y) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance([0, 0], [[2, 1], [1, 2]], [1, 2], [[1, 0], [0, 4]]) == pytest.approx(expected, rel=1e-12)
    # commuting (diagonal) covariances, equal means: Σ (sqrt a_i − sqrt b_i)² = (2−1)² + (3−1)² = 5
    assert frechet_distance([3, 3], np.diag([4.0, 9.0]), [3, 3], np.eye(2)) == pytest.approx(5.0, rel=1e-12)


def test_fid_is_symmetric():
    rng = np.random.default_rng(2)
    cases = [(rng.standard_normal((40, 6)) * 3, rng.standard_normal((25, 6)) + 1),
             (rng.standard_normal((4, 6)), rng.standard_normal((5, 6)) * 2)]    # both singular
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        for X, Y in cases:
            a, b = fid(X, Y), fid(Y, X)
            assert a > 0
            assert a == pytest.approx(b, rel=1e-9)


def test_sqrt_psd_squares_back_and_fid_guards():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 3))
    C = A @ A.T                                   # rank 3 of 6
    S = sqrt_psd(C)
    np.testing.assert_allclose(S @ S, C, atol=1e-10 * np.abs(C).max())
    np.testing.assert_allclose(S, S.T)
    with pytest.warns(SmallSampleWarning, match="3 clips but the embeddings have 4 dimensions"):
        fid(rng.standard_normal((3, 4)), rng.standard_normal((10, 4)))
    with pytest.raises(FIDError, match="at least 2 clips, got 1"):
        gaussian_stats(np.ones((1, 3)))
    with pytest.raises(FIDError, match="3 dims but real have 4"):
        fid(rng.standard_normal((9, 3)), rng.standard_normal((9, 4)))
    with pytest.raises(FIDError, match="non-finite"):
        gaussian_stats(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))


# ----------------------------------------------------------------------------- bins
def test_bins_one_and_argmax():
    E = np.zeros((4, 10))
    a, s = EMOTIONS.index("Amusement"), EMOTIONS.index("Sadness")
    E[0, a] = 1.0
    E[1, a], E[1, s] = 0.9999999, 1.0     # both count as 1 (CSV round-off), tie at the top
    E[2, a], E[2, s] = 0.6, 0.4           # strongest is Amusement but it is not 1
    E[3, s] = 0.3
    assert bin_mask(E, "amusement", "one").tolist() == [True, True, False, False]
    assert bin_mask(E, "Amusement", "argmax").tolist() == [True, False, True, False]
    assert bin_mask(E, "Sadness", "argmax").tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="unknown emotion 'Joy'"):
        bin_mask(E, "Joy")


# ----------------------------------------------------------------------------- HEEP, S_GEN
def test_heep_hand_computed():
    T = np.zeros((1, 10)); T[0, 0] = 1
    Hm = np.zeros((1, 10)); Hm[0, 0] = Hm[0, 9] = 1
    # t = [1, 0×9], h = [1, 0×8, 1]: means .1 and .2; Σ(t−.1)(h−.2) = .72 + 8(.02) − .08 = .8,
    # Σ(t−.1)² = .81 + 9(.01) = .9, Σ(h−.2)² = 2(.64) + 8(.04) = 1.6 → .8 / sqrt(1.44) = 2/3
    assert H.heep(T, Hm) == pytest.approx(2 / 3, rel=1e-12)
    assert H.heep(T, 100 * Hm + 1) == pytest.approx(2 / 3, rel=1e-12)   # one common rescaling: same
    assert H.heep(T, -Hm) == pytest.approx(-2 / 3, rel=1e-12)
    with pytest.raises(H.RatingsError, match="ratings are constant"):
        H.heep(T, np.full((1, 10), 0.5))


def test_s_gen_reproduces_table_3_of_the_paper():
    # paper 002, Table 3 (lower part): baseline FID and HEEP per emotion; Triumph not targeted
    fids = dict(Amusement=4.92, Awe=4.81, Awkwardness=8.27, Distress=6.11, Excitement=6.00, Fear=5.71,
                Horror=5.64, Sadness=5.00, Surprise=6.08)
    heeps = dict(Amusement=0.49, Awe=0.46, Awkwardness=0.036, Distress=0.32, Excitement=0.084, Fear=0.042,
                 Horror=0.27, Sadness=-0.033, Surprise=0.22)
    table = dict(Amusement=0.347, Awe=0.334, Awkwardness=0.078, Distress=0.242, Excitement=0.125, Fear=0.109,
                 Horror=0.224, Sadness=0.084, Surprise=0.192)
    per, overall = H.s_gen_scores(fids, heeps)
    assert set(per) == set(table)
    for e, v in table.items():
        assert per[e] == pytest.approx(v, abs=6e-4), e          # the paper rounds to 3 decimals
    assert per["Amusement"] == pytest.approx((1 / 4.92 + 0.49) / 2, rel=1e-12)
    assert overall == pytest.approx(0.174, abs=6e-4)             # "baseline ... 0.174 S_Gen"
    assert H.s_gen(4.0, 0.5) == 0.375
    with pytest.raises(H.RatingsError, match="FID > 0"):
        H.s_gen(0.0, 0.5)


def test_ratings_targets_from_names_or_manifest(tmp_path):
    assert H.target_from_name("out/amusement_0007.wav") == "Amusement"
    assert H.target_from_name("[gen-Awe-12]") == "Awe"
    for bad, msg in (("clip_01", "no emotion name"), ("fear_and_horror_1", "several emotion names")):
        with pytest.raises(H.RatingsError, match=msg):
            H.target_from_name(bad)
    header = "File_ID," + ",".join(EMOTIONS)
    rows = {"amusement_0.wav": [0.0] * 10, "[fear_3]": [0.0] * 10, "awe_1": [0.0] * 10}
    rows["amusement_0.wav"][EMOTIONS.index("Amusement")] = 0.9
    rows["amusement_0.wav"][EMOTIONS.index("Awe")] = 0.3
    rows["[fear_3]"][EMOTIONS.index("Fear")] = 0.6
    rows["awe_1"][EMOTIONS.index("Amusement")] = 0.8          # rated as amusement, targeted awe
    p = tmp_path / "ratings.csv"
    p.write_text(header + "\n" + "\n".join(f"{k}," + ",".join(map(str, v)) for k, v in rows.items()) + "\n")
    keys, R = H.read_ratings(p)
    assert keys == ["amusement_0", "fear_3", "awe_1"]
    T = H.target_matrix(keys)
    assert T.sum() == 3 and T[2, EMOTIONS.index("Awe")] == 1
    res = H.heep_scores(T, R)
    assert res.n_clips == {"Awe": 1, "Amusement": 1, "Fear": 1}
    assert res.overall == pytest.approx(H.heep(T, R))
    # Amusement row alone: t = e_amu, h has .9 at amu and .3 at awe: mean t .1, mean h .12;
    # cov = .9·.78 + (−.1)(.18) + 8(−.1)(−.12) = .702 − .018 + .096 = .78; var t = .9;
    # var h = .78² + .18² + 8(.0144) = .6084 + .0324 + .1152 = .756 → .78 / sqrt(.9 · .756)
    assert res.per_emotion["Amusement"] == pytest.approx(0.78 / math.sqrt(0.9 * 0.756), rel=1e-12)
    m = tmp_path / "manifest.csv"
    m.write_text("File_ID,Target\namusement_0.wav,Amusement\nfear_3,Fear;Horror\nawe_1,amusement\n")
    Tm = H.target_matrix(keys, H.read_manifest(m))
    assert Tm[1, EMOTIONS.index("Horror")] == 1 and Tm[2, EMOTIONS.index("Amusement")] == 1
    (tmp_path / "bad.csv").write_text("File_ID,Awe\nx,1\n")
    with pytest.raises(H.RatingsError, match=r"lacks column\(s\) \['Excitement'"):
        H.read_ratings(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text(header + "\nawe_1," + ",".join(["0"] * 10) + "\n[awe_1]," + ",".join(["0"] * 10) + "\n")
    with pytest.raises(H.RatingsError, match=r"clip rated twice: awe_1 \(lines 2 and 3\)"):
        H.read_ratings(tmp_path / "dup.csv")


# ----------------------------------------------------------------------------- CLI end to end
@pytest.fixture(scope="module")
def gen_env(tmp_path_factory):
    """A 12-speaker × 8-clip demo corpus cached with the 6-dim ``_test_rms`` extractor."""
    from exvo.corpus import Corpus
    from exvo.demo import make_demo_corpus
    from exvo.extract.run import extract

    root = tmp_path_factory.mktemp("gen")
    data = make_demo_corpus(root / "gdemo", speakers=12, clips_per_speaker=8, seed=5, progress=False)
    corpus = Corpus.from_dir(data)
    extract(corpus, fx.NAME, root / "cache", progress=False)
    return corpus, root


def _copy_bin(corpus, split, emotion, dst):
    dst.mkdir(parents=True, exist_ok=True)
    ids = emotion_bin(corpus, split, emotion, "argmax")
    for k, i in enumerate(ids):
        shutil.copy(corpus.audio_path(i), dst / f"{emotion.lower()}_{k:03d}.wav")
    return ids


def _cli(*args):
    from exvo.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def test_cli_fid_and_table_end_to_end(gen_env, tmp_path):
    corpus, root = gen_env
    common = ["--features", fx.NAME, "--bin", "argmax", "--data", corpus.root, "--cache", root / "cache"]
    counts = {e: len(emotion_bin(corpus, "Val", e, "argmax")) for e in EMOTIONS}
    emo = max(counts, key=counts.get)
    assert counts[emo] >= 4, counts
    gen = tmp_path / "gen"
    _copy_bin(corpus, "Val", emo, gen)
    # copies of the Val bin, measured against the Val bin: the same set, FID 0
    r = _cli("fid", gen, "--emotion", emo, "--against", "Val", *common, "--save", tmp_path / "fids.csv")
    assert r.exit_code == 0, r.output
    m = __import__("re").search(rf"FID {emo}: (\S+) — {counts[emo]} generated vs {counts[emo]} Val clips", r.output)
    assert m and abs(float(m.group(1))) < 1e-9, r.output
    # against Train it equals the table's diagonal cell (direct embedding == the cache)
    r = _cli("fid", gen, "--emotion", emo, *common, "--save", tmp_path / "fids.csv")
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "fids.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{emo},")       # the second run replaced the first row
    fid_train = float(rows[1].split(",")[1])
    r = _cli("fid", "--table", *common, "--runs", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    rec = json.loads(next((tmp_path / "runs" / "fid").glob("train_vs_val_*.json")).read_text())
    k = EMOTIONS.index(emo)
    assert rec["fid_mean"][k][k] == pytest.approx(fid_train, rel=1e-6)
    assert rec["n_val"][emo] == counts[emo]
    assert (tmp_path / "runs" / "fid" / f"train_vs_val_{fx.NAME}_argmax.png").stat().st_size > 0
    csv_lines = (tmp_path / "runs" / "fid" / f"train_vs_val_{fx.NAME}_argmax.csv").read_text().splitlines()
    assert csv_lines[0].startswith("Train \\ Val,Awe,") and csv_lines[-1].startswith("n_val,")
    # the report hook redraws it
    from exvo.generate.table import report_figures

    made, notes = report_figures(tmp_path / "runs", tmp_path / "rep")
    assert [p.name for _, p in made] == [f"train_vs_val_{fx.NAME}_argmax.png"]
    assert [n.split(" bins")[0] for n in notes] == [f"train_vs_val_{fx.NAME}_argmax: Small samples: 13 of 15"]  # 2-5 clips < 6 dims
    # an unreadable generated clip is left out with a warning; the others give the same FID
    (gen / "zz_broken.wav").write_bytes(b"")
    r = _cli("fid", gen, "--emotion", emo, *common)
    assert r.exit_code == 0, r.output
    assert "1 generated clip(s) left out: zz_broken (file is empty" in r.output, r.output
    assert f"FID {emo}: {fid_train:.4g} — {counts[emo]} generated" in r.output, r.output
    # errors: no space, empty bin under the paper's rule
    r = _cli("fid", gen, "--emotion", emo, "--data", corpus.root, "--cache", root / "cache")
    assert r.exit_code == 2 and "exactly one of --features" in r.output
    r = _cli("fid", gen, "--emotion", "Triumph", "--features", fx.NAME, "--data", corpus.root, "--cache", root / "cache")
    assert r.exit_code == 2 and "Try --bin argmax" in r.output, r.output


def test_cli_heep_and_s_gen(tmp_path):
    header = "File_ID," + ",".join(EMOTIONS)
    a, w = EMOTIONS.index("Amusement"), EMOTIONS.index("Awe")
    r1 = ["0"] * 10; r1[a] = "1"
    r2 = ["0"] * 10; r2[w] = "1"; r2[a] = "1"
    (tmp_path / "r.csv").write_text(f"{header}\namusement_1,{','.join(r1)}\nawe_1,{','.join(r2)}\n")
    r = _cli("heep", tmp_path / "r.csv", "--fid", "Amusement=4", "--fid", "awe=2")
    assert r.exit_code == 0, r.output
    # Amusement row: h = t → HEEP 1; S_GEN (1/4 + 1)/2 = .625
    assert "Amusement    HEEP +1.0000 (1 clips)  S_GEN 0.6250" in r.output, r.output
    # Awe row: t = e_awe, h = e_awe + e_amu → 2/3 (as in test_heep_hand_computed); S_GEN (1/2 + 2/3)/2
    assert f"S_GEN {(0.5 + 2 / 3) / 2:.4f}" in r.output
    assert f"{(0.625 + (0.5 + 2 / 3) / 2) / 10:.4f}" in r.output          # mean over all 10 emotions
    r = _cli("heep", tmp_path / "r.csv", "--fid", "Amusement")
    assert r.exit_code == 2 and "expected EMOTION=VALUE" in r.output


def test_cli_fid_in_a_learn_runs_shared_layer(gen_env, tmp_path):
    from exvo.config import build
    from exvo.learn.api import learn
    from exvo.learn.config import LearnConfig
    corpus, root = gen_env
    learn(corpus, build(LearnConfig, features=[fx.NAME], seeds=2, epochs=1, device="cpu"), cache_dir=root / "cache",
          runs_dir=tmp_path / "runs", name="clf", echo=lambda m: None)
    counts = {e: len(emotion_bin(corpus, "Val", e, "argmax")) for e in EMOTIONS}
    emo = max(counts, key=counts.get)
    gen = tmp_path / "gen"
    _copy_bin(corpus, "Val", emo, gen)
    common = ["--classifier", tmp_path / "runs" / "clf", "--bin", "argmax", "--data", corpus.root,
              "--cache", root / "cache"]
    r = _cli("fid", gen, "--emotion", emo, "--against", "Val", *common)
    assert r.exit_code == 0, r.output
    # the same clips in each seed's space: 0 for both seeds
    import re
    m = re.search(rf"FID {emo}: (\S+) ± (\S+) \(mean ± std over 2 seeds\)", r.output)
    assert m and abs(float(m[1])) < 1e-9 and abs(float(m[2])) < 1e-9, r.output
    assert "last shared layer (128 dims) of clf" in r.output
    r = _cli("fid", gen, "--emotion", emo, "--against", "Train", *common)
    assert r.exit_code == 0 and "mean ± std over 2 seeds" in r.output, r.output
    r = _cli("fid", "--table", *common, "--runs", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "runs" / "fid" / "train_vs_val_clf_argmax.json").read_text())
    assert rec["views"] == 2 and rec["space"].startswith("last shared layer")


def test_small_bins_carry_the_singular_covariance_caveat_on_the_figure_and_in_the_report(tmp_path):
    from exvo.generate.table import heat_map, report_figures, small_sample_caveat

    n_train = {e: 5 + 10 * k for k, e in enumerate(EMOTIONS)}       # 5 … 95 clips
    n_val = {e: 64 for e in EMOTIONS}
    rec = {"format": "exvo-fid-table/1", "emotions": list(EMOTIONS), "fid_mean": np.eye(10).tolist(),
           "fid_std": np.zeros((10, 10)).tolist(), "views": 1, "n_train": n_train, "n_val": n_val,
           "space": "egemaps (88 dims, standardised)", "bin_rule": "argmax", "dim": 88, "notes": []}
    caveat = small_sample_caveat(rec)
    assert caveat.startswith("Small samples: 19 of 20 bins hold fewer clips (5–85) than the 88 embedding dimensions, "
                             "so their covariance is singular and their FID is biased upwards")
    assert small_sample_caveat(rec | {"dim": 4}) is None
    assert heat_map(rec, tmp_path / "h.png").stat().st_size > 0
    (tmp_path / "runs" / "fid").mkdir(parents=True)
    (tmp_path / "runs" / "fid" / "train_vs_val_egemaps_argmax.json").write_text(json.dumps(rec))
    made, notes = report_figures(tmp_path / "runs", tmp_path / "rep")
    assert len(made) == 1 and notes == [f"train_vs_val_egemaps_argmax: {caveat}"]


def test_classifier_space_refuses_a_multi_layer_run_with_the_fix(tmp_path):
    import json

    from exvo.generate.classifier import ClassifierError, ClassifierSpace

    run = tmp_path / "wavlm_all"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "learn", "learner": "mlp", "features": [
        {"spec": "wavlm@0-4", "name": "wavlm", "layer": None, "layers": [0, 1, 2, 3, 4], "dim": 8}]}))
    with pytest.raises(ClassifierError, match=r"wavlm_all was trained on several layers of one cache \(wavlm@0-4\); "
                                              r"fid --classifier embeds each feature set at one layer"):
        ClassifierSpace(run, corpus=None, cache_dir=tmp_path)
