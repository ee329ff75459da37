"""Stage 2 learners: feature specs, loading, the vectorised-seed MLP, XGBoost, run folders.

Caches are written directly with CacheWriter for a hand-made corpus whose labels are
known functions of a latent vector ``z`` (the features carry ``z``), so the right answers
are known without running any extractor.
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from exvo.config import SelectionConfig, TrainConfig, build
from exvo.corpus import Corpus
from exvo.extract.cache import CacheMismatch, cache_path
from exvo.extract.cache_writer import CacheWriter
from exvo.learn import reference
from exvo.learn.api import learn, predict_run
from exvo.learn.config import LearnConfig
from exvo.learn.features import (FeatureError, FeatureSpec, Scaler, load_features, parse_spec,
                                 parse_specs, report_missing)
from exvo.learn.mlp import MLPConfig
from exvo.learn.multitask import LossConfig
from exvo.learn.probe import probe_layers
from exvo.metrics import EMOTIONS
from exvo.predictions import Predictions, load_split

torch.set_num_threads(1)
N_SPK, PER_SPK, ZDIM = 40, 20, 4


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_corpus(root, seed=0, n_spk=N_SPK, per_spk=PER_SPK):
    """Corpus whose labels are known functions of a latent ``z`` (returned, rows in CSV order)."""
    rng = np.random.default_rng(seed)
    n = n_spk * per_spk
    z = rng.normal(size=(n, ZDIM))
    we = np.random.default_rng(100).normal(size=(ZDIM, 10))
    emo = _sigmoid(1.5 * z @ we / math.sqrt(ZDIM))
    country = np.argmax(z @ np.random.default_rng(101).normal(size=(ZDIM, 4)), axis=1)
    age = np.clip(35 + 10 * z[:, 0], 1, 120).round(1)
    splits = ["Train"] * (n_spk // 2) + ["Val"] * (n_spk // 4) + ["Test"] * (n_spk - n_spk // 2 - n_spk // 4)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"[{k:05d}]" for k in range(n)]
    with open(root / "data_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS])
        for k in range(n):
            sp = splits[k // per_spk]
            lab = [country[k], age[k], "x", *emo[k]] if sp != "Test" else ["", "", "", *[""] * 10]
            w.writerow([ids[k], sp, f"Speaker_{k // per_spk}", *lab])
    return Corpus.from_dir(root), z


def write_cache(cache_dir, corpus, name, feats, config=None, skip=()):
    """``feats`` ``(n, L, F)`` in corpus order; ids in ``skip`` are left out (failed clips)."""
    path = cache_path(cache_dir, corpus.name, name)
    with CacheWriter(path, name, config or {"extractor": name, "v": 1}) as w:
        for i, x in zip(corpus.ids, feats):
            if i not in skip:
                w.add(i, np.asarray(x, np.float32))
        w.finalize(order=corpus.ids, files=[])
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus + caches: ``lin`` (z and noise, 1 layer), ``noise`` (1 layer), ``ssl3`` (3 layers, z in layer 1)."""
    tmp = tmp_path_factory.mktemp("learn")
    corpus, z = make_corpus(tmp / "corp")
    rng = np.random.default_rng(7)
    n = len(corpus)
    lin = np.concatenate([z * 3.0 + 1.0, rng.normal(size=(n, 4))], 1)[:, None, :]
    noise = rng.normal(size=(n, 1, 6))
    ssl = rng.normal(size=(n, 3, 8))
    ssl[:, 1, :ZDIM] = z
    cache = tmp / "cache"
    write_cache(cache, corpus, "lin", lin)
    write_cache(cache, corpus, "noise", noise)
    write_cache(cache, corpus, "ssl3", ssl)
    return {"corpus": corpus, "z": z, "cache": cache, "tmp": tmp, "lin": lin[:, 0], "noise": noise[:, 0]}


def _quick(**kw):
    base = dict(features=["lin"], learner="mlp", arch="sys1", seeds=2, epochs=12, patience=4, batch_size=8,
                device="cpu")
    base.update(kw)
    return build(LearnConfig, base)


