"""The linear-time rewrites of issue 28 give the outputs of the code they replaced.

Each test runs the old quadratic form (written out here, as it was) and the new function on
the same inputs and asserts equal results; speed is measured in benchmarks/bench_scale.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from exvo.tables import repeated
from exvo.metrics import speaker_bootstrap
from exvo.splits import holdout_split, speaker_countries, speaker_rows


def _speakers(n=300, s=23, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([f"Speaker_{k}" for k in rng.integers(0, s, n)])


def test_repeated_known_answer_and_old_form():
    items = ["b", "a", "c", "a", "b", "a", "d"]
    assert repeated(items) == ["a", "b"]
    assert repeated([]) == [] and repeated(["x", "y"]) == []
    rng = np.random.default_rng(1)
    ids = [f"[{k:05d}]" for k in rng.integers(0, 400, 500)]
    assert repeated(ids) == sorted({i for i in ids if ids.count(i) > 1})      # the old form


def test_speaker_rows_matches_masks():
    spk = _speakers()
    uniq, rows = speaker_rows(spk)
    assert list(uniq) == sorted(set(spk.tolist()))
    for s, r in zip(uniq, rows):
        np.testing.assert_array_equal(r, np.flatnonzero(spk == s))           # ascending, exactly its rows
    assert sum(r.size for r in rows) == spk.size
    u, r = speaker_rows(np.array(["only"] * 3))
    assert list(u) == ["only"] and r[0].tolist() == [0, 1, 2]


def test_speaker_countries_matches_old_form():
    spk = _speakers(seed=2)
    country = np.random.default_rng(3).integers(-1, 4, spk.size)      # -1: unknown
    country[spk == spk[0]] = -1                                       # a speaker with no known country
    old = {}
    for s in np.unique(spk):
        c = country[spk == s]
        c = c[c >= 0]
        old[str(s)] = int(np.bincount(c).argmax()) if c.size else -1
    assert speaker_countries(spk, country) == old
    assert old[str(spk[0])] == -1


def test_holdout_split_unchanged_by_grouping():
    spk = _speakers(seed=4)
    country = np.array([int(s.split("_")[1]) % 4 for s in spk])
    rows = np.arange(spk.size) + 1000
    fit, held = holdout_split(rows, spk, country, frac=0.2, seed=7)
    assert np.intersect1d(fit, held).size == 0 and fit.size + held.size == rows.size
    held_spk = set(spk[held - 1000].tolist())
    assert held_spk.isdisjoint(spk[fit - 1000].tolist())
    # a country's speakers: round(0.2 x n) held out (at least one), as the docstring says
    sc = speaker_countries(spk, country)
    for c in set(sc.values()):
        group = [s for s, v in sc.items() if v == c]
        assert len(held_spk & set(group)) == min(len(group) - 1, max(1, round(0.2 * len(group))))


def _old_bootstrap(emo_t, emo_p, cou_t, cou_p, age_t, age_p, speakers, resamples, level=0.95, seed=0):
    import warnings

    from exvo.metrics import score_all

    uniq, inv = np.unique(np.asarray(speakers), return_inverse=True)
    members = [np.flatnonzero(inv == i) for i in range(uniq.size)]
    rng = np.random.default_rng(seed)
    vals = {k: [] for k in ("ccc", "uar", "mae", "s_mtl")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(resamples):
            idx = np.concatenate([members[i] for i in rng.integers(0, uniq.size, uniq.size)])
            s = score_all(emo_t[idx], emo_p[idx], cou_t[idx], cou_p[idx], age_t[idx], age_p[idx], "population")
            for k in vals:
                vals[k].append(s[k])
    q = (1.0 - level) / 2
    return {k: (float(np.quantile(v, q)), float(np.quantile(v, 1 - q))) for k, v in vals.items()}


def test_speaker_bootstrap_same_intervals_as_old_form():
    rng = np.random.default_rng(5)
    spk = _speakers(n=200, s=17, seed=6)
    n = spk.size
    emo_t, emo_p = rng.random((n, 10)), rng.random((n, 10))
    cou_t, cou_p = rng.integers(0, 4, n), rng.integers(0, 4, n)
    age_t, age_p = rng.uniform(18, 60, n), rng.uniform(18, 60, n)
    new = speaker_bootstrap(emo_t, emo_p, cou_t, cou_p, age_t, age_p, spk, resamples=40, seed=3)
    old = _old_bootstrap(emo_t, emo_p, cou_t, cou_p, age_t, age_p, spk, resamples=40, seed=3)
    assert new == old


@pytest.mark.parametrize("where", ["submission", "proba"])
def test_duplicate_ids_named_in_prediction_files(tmp_path, where):
    from exvo.metrics import COUNTRIES, EMOTIONS
    from exvo.predictions import SUBMISSION_COLUMNS, PredictionError, Predictions, read_proba

    ids = [f"[{k:05d}]" for k in range(6)] + ["[00002]", "[00004]"]
    sub = tmp_path / "val.csv"
    with open(sub, "w") as f:
        f.write(",".join(SUBMISSION_COLUMNS) + "\n")
        rows = ids if where == "submission" else ids[:6]
        for i in rows:
            f.write(",".join([i, "1", "30.0"] + ["0.5"] * len(EMOTIONS)) + "\n")
    if where == "submission":
        with pytest.raises(PredictionError, match=r"duplicate File_ID\(s\): \[00002\], \[00004\]$"):
            Predictions.read(sub)
        return
    proba = tmp_path / "val_country_proba.csv"
    with open(proba, "w") as f:
        f.write(",".join(["File_ID", *COUNTRIES]) + "\n")
        for i in ids:
            f.write(",".join([i] + ["0.25"] * 4) + "\n")
    with pytest.raises(PredictionError, match=r"duplicate File_ID\(s\): \[00002\], \[00004\]$"):
        read_proba(proba, ids[:6], sub)


def test_proba_ids_missing_and_extra_named(tmp_path):
    from exvo.metrics import COUNTRIES
    from exvo.predictions import PredictionError, read_proba

    proba = tmp_path / "p.csv"
    with open(proba, "w") as f:
        f.write(",".join(["File_ID", *COUNTRIES]) + "\n")
        for i in ["a", "b", "x"]:
            f.write(",".join([i] + ["0.25"] * 4) + "\n")
    with pytest.raises(PredictionError, match=r"1 missing \[c\], 1 extra \[x\]"):
        read_proba(proba, ["a", "b", "c"], "sub.csv")
