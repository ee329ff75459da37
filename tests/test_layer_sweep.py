"""Issue #25: multi-layer feature specs, the ``wsum`` learner and the ``exvo layers`` sweep.

Caches are written by hand (CacheWriter) for the corpus of ``test_learn`` whose labels are
known functions of a latent ``z``; a planted layer carries ``z`` (with its own offset and
scale), the others noise, so the right layer is known. One test runs a tiny random WavLM
(``save_pretrained``) through ``extract`` → ``learn --learner wsum`` → ``layers`` → ``predict``.
"""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exvo.cli import app
from exvo.config import SelectionConfig, TrainConfig, build, from_dict
from exvo.corpus import Corpus
from exvo.learn import registry
from exvo.learn.api import learn, predict_run
from exvo.learn.config import LearnConfig
from exvo.learn.features import FeatureError, FeatureSpec, Scaler, block_spec, load_features, parse_specs, resolve_layer
from exvo.learn.layers import LayersConfig, sweep
from exvo.learn.mlp import MLPConfig
from exvo.learn.multitask import LossConfig
from exvo.learn.targets import make_targets
from exvo.learn.wsum import WSumConfig
from test_learn import make_corpus, write_cache

SIGNAL = 3          # the planted layer of the 5-layer cache
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _planted(corpus, z, L=5, F=8, seed=0):
    """``(n, L, F)``: layer SIGNAL holds 2·z + 5 in its first columns, every layer its own scale."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(corpus), L, F)) * (1 + np.arange(L))[None, :, None]
    X[:, SIGNAL, :z.shape[1]] = 2 * z + 5
    return X


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layer_sweep")
    corpus, z = make_corpus(tmp / "corp", seed=3, n_spk=24, per_spk=10)
    X = _planted(corpus, z)
    write_cache(tmp / "cache", corpus, "ssl5", X, config={"extractor": "ssl5", "n_layers": 5})
    write_cache(tmp / "cache", corpus, "one", X[:, SIGNAL:SIGNAL + 1])
    write_cache(tmp / "cache", corpus, "narrow", X[:, :1, :4])
    return {"corpus": corpus, "cache": tmp / "cache", "X": X, "tmp": tmp}


def _quick(**kw):
    base = dict(features=["ssl5@all"], learner="wsum", seeds=2, epochs=20, patience=20, batch_size=8, threads=1,
                device="cpu", stop_on="holdout")
    return build(LearnConfig, base | kw)


# ------------------------------------------------------------------------- specs and loading
def test_multi_layer_spec_forms_and_lists():
    assert parse_specs("wavlm@all") == [FeatureSpec("wavlm", "all")]
    assert parse_specs("wavlm@3-5")[0] == FeatureSpec("wavlm", (3, 4, 5))
    # a bare number continues the layer list before it: the CLI splits --features on commas
    assert parse_specs("wavlm@12,0,6,egemaps") == [FeatureSpec("wavlm", (0, 6, 12)), FeatureSpec("egemaps")]
    assert parse_specs(["wavlm@0", "6", "10-12"])[0].layer == (0, 6, 10, 11, 12)
    assert [s.text for s in parse_specs("wavlm@0-3,12,hubert@2")] == ["wavlm@0-3,12", "hubert@2"]
    assert parse_specs("wavlm@12,egemaps")[0] == FeatureSpec("wavlm", 12)      # one layer stays one layer
    for bad, why in (("wavlm@5-3", "must go up"), ("wavlm@1,1", r"named twice"), ("wavlm@2-2", "must go up")):
        with pytest.raises(FeatureError, match=why):
            parse_specs(bad)
    with pytest.raises(FeatureError, match="layer without a feature set before it"):
        parse_specs("egemaps,3")
    with pytest.raises(FeatureError, match="layer without a feature set before it"):
        parse_specs("wavlm@all,3")


def test_every_layer_is_read_and_standardised_with_its_own_train_statistics(world):
    c = world["corpus"]
    fm = load_features(c, parse_specs("ssl5@all"), world["cache"], echo=lambda m: None)
    b = fm.blocks[0]
    assert (b.layer, b.layers, b.layer_choice, b.width, fm.dim) == (None, [0, 1, 2, 3, 4], "all", 40, 40)
    assert fm.layer_names == [f"ssl5@{k}" for k in range(5)]
    np.testing.assert_array_equal(fm.layer_block(), world["X"].astype(np.float32))    # layer-major columns
    assert np.shares_memory(fm.layer_block(), fm.X)                                     # a view, no copy
    Scaler.fit(fm.X, fm.rows["Train"]).apply_(fm.X)
    tr = fm.layer_block()[fm.rows["Train"]].astype(np.float64)                          # (n_train, L, F)
    np.testing.assert_allclose(tr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(tr.std(0), 1, atol=1e-4)
    sub = load_features(c, parse_specs("ssl5@1-2"), world["cache"], echo=lambda m: None)
    np.testing.assert_array_equal(sub.layer_block(), world["X"][:, 1:3].astype(np.float32))
    assert block_spec(sub.blocks[0].to_json()) == FeatureSpec("ssl5", (1, 2))            # what predict re-reads
    assert "layers" not in load_features(c, parse_specs("ssl5@2"), world["cache"]).blocks[0].to_json()
    import exvo                                                           # the Python API's frame: a column per layer

    df = exvo.load_features(c, "ssl5@1-2", cache_dir=world["cache"], frame=True)
    assert df.shape[1] == 16 and [df.columns[0], df.columns[-1]] == ["ssl5@1:0", "ssl5@2:7"]


def test_multi_layer_refusals_say_what_to_do(world):
    c = world["corpus"]
    with pytest.raises(FeatureError, match=r"layer 7 does not exist; the ssl5 cache has 5 layer"):
        load_features(c, parse_specs("ssl5@0,7"), world["cache"])
    with pytest.raises(FeatureError, match=r"names layer\(s\) \[4\] twice"):
        load_features(c, parse_specs("ssl5@-1,4"), world["cache"])
    with pytest.raises(FeatureError, match="single layer, so @all is that layer; write 'one'"):
        load_features(c, parse_specs("one@all"), world["cache"])
    fm = load_features(c, parse_specs("ssl5@all,one"), world["cache"])      # 5 × 8 + 1 × 8: one width
    assert fm.layer_block().shape == (len(fm.ids), 6, 8)
    with pytest.raises(FeatureError, match=r"layers of one width; got ssl5@all \(5 × 8\) \+ narrow \(1 × 4\)"):
        load_features(c, parse_specs("ssl5@all,narrow"), world["cache"]).layer_block()
    from exvo.extract.cache import EmbeddingCache, cache_path

    with pytest.raises(FeatureError, match="names several layers; this needs one"):
        resolve_layer(FeatureSpec("ssl5", "all"), EmbeddingCache(cache_path(world["cache"], c.name, "ssl5")))


def test_all_of_a_layers_subset_cache_is_its_kept_layers(small_demo_corpus_dir, tmp_path):
    from exvo.extract.cache_writer import CacheWriter
    from exvo.extract.cache import cache_path

    corpus = Corpus.from_dir(small_demo_corpus_dir)
    with CacheWriter(cache_path(tmp_path, corpus.name, "m5"), "m5", {"n_layers": 5, "layers_kept": [1, 4]}) as w:
        for i in corpus.ids:
            w.add(i, np.array([[11.0, 0.0], [14.0, 1.0]], np.float32))
        w.finalize(order=corpus.ids)
    fm = load_features(corpus, parse_specs("m5@all"), tmp_path)
    assert fm.blocks[0].layers == [1, 4] and fm.layer_names == ["m5@1", "m5@4"]
    assert np.all(fm.layer_block()[:, :, 0] == [11.0, 14.0])
    with pytest.raises(FeatureError, match="layer 2 was not kept"):
        load_features(corpus, parse_specs("m5@1-2"), tmp_path)


# ------------------------------------------------------------------------------ wsum
def _fit(name, cfg, X, t, fit_rows, sel_rows, seeds=(0, 1)):
    data = registry.FitData(X, t, fit_rows, sel_rows, list(seeds), TrainConfig(epochs=3, patience=3, batch_size=16),
                            LossConfig(), SelectionConfig(), echo=lambda m: None)
    return registry.get(name).fit(data, cfg)


def test_wsum_on_one_layer_trains_exactly_as_the_mlp(world):
    """softmax of one logit is 1 and its gradient 0; the MLP part is built first under the seed."""
    c = world["corpus"]
    fm = load_features(c, parse_specs("one"), world["cache"])
    t = make_targets(c, fm.ids, fm.rows)
    Scaler.fit(fm.X, fm.rows["Train"]).apply_(fm.X)
    tr, va = fm.rows["Train"], fm.rows["Val"]
    a = _fit("mlp", MLPConfig(arch="sys1"), fm.X, t, tr, va).predict(fm.X)
    b = _fit("wsum", WSumConfig(arch="sys1"), fm.X, t, tr, va).predict(fm.X)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("weights", ["shared", "task"])
def test_wsum_weights_concentrate_on_the_planted_layer(world, weights, tmp_path):
    r = learn(world["corpus"], _quick(options={"weights": weights}), cache_dir=world["cache"], runs_dir=tmp_path,
              echo=lambda m: None)
    rec = json.loads((r.run_dir / "models" / "layer_weights.json").read_text())
    W = np.asarray(rec["weights"])                                       # (models, T, L)
    assert W.shape == (2, 1 if weights == "shared" else 3, 5) and rec["models"] == [0, 1]
    np.testing.assert_allclose(W.sum(-1), 1, atol=1e-6)
    assert (W.argmax(-1) == SIGNAL).all() and (W[..., SIGNAL] > 0.4).all(), W.round(2)
    assert r.config["features"][0]["layers"] == [0, 1, 2, 3, 4] and r.config["dim"] == 40
    assert r.metrics["summary"]["s_mtl"]["mean"] > 0.3
    # exvo predict re-reads the same layers and gives the run's own Val predictions
    out = predict_run(r.run_dir, world["corpus"], world["cache"], split="Val", out=tmp_path / "val.csv")
    assert open(out).read() == (r.run_dir / "val.csv").read_text()
    # the learner config round-trips through the saved run
    assert from_dict(WSumConfig, r.config["learner_config"]) == WSumConfig(weights=weights)


def test_mlp_on_several_layers_is_their_concatenation(world, tmp_path):
    r = learn(world["corpus"], _quick(features=["ssl5@2-3"], learner="mlp", epochs=2), cache_dir=world["cache"],
              runs_dir=tmp_path, echo=lambda m: None)
    assert r.run_dir.name == "ssl5@2-3_mlp_sys2" and r.config["dim"] == 16
    lists = learn(world["corpus"], _quick(features=["ssl5@2,3"], learner="mlp", epochs=2), cache_dir=world["cache"],
                  runs_dir=tmp_path, echo=lambda m: None, name="lists")
    assert json.loads((lists.run_dir / "metrics.json").read_text()) == json.loads((r.run_dir / "metrics.json").read_text())


# ------------------------------------------------------------------------------ the sweep
def _sweep(world, tmp_path, corpus=None, cache=None, **kw):
    cfg = build(LayersConfig, dict(features="ssl5", seeds=2, epochs=20, patience=20, batch_size=8, threads=1,
                                   device="cpu", resamples=40, top_k=2, stop_on="holdout") | kw)
    return sweep(corpus or world["corpus"], cfg, cache_dir=cache or world["cache"], runs_dir=tmp_path,
                 echo=lambda m: None)


def test_sweep_ranks_the_planted_layer_first(world, tmp_path):
    res = _sweep(world, tmp_path)
    rec = res.record
    assert rec["ranking"][0] == SIGNAL and SIGNAL in rec["top_k"] and len(rec["top_k"]) == 2
    by = {c["layer"]: c for c in rec["candidates"] if c["kind"] == "layer"}
    best = by[SIGNAL]["metrics"]
    assert best["ensemble"]["s_mtl"] > max(c["metrics"]["ensemble"]["s_mtl"] for k, c in by.items() if k != SIGNAL)
    lo, hi = best["ci95"]["s_mtl"]
    assert lo <= best["ensemble"]["s_mtl"] + 0.02 and lo < hi           # population CI around a challenge point
    w = next(c for c in rec["candidates"] if c["kind"] == "wsum")["weights"]
    assert int(np.argmax(w["mean"][0])) == SIGNAL and w["seeds"] == [0, 1]
    assert {c["kind"] for c in rec["candidates"]} == {"layer", "wsum", "concat"}
    for f in ("sweep.json", "table.md", "layers.png", "config.json"):
        assert (res.run_dir / f).is_file(), f
    assert res.run_dir.parent.name == "layers" and "| layer 3 * | 1 |" in (res.run_dir / "table.md").read_text()
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert from_dict(LayersConfig, cfg["layers_config"]) == build(
        LayersConfig, features="ssl5", seeds=2, epochs=20, patience=20, batch_size=8, threads=1, device="cpu",
        resamples=40, top_k=2, stop_on="holdout")


@pytest.mark.parametrize("stop_on,stack", [("holdout", 0), ("folds", 0), ("holdout", 1)])
def test_sweep_trains_the_models_of_one_learn_run_per_layer(world, tmp_path, stop_on, stack):
    """The vectorised probes (layers × seeds × folds in one stack, or one layer per stack) give each
    layer the Val scores of `exvo learn --features ssl5@l` with the same protocol: same init,
    batch order, early stopping."""
    kw = dict(seeds=2, epochs=3, patience=3, batch_size=16, stop_on=stop_on, folds=2, arch="sys1")
    rec = _sweep(world, tmp_path, features="ssl5@1-3", stack_params=stack, **kw).record
    for c in (c for c in rec["candidates"] if c["kind"] == "layer"):
        one = learn(world["corpus"], _quick(features=[f"ssl5@{c['layer']}"], learner="mlp", **kw),
                    cache_dir=world["cache"], runs_dir=tmp_path / "loop", echo=lambda m: None).metrics
        for a, b in zip(one["per_seed"], c["metrics"]["per_seed"]):
            for k in ("ccc", "uar", "mae", "s_mtl"):
                assert a[k] == pytest.approx(b[k], abs=1e-5), (c["layer"], k)
        if stop_on == "holdout":
            assert [r["best_epoch"] for r in one["per_seed"]] == c["best_epoch"]


def _with_permuted_val_labels(src, dst):
    """A copy of the corpus table whose Val rows' labels are permuted among themselves."""
    dst.mkdir(parents=True)
    rows = list(csv.reader(open(src / "data_info.csv")))
    head, body = rows[0], rows[1:]
    val = [k for k, r in enumerate(body) if r[1] == "Val"]
    perm = np.random.default_rng(0).permutation(val)
    new = [list(r) for r in body]
    for k, p in zip(val, perm):
        new[k][3:] = body[p][3:]
    with open(dst / "data_info.csv", "w", newline="") as f:
        csv.writer(f).writerows([head, *new])
    return Corpus.from_dir(dst)