# ------------------------------------------------------------------ feature specs
def test_parse_spec_forms():
    assert parse_spec("wavlm") == FeatureSpec("wavlm", None)
    assert parse_spec("wavlm@12") == FeatureSpec("wavlm", 12)
    assert parse_spec(" hubert@-2 ") == FeatureSpec("hubert", -2)
    assert parse_spec("wavlm@best") == FeatureSpec("wavlm", "best")
    assert [s.text for s in parse_specs("egemaps,wavlm@3")] == ["egemaps", "wavlm@3"]


@pytest.mark.parametrize("bad", ["wavlm@", "wavlm@x", "wavlm@1@2", "@3", "wav lm", "wavlm@best2", "a/b"])
def test_bad_spec_is_explained(bad):
    with pytest.raises(FeatureError, match=r"bad feature spec .*expected NAME, NAME@LAYER"):
        parse_spec(bad)


def test_empty_and_duplicate_specs_refused():
    with pytest.raises(FeatureError, match="empty feature spec"):
        parse_specs("egemaps,,compare")
    with pytest.raises(FeatureError, match=r"\['wavlm'\] given more than once"):
        parse_specs(["wavlm@3", "wavlm@4"])


def test_missing_cache_names_the_extract_command(world, tmp_path):
    with pytest.raises(FeatureError, match=r"no cache for feature set 'egemaps'.*exvo extract --model egemaps --data "):
        learn(world["corpus"], _quick(features=["lin", "egemaps"]), cache_dir=world["cache"], runs_dir=tmp_path)


def test_layer_out_of_range_and_layer_on_single_layer_cache(world):
    c = world["corpus"]
    with pytest.raises(FeatureError, match=r"layer 3 does not exist; the ssl3 cache has 3 layer\(s\)"):
        load_features(c, [FeatureSpec("ssl3", 3)], world["cache"])
    with pytest.raises(FeatureError, match=r"layer 1 does not exist; the lin cache has 1 layer"):
        load_features(c, [FeatureSpec("lin", 1)], world["cache"])


def test_early_fusion_aligns_by_id_and_resolves_layers(world, tmp_path):
    c = world["corpus"]
    # a cache written in reverse order must still line up row by row with the others
    rev = tmp_path / "cache"
    write_cache(rev, c, "lin", world["lin"][:, None])
    feats = world["noise"][::-1, None]
    path = cache_path(rev, c.name, "noise")
    with CacheWriter(path, "noise", {"v": 1}) as w:
        for i, x in zip(c.ids[::-1], feats):
            w.add(i, x.astype(np.float32))
        w.finalize(order=c.ids[::-1], files=[])
    write_cache(rev, c, "ssl3", np.zeros((len(c), 3, 2)) + np.arange(3)[None, :, None])
    fm = load_features(c, parse_specs("lin,noise,ssl3@-2"), rev)
    assert fm.X.shape == (len(c), 8 + 6 + 2)
    np.testing.assert_array_equal(fm.X[:, :8], world["lin"].astype(np.float32))
    np.testing.assert_array_equal(fm.X[:, 8:14], world["noise"].astype(np.float32))
    assert np.all(fm.X[:, 14:] == 1.0)          # ssl3@-2 is layer 1
    assert [b.layer for b in fm.blocks] == [0, 0, 1]
    assert load_features(c, parse_specs("ssl3"), rev).blocks[0].layer == 2    # plain name = last layer


def test_scaler_uses_train_rows_only(world):
    fm = load_features(world["corpus"], [FeatureSpec("lin")], world["cache"])
    raw = fm.X.copy()
    tr = fm.rows["Train"]
    sc = Scaler.fit(fm.X, tr)
    np.testing.assert_allclose(sc.mean, raw[tr].astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sc.std, raw[tr].astype(np.float64).std(0), rtol=1e-5)
    out = sc.apply_(fm.X)
    assert out is fm.X                           # in place, no copy
    np.testing.assert_allclose(fm.X[tr].mean(0), 0, atol=1e-5)
    assert abs(fm.X[fm.rows["Val"]].mean()) > 1e-4  # Val is not re-centred


