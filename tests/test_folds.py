"""K speaker folds (``--stop-on folds``): the folds, the stacked seeds × folds training, the
out-of-fold (OOF) predictions and what Val labels may not change."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exvo.cli import app
from exvo.config import SelectionConfig, TrainConfig, build
from exvo.learn import folds as F
from exvo.learn import registry
from exvo.learn.multitask import LossConfig
from exvo.learn.selection import selection_folds
from exvo.predictions import load_seed_predictions
from test_contracts import _arrays, _with_labels, quick_config
from test_learn import make_corpus, write_cache

SEEDS = [0, 1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """16 speakers × 8 clips (Train 8 speakers), 8-dim features (4 informative)."""
    tmp = tmp_path_factory.mktemp("folds")
    corpus, z = make_corpus(tmp / "corp", seed=3, n_spk=16, per_spk=8)
    rng = np.random.default_rng(2)
    write_cache(tmp / "cache", corpus, "lin", np.concatenate([z * 3.0, rng.normal(size=(len(corpus), 4))], 1)[:, None])
    write_cache(tmp / "cache", corpus, "noise", rng.normal(size=(len(corpus), 1, 6)))
    fm, t = _arrays({"corpus": corpus, "cache": tmp / "cache"})
    sel = SelectionConfig(on="folds", k=4)
    return {"corpus": corpus, "tmp": tmp, "fm": fm, "t": t, "sel": sel,
            "folds": selection_folds(corpus, fm.ids, fm.rows, sel)}


def _data(w, targets=None, folds=None, seeds=SEEDS):
    return registry.FitData(w["fm"].X, targets or w["t"], w["fm"].rows["Train"], w["fm"].rows["Train"], list(seeds),
                            TrainConfig(epochs=3, patience=3, batch_size=8), LossConfig(), w["sel"], device="cpu",
                            threads=1, echo=lambda m: None, folds=folds)


def test_folds_are_speaker_disjoint_and_hold_every_train_clip_once(world):
    train, spk = world["fm"].rows["Train"], world["corpus"].speakers
    pos = {i: k for k, i in enumerate(world["corpus"].ids)}
    speaker = np.array([spk[pos[i]] for i in world["fm"].ids])
    held_all = []
    for fit, held in world["folds"]:
        assert not set(speaker[fit]) & set(speaker[held])          # no fold is scored on a speaker it trains on
        assert set(fit) | set(held) == set(train) and not set(fit) & set(held)
        held_all += list(held)
    assert sorted(held_all) == sorted(train)                          # every Train clip held out exactly once
    assert np.array_equal(np.bincount(F.fold_of(train, world["folds"])), [len(h) for _, h in world["folds"]])


def test_too_few_speakers_for_the_folds_names_the_fix(world):
    fm = world["fm"]
    with pytest.raises(ValueError, match=r"--folds 9: Train has 8 speaker\(s\), too few for 9 speaker folds; "
                                         r"use --folds 8 .* or --stop-on val"):
        selection_folds(world["corpus"], fm.ids, fm.rows, SelectionConfig(on="folds", k=9))


def test_a_fold_model_does_not_depend_on_the_other_folds(world):
    """Seeds × folds train as one stack; fold 3's fit rows reordered (same set, so other batches
    for its models): the models of folds 0-2 stay bit-for-bit the same, fold 3's move."""
    mlp = registry.get("mlp")
    folds = world["folds"]
    other = folds[:3] + [(np.random.default_rng(0).permutation(folds[3][0]), folds[3][1])]
    a = mlp.fit(_data(world, folds=folds), quick_config("mlp"))
    b = mlp.fit(_data(world, folds=other), quick_config("mlp"))
    pa, pb = a.stack.params["trunk.0.weight"], b.stack.params["trunk.0.weight"]
    assert pa.shape[0] == len(SEEDS) * len(folds)                     # seed-major: model j = seed j // K, fold j % K
    same = [j for j in range(pa.shape[0]) if j % len(folds) != 3]
    moved = [j for j in range(pa.shape[0]) if j % len(folds) == 3]
    assert all(np.array_equal(pa[j].numpy(), pb[j].numpy()) for j in same)
    assert not any(np.array_equal(pa[j].numpy(), pb[j].numpy()) for j in moved)