def test_sweep_never_lets_val_labels_choose(world, tmp_path):
    """Val labels only score: permuting them leaves the ranking, the top-k, every epoch and the
    weights unchanged (the Val scores do change: the control)."""
    other = _with_permuted_val_labels(world["corpus"].root, tmp_path / "perm" / world["corpus"].root.name)
    shutil.copytree(world["cache"], tmp_path / "cache2")
    kw = dict(epochs=4, patience=4, batch_size=16, resamples=10)
    a = _sweep(world, tmp_path / "a", **kw).record
    b = _sweep(world, tmp_path / "b", corpus=other, cache=tmp_path / "cache2", **kw).record
    assert a["ranking"] == b["ranking"] and a["top_k"] == b["top_k"]
    for x, y in zip(a["candidates"], b["candidates"]):
        assert x["train_score"] == y["train_score"] and x.get("best_epoch") == y.get("best_epoch")
    assert a["candidates"][-2]["weights"] == b["candidates"][-2]["weights"]
    assert a["candidates"][0]["metrics"]["ensemble"] != b["candidates"][0]["metrics"]["ensemble"]


def test_sweep_refusals(world, tmp_path):
    with pytest.raises(FeatureError, match="a sweep needs several layers"):
        _sweep(world, tmp_path, features="ssl5@2")
    with pytest.raises(FeatureError, match="layers of one cache"):
        _sweep(world, tmp_path, features="ssl5,one")
    with pytest.raises(ValueError, match="--final ensemble"):
        _sweep(world, tmp_path, stop_on="folds", final="refit")
    with pytest.raises(ValueError, match="--top-k must be >= 1"):
        _sweep(world, tmp_path, top_k=0)