def test_best_layer_probe_finds_the_informative_layer(world):
    layer, info = probe_layers(__import__("exvo.extract.cache", fromlist=["x"]).EmbeddingCache(
        cache_path(world["cache"], world["corpus"].name, "ssl3")), world["corpus"])
    assert layer == 1
    s = info["layer_scores"]
    assert s[1] > 2 * max(s[0], s[2])


# ------------------------------------------------------------------ missing clips
def test_missing_clips_are_reported(world, tmp_path):
    c = world["corpus"]
    tr_missing = c.split_ids("Train")[:3]
    va_missing = c.split_ids("Val")[:2]
    write_cache(tmp_path, c, "lin", world["lin"][:, None], skip=tr_missing)
    fm = load_features(c, [FeatureSpec("lin")], tmp_path)
    msgs = []
    report_missing(fm, c, tmp_path, need=["Val"], echo=msgs.append)
    assert "3 Train clip(s) are not in the cache(s) [lin]" in msgs[0] and tr_missing[0] in msgs[0]
    assert fm.rows["Train"].size == len(c.split_ids("Train")) - 3
    write_cache(tmp_path / "b", c, "lin", world["lin"][:, None], skip=va_missing)
    with pytest.raises(FeatureError, match=r"2 Val clip\(s\) are not in the cache\(s\) \[lin\].*exvo extract --model lin"):
        learn(c, _quick(), cache_dir=tmp_path / "b", runs_dir=tmp_path / "runs")


# ------------------------------------------------------------------ MLP
def _arrays(world):
    fm = load_features(world["corpus"], [FeatureSpec("lin")], world["cache"])
    from exvo.learn.targets import make_targets

    t = make_targets(world["corpus"], fm.ids, fm.rows)
    Scaler.fit(fm.X, fm.rows["Train"]).apply_(fm.X)
    return fm, t


def _fit(fm, t, seeds, train: TrainConfig, sel_rows=None, loss: LossConfig | None = None, monitor="score"):
    """The registry's MLP trained on Train, selecting on ``sel_rows`` (default: Val)."""
    from exvo.learn.registry import FitData, get

    sel = SelectionConfig(on="val", monitor=monitor)
    data = FitData(fm.X, t, fm.rows["Train"], fm.rows["Val"] if sel_rows is None else sel_rows, list(seeds), train,
                   loss or LossConfig(), sel, echo=lambda m: None)
    return get("mlp").fit(data, MLPConfig(arch="sys1"))


@pytest.mark.parametrize("combine", ["uncertainty", "mean"])
def test_framework_mlp_equals_the_plain_loop_and_seeds_at_once_equal_one_by_one(world, combine):
    """Same init (torch.manual_seed(2k)) and batch order (Generator(2k+1)): the framework's
    vmapped S-seed training follows the plain one-seed autograd loop step for step."""
    fm, t = _arrays(world)
    train = TrainConfig(epochs=3, patience=5)
    loss = LossConfig(combine=combine)
    both = _fit(fm, t, [5, 6], train, loss=loss)
    va = fm.rows["Val"]
    together = both.predict(fm.X[va])
    for j, s in enumerate([5, 6]):
        alone = _fit(fm, t, [s], train, loss=loss)
        assert alone.best_epoch[0] == both.best_epoch[j]
        for a, b in zip(together, alone.predict(fm.X[va])):
            np.testing.assert_allclose(a[j], b[0], atol=2e-5)
        model, info = reference.train_plain(fm.X, fm.rows["Train"], va, t, s, "sys1", train, loss)
        assert info["best_epoch"] == both.best_epoch[j]
        np.testing.assert_allclose(info["history"], [h[j] for h in both.history["selection_history"]], atol=1e-4)
        for a, b in zip(together, reference.predict_plain(model, fm.X, va)):
            np.testing.assert_allclose(a[j], b, atol=1e-4)
        for k, v in model.state_dict().items():
            np.testing.assert_allclose(both.stack.params[k][j].numpy(), v.numpy(), atol=1e-4, err_msg=k)


