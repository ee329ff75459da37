"""Contract tests over EVERY registered learner and EVERY registered extractor.

Both lists come from the registries at collection time (``exvo.learn.registry.names()``,
``exvo.extract.base.names()``), so a newly registered learner or extractor gets these tests
without touching this file.

Learners (a tiny synthetic problem from ``test_learn``: labels are known functions of the
features; a speaker-disjoint Train hold-out chooses epochs, as in a default run):

* fit → ``save`` → registry ``load`` → ``predict`` gives the same outputs;
* predicting a batch equals predicting its rows one by one and in two halves;
* the labels of the rows that are neither ``fit_rows`` nor ``select_rows`` (Val) are never
  read: permuting them among themselves, or replacing them by other valid labels, leaves the
  Test predictions bit-for-bit unchanged — while permuting the *fit* rows' labels does change
  them (the control that shows the comparison has teeth).

Extractors (the 16-clip ``tiny_corpus``; SSL families get the tiny random checkpoints of
``conftest.ssl_models``, task CNNs train the tiny CNN of ``test_waveform_cnn`` for one epoch):

* every clip gives a finite float32 ``(L, F)`` embedding, the same shape for every clip;
* embedding the same clip twice gives identical vectors;
* ``run`` (the extractor's own, possibly batched / parallel path) equals ``embed_one`` clip by
  clip — exactly for the unbatched paths, within float tolerance for padded batches.

An extractor of a family this file does not know how to build offline is tried with plain
CPU options; if that fails it is skipped with a reason that names it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exvo.config import SelectionConfig, TrainConfig
from exvo.corpus import Corpus, load_audio
from exvo.extract import base as extract_base
from exvo.extract.base import ExtractOptions, embed_one, get_extractor
from exvo.learn import registry
from exvo.learn.multitask import LossConfig
from exvo.learn.selection import selection_rows
from exvo.learn.targets import Targets
from test_learn import _arrays, make_corpus, write_cache

LEARNERS = registry.names()
EXTRACTORS = extract_base.names()
SEEDS = [0, 1]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# =============================================================================== learners
# Shrinks any learner config field of these names (ints only), so a new learner with the usual
# knobs is quick too; per-learner extras where a field is not a size.
QUICK_INTS = {"epochs": 3, "patience": 3, "n_estimators": 6, "early_stopping_rounds": 3, "proj_dim": 16,
              "hidden": 16, "head_hidden": 8, "batch_size": 16, "n_jobs": 1}
QUICK_EXTRA = {"mlp": {"arch": "sys1"}}


def quick_config(name: str):
    learner = registry.get(name)
    opts = {}
    for f in dataclasses.fields(learner.config):
        if f.name in QUICK_INTS and isinstance(f.default, int) and not isinstance(f.default, bool):
            opts[f.name] = QUICK_INTS[f.name]
    opts.update(QUICK_EXTRA.get(name, {}))
    return learner.make_config(opts)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """16 speakers × 8 clips (Train 8 speakers, Val 4, Test 4) of 8-dim standardised features
    (4 informative, 4 noise), targets from Train/Val labels, the default hold-out selection."""
    tmp = tmp_path_factory.mktemp("contracts_learn")
    corpus, z = make_corpus(tmp / "corp", seed=11, n_spk=16, per_spk=8)
    rng = np.random.default_rng(5)
    lin = np.concatenate([z * 3.0 + 1.0, rng.normal(size=(len(corpus), 4))], 1)[:, None, :]
    write_cache(tmp / "cache", corpus, "lin", lin)
    fm, t = _arrays({"corpus": corpus, "cache": tmp / "cache"})
    fit_rows, sel_rows = selection_rows(corpus, fm.ids, fm.rows, SelectionConfig())
    val, test = fm.rows["Val"], fm.rows["Test"]
    assert fit_rows.size and sel_rows.size and val.size and test.size
    assert not set(val) & (set(fit_rows) | set(sel_rows)) and not set(test) & (set(fit_rows) | set(sel_rows))
    assert np.array_equal(np.unique(t.country[fit_rows]), np.arange(4))    # every country in the fit rows (xgb)
    return {"X": fm.X, "targets": t, "fit": fit_rows, "sel": sel_rows, "val": val, "test": test}


def _with_labels(t: Targets, rows: np.ndarray, src: np.ndarray | None = None, rng=None) -> Targets:
    """A copy of ``t`` whose labels of ``rows`` are those of ``src`` (a permutation of ``rows``),
    or fresh random valid labels when ``src`` is None. Train age mean/std are kept."""
    emo, cou, age = t.emotions.copy(), t.country.copy(), t.age.copy()
    if src is not None:
        emo[rows], cou[rows], age[rows] = t.emotions[src], t.country[src], t.age[src]
    else:
        emo[rows] = rng.uniform(size=(rows.size, emo.shape[1])).astype(emo.dtype)
        cou[rows] = rng.integers(0, 4, size=rows.size)
        age[rows] = rng.uniform(5, 90, size=rows.size).round(1)
    return Targets(emo, cou, age, t.age_mean, t.age_std)


def _targets_variant(p, variant: str) -> Targets:
    t, rng = p["targets"], np.random.default_rng(17)
    if variant == "base":
        return t
    if variant == "val_permuted":
        perm = rng.permutation(p["val"])
        assert not np.array_equal(t.emotions[perm], t.emotions[p["val"]])
        return _with_labels(t, p["val"], perm)
    if variant == "val_replaced":
        return _with_labels(t, p["val"], None, rng)
    if variant == "fit_permuted":                 # the control: these labels must matter
        return _with_labels(t, p["fit"], rng.permutation(p["fit"]))
    raise KeyError(variant)


@pytest.fixture(scope="module")
def fits(problem):
    """``fits(name, variant)``: the learner fitted once per (name, variant), same seeds and data."""
    done: dict = {}

    def get(name: str, variant: str = "base"):
        if (name, variant) not in done:
            p = problem
            data = registry.FitData(p["X"], _targets_variant(p, variant), p["fit"], p["sel"], list(SEEDS),
                                    TrainConfig(epochs=3, patience=3, batch_size=16), LossConfig(),
                                    SelectionConfig(), device="cpu", threads=1, echo=lambda m: None)
            done[name, variant] = registry.get(name).fit(data, quick_config(name))
        return done[name, variant]
    return get


def _check_outputs(out, n: int):
    emo, pro, age = out
    S = len(SEEDS)
    assert emo.shape == (S, n, 10) and pro.shape == (S, n, 4) and age.shape == (S, n), \
        (emo.shape, pro.shape, age.shape)
    for a in out:
        assert np.isfinite(a).all()
    assert (emo >= 0).all() and (emo <= 1).all()
    np.testing.assert_allclose(pro.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_save_load_predicts_the_same(name, fits, problem, tmp_path):
    fitted = fits(name)
    assert list(fitted.seeds) == SEEDS and len(fitted.best_epoch) == len(SEEDS)
    X = problem["X"]
    before = fitted.predict(X)
    _check_outputs(before, len(X))
    folder = tmp_path / "models"
    folder.mkdir()
    fitted.save(folder)
    registry.save_meta(folder, name, quick_config(name))
    meta = json.loads((folder / "learner.json").read_text())
    assert meta["learner"] == name
    loaded = registry.get(name).load(folder, "cpu")
    assert list(loaded.seeds) == SEEDS
    after = loaded.predict(X)
    for what, a, b in zip(("emotions", "country", "age"), before, after):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: {what} after save/load")


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_batch_equals_rows_one_by_one_and_halves(name, fits, problem):
    fitted = fits(name)
    rows = problem["test"]
    X = problem["X"][rows]
    whole = fitted.predict(X)
    _check_outputs(whole, len(X))
    h = len(X) // 2
    halves = [np.concatenate(parts, axis=1) for parts in zip(fitted.predict(X[:h]), fitted.predict(X[h:]))]
    ones = [np.concatenate(parts, axis=1) for parts in zip(*(fitted.predict(X[i:i + 1]) for i in range(len(X))))]
    for what, a, b, c in zip(("emotions", "country", "age"), whole, halves, ones):
        # a 1-row matmul may take another BLAS kernel than a 32-row one: float tolerance
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {what}, two halves")
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {what}, one by one")


@pytest.mark.parametrize("variant", ["val_permuted", "val_replaced"])
@pytest.mark.parametrize("name", LEARNERS)
def test_learner_never_reads_val_labels(name, variant, fits, problem):
    """Same seeds, same X, same fit/selection labels: the Test predictions are bit-for-bit the same."""
    X = problem["X"][problem["test"]]
    base = fits(name).predict(X)
    other = fits(name, variant).predict(X)
    for what, a, b in zip(("emotions", "country", "age"), base, other):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: Test {what} moved when the Val labels were {variant}")


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_control_fit_labels_do_matter(name, fits, problem):
    """The control of the test above: permuting the labels of the fit rows must move the Test
    predictions (else the equality above would hold for a learner that ignores all labels)."""
    X = problem["X"][problem["test"]]
    base = fits(name).predict(X)
    other = fits(name, "fit_permuted").predict(X)
    assert not all(np.array_equal(a, b) for a, b in zip(base, other)), f"{name}: fit labels had no effect"


# =============================================================================== extractors
def _family(name: str) -> str:
    return extract_base.find(name).__module__


@pytest.fixture(scope="module")
def tiny(tiny_corpus) -> Corpus:
    return Corpus.from_dir(tiny_corpus)


def _build_ssl(name, corpus, cache, ssl_models):
    from exvo.extract.ssl import SSLExtractor

    # a new SSL name without its own tiny checkpoint runs the code path on the WavLM one
    ckpt = ssl_models.get(name, ssl_models["wavlm"])
    opts = ExtractOptions(checkpoint=str(ckpt), device="cpu", workers=1)
    ex = get_extractor(name, opts)
    # padded batches on the CPU too (the CUDA default), small enough that lengths mix
    batched = SSLExtractor(name, dataclasses.replace(opts, batch_seconds=8.0), batched=True)
    return ex, {"batched": (batched, 1e-4)}


def _build_smile(name, corpus, cache, ssl_models):
    return get_extractor(name, ExtractOptions(device="cpu", workers=1)), {}


def _build_cnn(name, corpus, cache, ssl_models):
    from test_waveform_cnn import _tiny_cfg

    ex = get_extractor(name, ExtractOptions(device="cpu", workers=1, train_epochs=1))
    with pytest.MonkeyPatch.context() as mp:
        _tiny_cfg(mp)                                    # train the tiny CNN (8 channels)
        ex.prepare(corpus, cache)
    return ex, {}


BUILDERS = {"exvo.extract.ssl": _build_ssl, "exvo.extract.smile": _build_smile,
            "exvo.extract.cnn.extractor": _build_cnn}


@pytest.fixture(scope="module")
def extractors(tiny, ssl_models, tmp_path_factory):
    """``extractors(name)`` → ``(extractor, {variant: (extractor, tolerance)})``, built once per name."""
    done: dict = {}
    cache = tmp_path_factory.mktemp("contracts_extract")

    def get(name: str):
        if name not in done:
            build = BUILDERS.get(_family(name))
            if build is None:
                try:
                    ex = get_extractor(name, ExtractOptions(device="cpu", workers=1))
                    ex.prepare(tiny, cache)
                    done[name] = (ex, {})
                except Exception as e:  # noqa: BLE001 - any failure means: not buildable offline here
                    done[name] = f"extractor {name!r} (family {_family(name)}) has no cheap offline builder " \
                                 f"in test_contracts.BUILDERS and plain CPU options fail: {type(e).__name__}: {e}"
            else:
                done[name] = build(name, tiny, cache, ssl_models)
        if isinstance(done[name], str):
            pytest.skip(done[name])
        return done[name]
    yield get
    for v in done.values():
        if not isinstance(v, str):
            for ex in [v[0], *(x for x, _ in v[1].values())]:
                ex.close()


def _items(corpus: Corpus):
    return [(i, corpus.audio_path(i)) for i in corpus.ids]


@pytest.mark.parametrize("name", EXTRACTORS)
def test_extractor_gives_finite_float32_layers_by_dims(name, extractors, tiny):
    ex, _ = extractors(name)
    json.dumps(ex.config())                              # the cache stores it
    results = list(ex.run(_items(tiny)))
    assert sorted(r.id for r in results) == sorted(tiny.ids)
    shapes = set()
    for r in results:
        assert r.error is None, f"{name} {r.id}: {r.error}"
        e = r.embedding
        assert isinstance(e, np.ndarray) and e.dtype == np.float32 and e.ndim == 2 and min(e.shape) >= 1, \
            f"{name} {r.id}: {type(e).__name__} {getattr(e, 'dtype', None)} {getattr(e, 'shape', None)}"
        assert np.isfinite(e).all(), f"{name} {r.id}: non-finite values"
        shapes.add(e.shape)
    assert len(shapes) == 1, f"{name}: clips gave different shapes {shapes}"
    names = ex.feature_names()
    if names is not None:
        assert len(names) == shapes.pop()[1]


@pytest.mark.parametrize("name", EXTRACTORS)
def test_extractor_same_clip_twice_is_identical(name, extractors, tiny):
    ex, _ = extractors(name)
    for cid in tiny.ids[:3]:
        wav = load_audio(tiny.audio_path(cid))
        a, b = np.asarray(ex.embed(wav)), np.asarray(ex.embed(wav.copy()))
        np.testing.assert_array_equal(a, b, err_msg=f"{name} {cid}: embed twice")
    items = _items(tiny)[:4]
    first = {r.id: r.embedding for r in ex.run(items)}
    again = {r.id: r.embedding for r in ex.run(items)}
    for cid in first:
        np.testing.assert_array_equal(first[cid], again[cid], err_msg=f"{name} {cid}: run twice")


@pytest.mark.parametrize("name", EXTRACTORS)
def test_extractor_run_equals_one_by_one(name, extractors, tiny):
    ex, variants = extractors(name)
    items = _items(tiny)
    single = {cid: embed_one(ex, cid, Path(p)) for cid, p in items}
    for cid, r in single.items():
        assert r.error is None, f"{name} {cid}: {r.error}"
    for label, (x, tol) in {"run": (ex, 0.0), **variants}.items():
        got = {r.id: r for r in x.run(items)}
        assert sorted(got) == sorted(single), f"{name} {label}: ids"
        for cid, r in single.items():
            assert got[cid].error is None, f"{name} {label} {cid}: {got[cid].error}"
            if tol == 0.0:
                np.testing.assert_array_equal(got[cid].embedding, r.embedding, err_msg=f"{name} {label} {cid}")
            else:
                np.testing.assert_allclose(got[cid].embedding, r.embedding, rtol=tol, atol=tol,
                                           err_msg=f"{name} {label} {cid}")
