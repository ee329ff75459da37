"""Issue #16: ``--layers`` keeps a subset of layers under the model's own indices; ``--normalize``
overrides the checkpoint's input normalisation and is recorded, so caches never mix."""
from __future__ import annotations

import numpy as np
import pytest

from exvo.corpus import Corpus, load_audio
from exvo.extract.base import ExtractOptions
from exvo.extract.cache import CacheMismatch, EmbeddingCache, cache_path
from exvo.extract.cache_writer import CacheWriter
from exvo.extract.layers import parse_layers
from exvo.extract.run import extract
from exvo.extract.ssl import SSLExtractor
from exvo.learn.features import FeatureError, FeatureSpec, load_features, parse_specs, resolve_layer
from exvo.learn.probe import probe_layers


def test_parse_layers_forms():
    assert parse_layers("0,6,12,18,24", 25) == [0, 6, 12, 18, 24]
    assert parse_layers("24, 0,6", 25) == [0, 6, 24]            # sorted, as stored
    assert parse_layers("last", 25) == [24]
    assert parse_layers("-1,0", 25) == [0, 24]
    assert parse_layers("all", 25) is None and parse_layers(None, 3) is None
    assert parse_layers("0,1,2", 3) is None                       # every layer = no subset (same cache)
    with pytest.raises(ValueError, match=r"layer 25 does not exist; this extractor has 25 layer\(s\)"):
        parse_layers("0,25", 25)
    with pytest.raises(ValueError, match="comma-separated layer indices"):
        parse_layers("0-3", 25)


@pytest.fixture(scope="module")
def subset_world(small_demo_corpus_dir, tmp_path_factory):
    """A cache of a 5-layer model that kept layers 1 and 4: stored layer k holds the value 10 + original index."""
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    cache = tmp_path_factory.mktemp("layers")
    path = cache_path(cache, corpus.name, "m5")
    rng = np.random.default_rng(0)
    with CacheWriter(path, "m5", {"n_layers": 5, "layers_kept": [1, 4]}) as w:
        for i in corpus.ids:
            x = rng.normal(size=(2, 3)).astype(np.float32)
            x[:, 0] = [11.0, 14.0]
            w.add(i, x)
        w.finalize(order=corpus.ids)
    return corpus, cache, EmbeddingCache(path)


def test_reader_maps_the_model_layer_to_the_stored_one(subset_world):
    corpus, cache, c = subset_world
    assert c.layer_ids == [1, 4] and c.n_layers == 2
    assert resolve_layer(FeatureSpec("m5", 4), c) == (4, "given")
    assert resolve_layer(FeatureSpec("m5", -1), c) == (4, "given")     # from the model's last layer
    assert resolve_layer(FeatureSpec("m5", 1), c) == (1, "given")
    assert resolve_layer(FeatureSpec("m5"), c) == (4, "last")
    fm = load_features(corpus, parse_specs("m5@4"), cache)
    assert np.all(fm.X[:, 0] == 14.0) and fm.blocks[0].layer == 4
    fm = load_features(corpus, parse_specs("m5@1"), cache)
    assert np.all(fm.X[:, 0] == 11.0) and fm.blocks[0].layer == 1


def test_a_layer_that_was_not_kept_is_refused_with_the_fix(subset_world):
    corpus, cache, c = subset_world
    with pytest.raises(FeatureError) as e:
        load_features(corpus, parse_specs("m5@2"), cache)
    assert "layer 2 was not kept in the m5 cache" in str(e.value)
    assert "stores layers 1,4" in str(e.value) and "--layers including 2" in str(e.value)
    with pytest.raises(FeatureError, match=r"layer 5 does not exist; the m5 cache has 5 layer\(s\)"):
        resolve_layer(FeatureSpec("m5", 5), c)


def test_best_layer_probe_reports_the_model_layers(subset_world):
    corpus, _, c = subset_world
    layer, info = probe_layers(c, corpus)
    assert layer in (1, 4) and sorted(info["layer_scores"]) == [1, 4]


# ----------------------------------------------------------------------------- SSL end to end
def _opts(folder, **kw) -> ExtractOptions:
    return ExtractOptions(checkpoint=str(folder), device="cpu", **kw)


def test_ssl_layers_subset_equals_the_full_cache_columns(ssl_models, tiny_corpus, tmp_path):
    corpus = Corpus.from_dir(tiny_corpus)
    ids = corpus.ids[:4]
    full = extract(corpus, "wavlm", tmp_path / "full", _opts(ssl_models["wavlm"]), ids=ids, progress=False)
    sub = extract(corpus, "wavlm", tmp_path / "sub", _opts(ssl_models["wavlm"], layers="0,last"), ids=ids,
                  progress=False)
    A, B = EmbeddingCache(full.cache), EmbeddingCache(sub.cache)
    assert "layers_kept" not in A.config and B.config["layers_kept"] == [0, 2] and B.layer_ids == [0, 2]
    assert B.ids == A.ids
    np.testing.assert_array_equal(B.all_layers(), A.all_layers()[:, [0, 2]])
    # the same cache folder refuses a different subset instead of mixing them
    with pytest.raises(CacheMismatch, match="layers_kept"):
        extract(corpus, "wavlm", tmp_path / "sub", _opts(ssl_models["wavlm"], layers="1"), ids=ids, progress=False)
    # naming every layer is the default cache, not a new one
    s = extract(corpus, "wavlm", tmp_path / "full", _opts(ssl_models["wavlm"], layers="0,1,2"), ids=ids,
                progress=False)
    assert s.n_extracted == 0 and s.n_cached_before == len(ids)


def test_normalize_overrides_the_checkpoint_and_is_recorded(ssl_models, tiny_corpus, tmp_path):
    folder = ssl_models["wavlm"]        # its preprocessor normalises (do_normalize=True)
    ck, on, off = (SSLExtractor("wavlm", _opts(folder, normalize=m)) for m in ("checkpoint", "on", "off"))
    assert [e.config()["input"]["do_normalize"] for e in (ck, on, off)] == [True, True, False]
    assert ck.config() == on.config()   # same numbers, same cache
    corpus = Corpus.from_dir(tiny_corpus)
    wav = load_audio(corpus.audio_path(corpus.ids[0]))
    wav = 0.2 * wav / max(1e-6, float(np.abs(wav).max())) + 0.05     # not zero-mean, not unit variance
    np.testing.assert_array_equal(ck.embed(wav), on.embed(wav))
    by_hand = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)           # what do_normalize does
    np.testing.assert_allclose(off.embed(by_hand.astype(np.float32)), on.embed(wav), rtol=1e-4, atol=1e-4)
    assert not np.allclose(off.embed(wav), on.embed(wav), atol=1e-3)
    ids = corpus.ids[:2]
    extract(corpus, "wavlm", tmp_path / "c", _opts(folder), ids=ids, progress=False)
    with pytest.raises(CacheMismatch, match="do_normalize"):
        extract(corpus, "wavlm", tmp_path / "c", _opts(folder, normalize="off"), ids=ids, progress=False)
    with pytest.raises(ValueError, match="--normalize must be on, off or checkpoint"):
        ExtractOptions(normalize="yes")