def test_restores_the_best_epoch(world):
    """Selection labels that oppose Train's: the selection score gets worse as training goes on."""
    fm, t = _arrays(world)
    va = fm.rows["Val"]
    t.emotions[va] = 1.0 - t.emotions[va]
    t.country[va] = (t.country[va] + 2) % 4
    t.age[va] = 2 * t.age_mean - t.age[va]
    train = TrainConfig(epochs=10, patience=3)
    fit = _fit(fm, t, [0, 1], train)
    hist = np.array(fit.history["selection_history"])           # (epochs_run, seeds)
    assert fit.history["epochs_run"] == max(fit.best_epoch) + train.patience < train.epochs   # stopped early ...
    for j in range(2):
        k = fit.best_epoch[j]
        assert k == int(np.argmax(hist[:, j])) + 1 and k < fit.history["epochs_run"]
        # ... and the restored weights are exactly those after epoch k
        again = _fit(fm, t, [fit.seeds[j]], TrainConfig(epochs=k, patience=99))
        for name in ("trunk.0.weight", "log_vars"):
            torch.testing.assert_close(again.stack.params[name][0], fit.stack.params[name][j], atol=1e-6, rtol=0)


def test_paper_stopping_monitors_the_loss_and_keeps_the_last_epoch(world):
    fm, t = _arrays(world)
    # delta 10 on a loss of order 1: only epoch 1 improves (on −inf), so training stops
    # `patience` epochs later and keeps the weights of that last epoch
    fit = _fit(fm, t, [0], TrainConfig(epochs=10, patience=2, restore="last", min_delta=10.0),
               loss=LossConfig(combine="mean"), monitor="loss")
    assert fit.history["epochs_run"] == 3 and fit.best_epoch == [3] and fit.history["monitor"] == "loss"
    h = np.array(fit.history["selection_history"])[:, 0]
    assert (h < 0).all()                                           # −loss


def test_mlp_learns_the_synthetic_task_and_writes_the_run(world, tmp_path):
    c = world["corpus"]
    res = learn(c, _quick(seeds=3), cache_dir=world["cache"], runs_dir=tmp_path, echo=lambda m: None)
    run = tmp_path / "lin_mlp_sys1"
    assert res.run_dir == run
    m = json.loads((run / "metrics.json").read_text())
    assert set(m) == {"split", "n", "ccc_convention", "summary", "per_seed", "ensemble", "ccc_per_emotion",
                      "selection", "val_optimistic", "oof"}                 # oof: the default speaker folds
    assert m["selection"]["select_on"] == "folds" and m["val_optimistic"] is False
    assert m["split"] == "Val" and m["n"] == len(c.split_ids("Val")) and m["ccc_convention"] == "challenge"
    assert set(m["summary"]) == {"ccc", "uar", "mae", "s_mtl"} and set(m["summary"]["ccc"]) == {"mean", "std"}
    assert [p["seed"] for p in m["per_seed"]] == [0, 1, 2]
    assert set(m["per_seed"][0]) == {"seed", "ccc", "uar", "mae", "s_mtl", "ccc_per_emotion", "best_epoch"}
    assert list(m["ccc_per_emotion"]) == list(EMOTIONS)
    s = m["summary"]
    # the labels are smooth functions of 4 of the 8 features: near-perfect is reachable
    assert s["ccc"]["mean"] > 0.8 and s["uar"]["mean"] > 0.75 and s["mae"]["mean"] < 3.0
    const = res.config["constant_predictor_val"]
    assert const["ccc"] == pytest.approx(0.0, abs=1e-9) and s["mae"]["mean"] < const["mae"] / 2
    np.testing.assert_allclose(s["ccc"]["mean"], np.mean([p["ccc"] for p in m["per_seed"]]))
    np.testing.assert_allclose(s["ccc"]["std"], np.std([p["ccc"] for p in m["per_seed"]]))
    # val.csv is the seed ensemble and scores as metrics.json says
    from exvo.predictions import score

    pred = load_split(run, "Val")
    assert pred.country_proba is not None
    assert score(pred, c, "Val")["s_mtl"] == pytest.approx(m["ensemble"]["s_mtl"], abs=1e-9)
    test = Predictions.read(run / "test.csv")
    assert test.ids == c.split_ids("Test")
    # per_seed/: each seed scores as metrics.json's per-seed row; their average is val.csv / test.csv
    from exvo.predictions import load_seed_predictions

    sp = load_seed_predictions(run, "Val")
    assert sp.seeds == [0, 1, 2] and sp.ids == pred.ids
    for j, row in enumerate(m["per_seed"]):
        assert score(sp.seed(j), c, "Val")["s_mtl"] == pytest.approx(row["s_mtl"], abs=1e-9)
    np.testing.assert_allclose(sp.ensemble().emotions, pred.emotions, atol=1e-6)
    np.testing.assert_allclose(load_seed_predictions(run, "Test").ensemble().age, test.age, atol=1e-4)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "learn" and cfg["features"][0]["layer"] == 0 and cfg["features"][0]["dim"] == 8
    assert cfg["features"][0]["cache_fingerprint"] and cfg["seeds"] == [0, 1, 2]
    assert "Val CCC" in res.summary_line() and "±" in res.summary_line()
    # reload the saved models: the same predictions again
    out = predict_run(run, c, cache_dir=world["cache"], split="Val", out=tmp_path / "again.csv")
    again = Predictions.read(out, out.with_name("again_country_proba.csv"))
    np.testing.assert_allclose(again.emotions, pred.emotions, atol=1e-6)
    np.testing.assert_allclose(again.age, pred.age, atol=1e-5)
    np.testing.assert_allclose(again.country_proba, pred.country_proba, atol=1e-6)
    t2 = Predictions.read(predict_run(run, c, cache_dir=world["cache"]))
    np.testing.assert_allclose(t2.emotions, test.emotions, atol=1e-6)