@pytest.mark.parametrize("name", ["mlp", "xgb"])
def test_oof_rows_come_from_the_fold_that_held_them_out(name, world):
    learner = registry.get(name)
    ff = F.fit_folds(learner, _data(world), quick_config(name), world["folds"], world["fm"].rows["Train"])
    train = world["fm"].rows["Train"]
    e, p, a = ff.fold_outputs(world["fm"].X[train])                  # (S, K, n_train, …)
    fold = F.fold_of(train, world["folds"])
    for i in range(len(train)):
        np.testing.assert_array_equal(ff.oof[0][:, i], e[:, fold[i], i])
        np.testing.assert_array_equal(ff.oof[2][:, i], a[:, fold[i], i])
    assert ff.oof[1].shape == (len(SEEDS), len(train), 4)
    # the run's predictions are the fold models' mean
    ens = ff.predict(world["fm"].X[train])
    np.testing.assert_allclose(ens[0], e.mean(1), rtol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "xgb"])
def test_val_labels_change_no_fold_prediction(name, world):
    learner, t = registry.get(name), world["t"]
    val = world["fm"].rows["Val"]
    permuted = _with_labels(t, val, np.random.default_rng(1).permutation(val))
    X = world["fm"].X
    runs = [F.fit_folds(learner, _data(world, targets=tt), quick_config(name), world["folds"], world["fm"].rows["Train"])
            for tt in (t, permuted)]
    test = world["fm"].rows["Test"]
    for a, b in zip(runs[0].predict(X[test]), runs[1].predict(X[test])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(runs[0].oof, runs[1].oof):
        np.testing.assert_array_equal(a, b)


def test_learn_cli_with_folds_writes_oof_scores_and_predicts(world, tmp_path):
    corpus = world["corpus"]
    common = ["--data", str(corpus.root), "--cache", str(world["tmp"] / "cache"), "--runs", str(tmp_path / "runs")]
    r = CliRunner().invoke(app, ["learn", "-f", "lin", "--arch", "sys1", "--seeds", "2", "--epochs", "3",
                                 "--stop-on", "folds", "--folds", "4", "--device", "cpu", "--threads", "1", *common])
    assert r.exit_code == 0, r.output
    assert "4 speaker folds of 8 Train speakers, stratified by country" in r.output
    run = tmp_path / "runs" / "lin_mlp_sys1"
    m = json.loads((run / "metrics.json").read_text())
    oof = m["oof"]
    assert oof["split"] == "OOF" and oof["n"] == len(corpus.split_ids("Train"))
    lo, hi = oof["ci95"]["s_mtl"]
    assert lo <= oof["ensemble"]["s_mtl"] <= hi
    sp = load_seed_predictions(run, "OOF")
    assert sp.seeds == [0, 1] and sorted(sp.ids) == sorted(corpus.split_ids("Train"))
    assert (run / "oof.csv").is_file() and (run / "models" / F.FOLDS_META).is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["selection"]["on"] == "folds" and cfg["selection"]["k"] == 4
    r = CliRunner().invoke(app, ["predict", str(run), "--split", "Val", "--out", str(tmp_path / "v.csv"), *common[:4]])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "v.csv").read_text() == (run / "val.csv").read_text()


def test_refit_trains_all_train_for_the_median_epochs(world):
    mlp = registry.get("mlp")
    data = _data(world)
    ff = F.fit_folds(mlp, data, quick_config("mlp"), world["folds"], world["fm"].rows["Train"])
    fitted = F.refit(mlp, data, quick_config("mlp"), ff, world["fm"].rows["Train"])
    want = F.median_epoch([v for row in ff.fold_epochs for v in row])
    assert fitted.info["refit_epochs"] == max(1, want)
    assert fitted.best_epoch == [max(1, want)] * len(SEEDS)          # the last epoch kept, no early stop
    assert fitted.oof is ff.oof


def test_median_epoch_rounds_half_up():
    assert F.median_epoch([1, 2]) == 2 and F.median_epoch([3, 1, 2]) == 2 and F.median_epoch([None]) is None


def test_build_routes_fold_flags():
    from exvo.learn.config import LearnConfig

    cfg = build(LearnConfig, features=["x"], stop_on="folds", folds=3, final="refit")
    assert (cfg.select.on, cfg.select.k, cfg.select.final) == ("folds", 3, "refit")
    with pytest.raises(ValueError, match="unknown --final 'best'"):
        build(LearnConfig, features=["x"], final="best")


