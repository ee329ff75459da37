"""Known answers for the ExVo metrics, computed by hand in the comments."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import recall_score

from exvo import metrics as M

# y = [1,2,3,4], p = [2,2,3,5]
# means 2.5 and 3; deviations dt = [-1.5,-.5,.5,1.5], dp = [-1,-1,0,2]
# sum(dt*dp) = 5 -> cov(1/n) = 1.25 ; sum(dt^2) = 5 ; sum(dp^2) = 6 ; (mt-mp)^2 = .25
Y, P = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 3.0, 5.0]


def test_ccc_population_known_answer():
    # 2*1.25 / (5/4 + 6/4 + .25) = 2.5 / 3
    assert M.ccc(Y, P, "population") == pytest.approx(5 / 6, abs=1e-12)


def test_ccc_challenge_known_answer():
    # 2*1.25 / (5/3 + 6/3 + .25) = 2.5 / (47/12) = 30/47
    assert M.ccc(Y, P, "challenge") == pytest.approx(30 / 47, abs=1e-12)
    assert M.ccc(Y, P) == M.ccc(Y, P, "challenge"), "challenge must be the default convention"


def test_two_conventions_on_same_data():
    rng = np.random.default_rng(0)
    t = rng.random(50)
    p = t + 0.1 * rng.standard_normal(50)
    pop, cha = M.ccc(t, p, "population"), M.ccc(t, p, "challenge")
    # same covariance, larger denominators (n-1) in the challenge form -> strictly smaller
    assert cha < pop
    # perfect prediction: population = 1 exactly, challenge = (n-1)/n
    assert M.ccc(t, t, "population") == pytest.approx(1.0, abs=1e-12)
    assert M.ccc(t, t, "challenge") == pytest.approx(49 / 50, abs=1e-12)


def test_ccc_matches_an_independent_formula():
    rng = np.random.default_rng(1)
    t, p = rng.random(30), rng.random(30)
    cov = np.cov(t, p, bias=True)[0, 1]
    expected = 2 * cov / (t.var(ddof=1) + p.var(ddof=1) + (t.mean() - p.mean()) ** 2)
    assert M.ccc(t, p) == pytest.approx(expected, rel=1e-12)


def test_ccc_constant_prediction_does_not_crash():
    assert M.ccc([1, 2, 3], [0.5, 0.5, 0.5]) == 0.0  # covariance is zero
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert M.ccc([2, 2, 2], [2, 2, 2]) == 0.0


def test_ccc_rejects_bad_input():
    with pytest.raises(ValueError, match="must match"):
        M.ccc([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        M.ccc([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="unknown CCC convention"):
        M.ccc([1, 2], [1, 2], "pearson")


def test_uar_known_answer_and_sklearn():
    # recalls: class 0 -> 1/2, class 1 -> 2/2, class 2 -> 1/2 ; mean 2/3
    assert M.uar([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]) == pytest.approx(2 / 3)
    rng = np.random.default_rng(2)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert M.uar(t, p) == pytest.approx(recall_score(t, p, average="macro"))
    # a class only in the predictions counts with recall 0 (as sklearn / the official code)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert M.uar([0, 0, 1], [0, 3, 1]) == pytest.approx(recall_score([0, 0, 1], [0, 3, 1], average="macro"))


def test_mae_known_answer():
    assert M.mae([20, 30], [22, 27]) == pytest.approx(2.5)


def test_s_mtl_known_answer_and_undefined():
    # 3 / (1/.5 + 1/.5 + 4) = 3/8
    assert M.s_mtl(0.5, 0.5, 4.0) == pytest.approx(0.375)
    # perfect system: 3 / (1 + 1 + 0)
    assert M.s_mtl(1.0, 1.0, 0.0) == pytest.approx(1.5)
    with pytest.warns(RuntimeWarning, match="S_MTL undefined"):
        assert M.s_mtl(-0.1, 0.5, 4.0) == 0.0
    with pytest.warns(RuntimeWarning, match="S_MTL undefined"):
        assert M.s_mtl(0.0, 0.5, 4.0) == 0.0


def test_mean_ccc_and_score_all():
    rng = np.random.default_rng(3)
    t = rng.random((40, 10))
    p = np.clip(t + 0.2 * rng.standard_normal((40, 10)), 0, 1)
    m, per = M.mean_ccc(t, p)
    assert per[3] == pytest.approx(M.ccc(t[:, 3], p[:, 3]))
    assert m == pytest.approx(np.mean(per))
    out = M.score_all(t, p, [0, 1, 2, 3] * 10, [0, 1, 2, 3] * 10, np.arange(40.0), np.arange(40.0) + 2)
    assert out["uar"] == 1.0 and out["mae"] == pytest.approx(2.0)
    assert list(out["ccc_per_emotion"]) == list(M.EMOTIONS)
    assert out["s_mtl"] == pytest.approx(3 / (1 / m + 1 + 2))
    with pytest.raises(ValueError, match="equal shape"):
        M.mean_ccc(t, p[:, :5])