def test_seeds_are_reproducible(world, tmp_path):
    c = world["corpus"]
    a = learn(c, _quick(epochs=2, seeds=2), world["cache"], tmp_path, name="a", echo=lambda m: None).metrics
    b = learn(c, _quick(epochs=2, seeds=2), world["cache"], tmp_path, name="b", echo=lambda m: None).metrics
    d = learn(c, _quick(epochs=2, seeds=2, seed=10), world["cache"], tmp_path, name="d", echo=lambda m: None).metrics
    assert a["per_seed"] == b["per_seed"]
    assert a["per_seed"][0]["ccc"] != d["per_seed"][0]["ccc"]
    assert (tmp_path / "a" / "val.csv").read_text() == (tmp_path / "b" / "val.csv").read_text()


def test_best_layer_is_recorded(world, tmp_path):
    msgs = []
    res = learn(world["corpus"], _quick(features=["ssl3@best"], epochs=2, seeds=1), world["cache"], tmp_path,
                echo=msgs.append)
    f = res.config["features"][0]
    assert f["layer"] == 1 and f["layer_choice"].startswith("best") and set(f["probe"]["layer_scores"]) == {0, 1, 2}
    assert any("layer 1 of 3 chosen by a closed-form ridge probe" in m for m in msgs)
    assert res.run_dir.name == "ssl3@best_mlp_sys1"
    saved = json.loads((res.run_dir / "config.json").read_text())
    assert saved["features"][0]["layer"] == 1


def test_predict_refuses_a_cache_built_differently(world, tmp_path):
    c = world["corpus"]
    learn(c, _quick(epochs=1, seeds=1), world["cache"], tmp_path / "runs", echo=lambda m: None)
    other = tmp_path / "cache"
    write_cache(other, c, "lin", world["lin"][:, None], config={"extractor": "lin", "v": 2})
    with pytest.raises(CacheMismatch, match=r"built with other settings.*v: cache=2 requested=1"):
        predict_run(tmp_path / "runs" / "lin_mlp_sys1", c, cache_dir=other, split="Val")