def _permuted_val_corpus(corpus, root):
    """A copy of the corpus table with the Val rows' labels permuted among themselves."""
    import csv

    from exvo.corpus import Corpus

    rows = list(csv.reader(open(corpus.root / "data_info.csv")))
    head, body = rows[0], rows[1:]
    val = [i for i, r in enumerate(body) if r[1] == "Val"]
    perm = np.random.default_rng(4).permutation(val)
    out = [list(r) for r in body]
    for i, j in zip(val, perm):
        out[i][3:] = body[j][3:]
    root.mkdir(parents=True)
    (root / "wav").symlink_to(corpus.root / "wav") if (corpus.root / "wav").exists() else None
    with open(root / "data_info.csv", "w", newline="") as f:
        csv.writer(f).writerows([head] + out)
    return Corpus.from_dir(root)


def test_fuse_select_on_oof_chooses_on_train_and_ignores_val_labels(world, tmp_path):
    from exvo.api import learn
    from exvo.fusion.api import fuse

    corpus, runs = world["corpus"], tmp_path / "runs"
    for f in ("lin", "noise"):
        learn(corpus, [f], seeds=2, cache_dir=world["tmp"] / "cache", runs_dir=runs, arch="sys1", epochs=3,
              stop_on="folds", folds=4, device="cpu", threads=1)
    res = fuse(corpus, runs, ["lin_mlp_sys1", "noise_mlp_sys1"], select_on="oof", echo=lambda m: None)
    assert res.chosen["emotion"] == ["lin_mlp_sys1"]                  # the informative features win on Train OOF
    rec = json.loads((runs / res.name / "fusion.json").read_text())
    assert rec["select_on"] == "oof" and res.name == "hybrid_oof"
    m = json.loads((runs / res.name / "metrics.json").read_text())
    assert m["selection"]["optimistic"] is False
    # the same runs judged against permuted Val labels: the choice (made on Train) is the same
    other = _permuted_val_corpus(corpus, tmp_path / "perm")
    res2 = fuse(other, runs, ["lin_mlp_sys1", "noise_mlp_sys1"], select_on="oof", name="again", echo=lambda m: None)
    assert res2.chosen == res.chosen
    assert (runs / "again" / "val.csv").read_text() == (runs / res.name / "val.csv").read_text()


def test_fuse_select_on_oof_refuses_runs_without_folds(world, tmp_path):
    from exvo.api import learn
    from exvo.fusion.api import fuse
    from exvo.predictions import PredictionError

    corpus, runs = world["corpus"], tmp_path / "runs"
    learn(corpus, ["lin"], seeds=1, cache_dir=world["tmp"] / "cache", runs_dir=runs, arch="sys1", epochs=2,
          stop_on="folds", folds=4, device="cpu", threads=1)
    learn(corpus, ["noise"], seeds=1, cache_dir=world["tmp"] / "cache", runs_dir=runs, arch="sys1", epochs=2,
          stop_on="holdout", device="cpu", threads=1)
    with pytest.raises(PredictionError, match=r"--select-on oof: run\(s\) noise_mlp_sys1 have no out-of-fold Train "
                                              r"predictions \(oof.csv\); train them with `exvo learn --stop-on folds`"):
        fuse(corpus, runs, ["lin_mlp_sys1", "noise_mlp_sys1"], select_on="oof", echo=lambda m: None)


def test_oof_on_a_task_cnn_trained_on_these_train_labels_is_marked_optimistic():
    from exvo.fusion.report import _oof_cell
    from exvo.fusion.rows import oof_summary
    from exvo.learn.features import train_label_leaks

    cnn = {"spec": "raw_exvo_er", "cache_config": {"label_column": "Emotion", "trained_on": "corp", "crossfit": None}}
    crossfit = {"spec": "raw_exvo_er", "cache_config": {"label_column": "Emotion", "trained_on": "corp", "crossfit": 5}}
    other_corpus = {"spec": "raw_x", "cache_config": {"label_column": "Emotion", "trained_on": "elsewhere"}}
    smile = {"spec": "egemaps", "cache_config": {"extractor": "egemaps"}}
    why = train_label_leaks([smile, cnn, crossfit, other_corpus], "corp")
    assert len(why) == 1 and why[0].startswith("raw_exvo_er: a task CNN trained on these Train labels without --crossfit")
    met = {"oof": {"summary": {"s_mtl": {"mean": 0.4, "std": 0.01}}, "per_seed": [{}, {}], "optimistic": why}}
    assert _oof_cell(type("R", (), {"oof": oof_summary(met)})()) == "0.400 ± 0.010 †"
    met["oof"]["optimistic"] = None
    assert _oof_cell(type("R", (), {"oof": oof_summary(met)})()) == "0.400 ± 0.010"