def test_report_shows_the_sweep_and_the_wsum_weights(world, tmp_path):
    from exvo.fusion.report import make_report

    runs = tmp_path / "runs"
    learn(world["corpus"], _quick(epochs=3), cache_dir=world["cache"], runs_dir=runs, echo=lambda m: None)
    _sweep(world, runs, epochs=3, patience=3, resamples=10)
    text = make_report(runs, tmp_path / "report", corpus=world["corpus"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Layers" in md and "### Layer sweep ssl5@all_layers (ssl5@all)" in md and "weighted sum (shared)" in md
    assert (tmp_path / "report" / "layers_ssl5@all_layers.png").is_file()
    assert (tmp_path / "report" / "wsum_ssl5@all_wsum.png").is_file()
    assert "layer sweep ssl5@all_layers" in text
    # the sweep folder is no run row of the main table
    assert "ssl5@all_layers" not in md.split("## ")[0]


# ------------------------------------------------------------------- a tiny SSL model end to end
def test_tiny_ssl_model_extract_wsum_and_layers_end_to_end(ssl_models, tiny_corpus, tmp_path):
    base = ["--data", str(tiny_corpus), "--cache", str(tmp_path / "c")]
    r = runner.invoke(app, ["extract", "--model", "wavlm", *base, "--checkpoint", str(ssl_models["wavlm"]),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    # 4 Train speakers are too few for a speaker hold-out: the papers' protocol, marked †
    quick = ["--seeds", "2", "--epochs", "2", "--threads", "1", "--device", "cpu", "--runs", str(tmp_path / "r"),
             "--stop-on", "val"]
    r = runner.invoke(app, ["learn", "--features", "wavlm@all", "--learner", "wsum", *base, *quick])
    assert r.exit_code == 0, r.output
    assert "wavlm@all[L0-2]:192" in r.output                                 # 3 layers × (32 mean ‖ 32 std)
    run = tmp_path / "r" / "wavlm@all_wsum"
    assert np.asarray(json.loads((run / "models" / "layer_weights.json").read_text())["weights"]).shape == (2, 1, 3)
    r = runner.invoke(app, ["layers", "--features", "wavlm", *base, *quick, "--resamples", "10", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert "layer sweep wavlm@all_layers (wavlm@all)" in r.output and "best 2 concatenated" in r.output
    assert "the sweep's Val scores are optimistic (†)" in r.output and "ranked by the selection S_MTL on Val †" in r.output
    rec = json.loads((tmp_path / "r" / "layers" / "wavlm@all_layers" / "sweep.json").read_text())
    assert rec["layers"] == [0, 1, 2] and len(rec["candidates"]) == 5
    r = runner.invoke(app, ["predict", str(run), *base, "--split", "Val", "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