# ------------------------------------------------------------------ XGBoost
def test_xgb_learns_the_synthetic_task(world, tmp_path):
    c = world["corpus"]
    res = learn(c, build(LearnConfig, features=["lin", "noise"], learner="xgb", seeds=2, xgb_estimators=40, device="cpu"),
                world["cache"], tmp_path, echo=lambda m: None)
    assert res.run_dir.name == "lin+noise_xgb"
    s = res.metrics["summary"]
    const = res.config["constant_predictor_val"]
    assert s["ccc"]["mean"] > 0.5 and s["uar"]["mean"] > 0.6 and s["mae"]["mean"] < 0.6 * const["mae"]
    assert res.metrics["per_seed"][0]["best_epoch"] is None
    assert res.metrics["per_seed"][0]["ccc"] != res.metrics["per_seed"][1]["ccc"]   # seeds subsample differently
    pred = load_split(res.run_dir, "Val")
    out = predict_run(res.run_dir, c, world["cache"], split="Val", out=tmp_path / "x.csv")
    np.testing.assert_allclose(Predictions.read(out).emotions, pred.emotions, atol=1e-6)


def test_holdout_is_speaker_disjoint_and_stratified_by_country():
    from exvo.splits import holdout_split

    rows = np.arange(100)
    spk = np.repeat(np.arange(20), 5).astype(str)
    cou = np.repeat(np.arange(20) % 4, 5)          # 5 speakers per country: a 20-speaker Train split
    fit, stop = holdout_split(rows, spk, cou, 0.1, 0)
    assert not set(spk[fit]) & set(spk[stop])
    # round(0.1 × 5) = 0 per country, raised to 1: every country is in both parts
    assert len(stop) == 4 * 5 and sorted(set(cou[stop])) == [0, 1, 2, 3] and sorted(set(cou[fit])) == [0, 1, 2, 3]
    big = np.repeat(np.arange(400), 2).astype(str)
    _, stop = holdout_split(np.arange(800), big, np.repeat(np.arange(400) % 4, 2), 0.1, 0)
    assert len(stop) == 2 * 40                      # 10 of each country's 100 speakers
    # a country with one speaker keeps it for fitting
    three = np.array(["a", "b", "c"])
    _, stop = holdout_split(np.arange(3), three, np.array([0, 0, 1]), 0.5, 0)
    assert len(stop) == 1 and three[stop[0]] in ("a", "b")
    with pytest.raises(ValueError, match="at least 2 Train speakers"):
        holdout_split(np.arange(2), np.array(["a", "b"]), np.array([0, 1]), 0.1, 0)


# ------------------------------------------------------------------ CLI
def test_cli_learn_and_predict(world, tmp_path):
    from typer.testing import CliRunner

    from exvo.cli import app

    r = CliRunner().invoke(app, ["learn", "--features", "lin", "--arch", "sys1", "--seeds", "1", "--epochs", "2",
                                 "--device", "cpu", "--data", str(world["corpus"].root), "--cache", str(world["cache"]),
                                 "--runs", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "lin_mlp_sys1: Val CCC" in r.output and "mean/majority predictor" in r.output
    r = CliRunner().invoke(app, ["learn", "--features", "lin@x", "--data", str(world["corpus"].root),
                                 "--cache", str(world["cache"]), "--runs", str(tmp_path)])
    assert r.exit_code == 2 and "bad feature spec" in r.output
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "lin_mlp_sys1"), "--data", str(world["corpus"].root),
                                 "--cache", str(world["cache"])])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lin_mlp_sys1" / f"predict_{world['corpus'].name}_test.csv").is_file()


def test_no_test_rows_skips_test_csv_and_says_so(world, tmp_path):
    src = world["corpus"].root / "data_info.csv"
    root = tmp_path / "notest"
    root.mkdir()
    lines = src.read_text().splitlines()
    (root / "data_info.csv").write_text("\n".join([lines[0]] + [r for r in lines[1:] if ",Test," not in r]) + "\n")
    c = Corpus.from_dir(root)
    assert not c.split_ids("Test")
    write_cache(tmp_path / "cache", c, "lin", world["lin"][:len(c), None])
    msgs = []
    res = learn(c, _quick(epochs=1, seeds=1), tmp_path / "cache", tmp_path / "runs", echo=msgs.append)
    assert any("no Test rows; test.csv is not written" in m for m in msgs)
    assert (res.run_dir / "val.csv").is_file() and not (res.run_dir / "test.csv").exists()


@pytest.mark.parametrize("kw, msg", [({"learner": "svm"}, "unknown learner 'svm'"), ({"arch": "sys3"}, "unknown arch"),
                                     ({"loss": "sum"}, "unknown loss 'sum'"), ({"seeds": 0}, "--seeds must be >= 1")])
def test_bad_learn_config_is_explained(world, tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        learn(world["corpus"], _quick(**kw), world["cache"], tmp_path)


@pytest.mark.parametrize("combine", ["uncertainty", "mean"])
def test_mlp_fast_path_equals_autograd(world, combine):
    """The optional hand-derived gradient (public ops) equals autograd's on one step, and the
    trainer follows the same trajectory with it."""
    from torch.func import functional_call

    from exvo.learn import mlp_fast
    from exvo.learn.framework import SeedStack
    from exvo.learn.mlp import MultitaskMLP

    fm, t = _arrays(world)
    loss = LossConfig(combine=combine)
    st = SeedStack.build(lambda: MultitaskMLP(fm.dim, "sys1", loss), [0, 1])
    r = torch.as_tensor(fm.rows["Train"][:16].reshape(2, 8))
    from exvo.learn.multitask import data_tensors

    d = data_tensors(fm.X, t)
    batch = {k: v[r] for k, v in d.items()}
    L = st.run(lambda p, b, x: functional_call(st.base, (p, b), (x,), {"train_loss": True}), batch, True)
    L.sum().backward()
    want = {k: v.grad for k, v in st.params.items()}
    for v in st.params.values():
        v.grad = None
    with torch.no_grad():
        got = mlp_fast.make_grad_fn(loss)(st.params, batch)
    np.testing.assert_allclose(got.numpy(), L.detach().numpy(), rtol=1e-5)
    for k, v in st.params.items():
        if want[k] is None:                        # log_vars with the mean loss: unused, no gradient
            assert combine == "mean" and k == "log_vars" and v.grad is None
            continue
        torch.testing.assert_close(v.grad, want[k], rtol=1e-4, atol=1e-6)
    from exvo.learn.registry import FitData, get

    runs = []
    for fast in (False, True):
        data = FitData(fm.X, t, fm.rows["Train"], fm.rows["Val"], [3, 4], TrainConfig(epochs=2, patience=5), loss,
                       SelectionConfig(on="val"), echo=lambda m: None)
        runs.append(get("mlp").fit(data, MLPConfig(arch="sys1", fast_path=fast)))
    np.testing.assert_allclose(runs[0].history["selection_history"], runs[1].history["selection_history"], atol=1e-4)
    for a, b in zip(runs[0].predict(fm.X[fm.rows["Val"]]), runs[1].predict(fm.X[fm.rows["Val"]])):
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="fast path covers"):
        mlp_fast.make_grad_fn(LossConfig(emotions="ccc"))


def test_a_val_speaker_also_in_train_is_warned_and_recorded(tmp_path):
    import csv
    import warnings

    corpus, z = make_corpus(tmp_path / "corp", n_spk=16, per_spk=6)
    rows = list(csv.reader(open(corpus.root / "data_info.csv")))
    first_val = next(i for i, r in enumerate(rows) if r[1] == "Val")
    rows[first_val][2] = "Speaker_0"                               # a Train speaker's clip in Val
    with open(corpus.root / "data_info.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = Corpus.from_dir(corpus.root)
    write_cache(tmp_path / "cache", corpus, "lin", z[:, None, :])
    res = learn(corpus, _quick(seeds=1, epochs=2, stop_on="holdout"), cache_dir=tmp_path / "cache",
                runs_dir=tmp_path / "runs", echo=lambda m: None)
    assert ("warning: 1 speaker(s) have clips in both Train and Val (Speaker_0): its Val scores are not "
            "new-speaker estimates") in res.notes
    assert res.config["speaker_overlaps"] == {"Train/Val": ["Speaker_0"]}
