"""SSL extractors (wavlm / hubert / wav2vec2) against direct transformers forward passes.

The references are computed here by hand: feature extractor → ``model(x,
output_hidden_states=True)`` → mean and population std over frames, per layer.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from exvo.corpus import Corpus, load_audio
from exvo.extract.base import ExtractOptions, get_extractor
from exvo.extract.cache import EmbeddingCache
from exvo.extract.run import extract
from exvo.extract.ssl import CheckpointError, SSLExtractor

KINDS = ("wavlm", "hubert", "wav2vec2")


def _opts(folder, **kw) -> ExtractOptions:
    return ExtractOptions(checkpoint=str(folder), device="cpu", **kw)


def _reference_model(folder):
    from transformers import AutoFeatureExtractor, AutoModel

    return AutoModel.from_pretrained(folder).eval(), AutoFeatureExtractor.from_pretrained(folder)


def _hidden(model, x: np.ndarray) -> np.ndarray:
    """``(L, frames, H)`` float64 hidden states of one unpadded input."""
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None], output_hidden_states=True)
    return np.stack([h[0].numpy() for h in out.hidden_states]).astype(np.float64)


def _ref_embedding(model, fe, wav: np.ndarray) -> np.ndarray:
    x = fe(wav, sampling_rate=16000, return_tensors="np").input_values[0].astype(np.float32)
    h = _hidden(model, x)
    # by hand: mean over frames, population std = sqrt(mean of squared deviations)
    mean = h.sum(axis=1) / h.shape[1]
    std = np.sqrt(((h - mean[:, None, :]) ** 2).sum(axis=1) / h.shape[1])
    return np.concatenate([mean, std], axis=1)


def _results(ex, items):
    out = {r.id: r for r in ex.run(items)}
    assert len(out) == len(items)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_cache_equals_direct_forward(kind, ssl_models, tiny_corpus, tmp_path):
    corpus = Corpus.from_dir(tiny_corpus)
    s = extract(corpus, kind, tmp_path / "cache", _opts(ssl_models[kind]), progress=False)
    assert s.ok and s.n_extracted == len(corpus)
    cache = EmbeddingCache(s.cache)
    model, fe = _reference_model(ssl_models[kind])
    assert cache.n_layers == model.config.num_hidden_layers + 1 == 3
    assert cache.dim == 2 * model.config.hidden_size == 64
    feats = cache.all_layers()
    for k, cid in enumerate(cache.ids[:6]):
        ref = _ref_embedding(model, fe, load_audio(corpus.audio_path(cid)))
        np.testing.assert_allclose(feats[k], ref, rtol=1e-5, atol=1e-5, err_msg=f"{kind} {cid}")
    cfg = cache.config
    assert cfg["checkpoint"] == str(ssl_models[kind]) and len(cfg["weights_sha256"]) == 64
    assert cfg["sample_rate"] == 16000 and cfg["precision"] == "fp32" and cfg["code_version"]
    assert cfg["chunking"]["chunk_samples"] > 0 and "ddof=0" in cfg["pooling"]


def test_weights_hash_tells_checkpoints_apart(ssl_models):
    a = SSLExtractor("wavlm", _opts(ssl_models["wavlm"])).config()
    b = SSLExtractor("wavlm", _opts(ssl_models["hubert"])).config()
    assert a["weights_sha256"] != b["weights_sha256"]


@pytest.mark.parametrize("kind", ["wavlm", "hubert"])
def test_padded_batches_equal_one_by_one(kind, ssl_models, tiny_corpus, monkeypatch):
    corpus = Corpus.from_dir(tiny_corpus)
    items = [(i, corpus.audio_path(i)) for i in corpus.ids]
    single = _results(SSLExtractor(kind, _opts(ssl_models[kind])), items)
    ex = SSLExtractor(kind, _opts(ssl_models[kind], batch_seconds=8.0), batched=True)
    shapes = []
    orig = ex._embed_batch

    def spy(clips):
        shapes.append(sorted(c.x.size for c in clips))
        return orig(clips)

    monkeypatch.setattr(ex, "_embed_batch", spy)
    batched = _results(ex, items)
    # the test must exercise real padding: some batch mixes different lengths
    assert any(len(set(s)) > 1 for s in shapes), shapes
    assert all(len(s) * max(s) <= 8.0 * 16000 for s in shapes)
    for cid in single:
        np.testing.assert_allclose(batched[cid].embedding, single[cid].embedding, rtol=1e-4, atol=1e-4,
                                   err_msg=cid)


def test_group_norm_model_is_never_padded(ssl_models, tmp_path, monkeypatch):
    """wav2vec2-base style (return_attention_mask=False): padding changes its output, so no padding."""
    folder = ssl_models["wav2vec2"]
    model, fe = _reference_model(folder)
    rng = np.random.default_rng(0)
    wavs = {"a": rng.standard_normal(8000), "b": rng.standard_normal(8000), "c": rng.standard_normal(12000)}
    items = []
    for k, w in wavs.items():
        sf.write(tmp_path / f"{k}.wav", (0.1 * w).astype(np.float32), 16000, subtype="FLOAT")
        items.append((k, tmp_path / f"{k}.wav"))
    # why: zero padding does change a group-norm front end
    x = fe(load_audio(items[0][1]), sampling_rate=16000, return_tensors="np").input_values[0].astype(np.float32)
    h_pad = _hidden(model, np.pad(x, (0, 4000)))[:, : _hidden(model, x).shape[1]]
    assert np.abs(h_pad - _hidden(model, x)).max() > 1e-3

    ex = SSLExtractor("wav2vec2", _opts(folder, batch_seconds=60.0), batched=True)
    assert not ex.pad_ok
    calls = []
    orig = ex._forward

    def spy(x, mask=None):
        calls.append((tuple(x.shape), mask))
        return orig(x, mask)

    monkeypatch.setattr(ex, "_forward", spy)
    got = _results(ex, items)
    assert sorted(c[0] for c in calls) == [(1, 12000), (2, 8000)]   # equal lengths batched, never padded
    assert all(m is None for _, m in calls)
    for k, path in items:
        np.testing.assert_allclose(got[k].embedding, _ref_embedding(model, fe, load_audio(path)), rtol=1e-5, atol=1e-5)


def test_long_clip_is_chunked_with_exact_statistics(ssl_models):
    folder = ssl_models["wavlm"]
    model, fe = _reference_model(folder)
    ex = SSLExtractor("wavlm", _opts(folder, chunk_seconds=0.51))
    # 0.51 s = 8160 samples, rounded down to a multiple of the 320-sample hop: 8000
    assert ex.chunk_samples == 8000
    assert ex._chunks(20800) == [(0, 8000), (8000, 16000), (16000, 20800)]
    assert ex._chunks(16000 + 200) == [(0, 8000), (8000, 16200)]       # short tail joins its neighbour
    wav = (0.1 * np.random.default_rng(1).standard_normal(20800)).astype(np.float32)
    x = fe(wav, sampling_rate=16000, return_tensors="np").input_values[0].astype(np.float32)
    hs = [_hidden(model, x[a:b]) for a, b in [(0, 8000), (8000, 16000), (16000, 20800)]]
    n = sum(h.shape[1] for h in hs)
    assert n == 24 + 24 + 14      # (8000 - 400) // 320 + 1 and (4800 - 400) // 320 + 1
    s = sum(h.sum(axis=1) for h in hs)
    ss = sum((h ** 2).sum(axis=1) for h in hs)
    mean = s / n
    ref = np.concatenate([mean, np.sqrt(ss / n - mean ** 2)], axis=1)
    got = ex.embed(wav)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # chunking changes context, so the numbers differ from one pass over the whole clip
    whole = SSLExtractor("wavlm", _opts(folder)).embed(wav)
    assert np.abs(whole - got).max() > 1e-4


def test_too_short_clip_is_padded_and_noted(ssl_models, tmp_path):
    folder = ssl_models["hubert"]
    model, fe = _reference_model(folder)
    wav = (0.1 * np.random.default_rng(2).standard_normal(250)).astype(np.float32)
    sf.write(tmp_path / "short.wav", wav, 16000, subtype="FLOAT")
    (r,) = list(SSLExtractor("hubert", _opts(folder)).run([("short", tmp_path / "short.wav")]))
    assert r.error is None and "padded" in r.note and "400 samples" in r.note
    x = fe(wav, sampling_rate=16000, return_tensors="np").input_values[0].astype(np.float32)
    h = _hidden(model, np.pad(x, (0, 150)))
    assert h.shape[1] == 1
    ref = np.concatenate([h.mean(axis=1), np.zeros_like(h[:, 0])], axis=1)
    np.testing.assert_allclose(r.embedding, ref, rtol=1e-5, atol=1e-5)


def test_bad_file_does_not_stop_the_others(ssl_models, tmp_path):
    sf.write(tmp_path / "ok.wav", np.zeros(4000, np.float32) + 0.01, 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    for batched in (False, True):
        ex = SSLExtractor("wavlm", _opts(ssl_models["wavlm"]), batched=batched)
        got = _results(ex, [("bad", tmp_path / "bad.wav"), ("ok", tmp_path / "ok.wav")])
        assert "not a readable audio file" in got["bad"].error
        assert got["ok"].error is None and got["ok"].embedding.shape == (3, 64)


def test_missing_local_checkpoint_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint folder .*nowhere does not exist; pass `--checkpoint`"):
        get_extractor("wavlm", _opts(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"has no config.json"):
        get_extractor("hubert", _opts(tmp_path / "empty"))


def test_hub_checkpoint_without_network_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"could not load the wavlm checkpoint 'microsoft/wavlm-large' "
                                              r"offline.*--checkpoint /path/to/local/folder.*huggingface-cli download"):
        get_extractor("wavlm", ExtractOptions(device="cpu"))


def test_missing_preprocessor_config_falls_back_and_says_so(ssl_model_no_preprocessor):
    with pytest.warns(UserWarning, match="no preprocessor_config.json"):
        ex = SSLExtractor("wavlm", _opts(ssl_model_no_preprocessor))
    cfg = ex.config()
    assert cfg["feature_extractor"] == "defaults" and cfg["input"]["do_normalize"] is True


def test_bad_options_are_refused(ssl_models):
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        SSLExtractor("wavlm", _opts(ssl_models["wavlm"], precision="fp16"))
    with pytest.raises(ValueError, match="--precision must be fp32, fp16 or bf16, got 'fp8'"):
        SSLExtractor("wavlm", _opts(ssl_models["wavlm"], precision="fp8"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            SSLExtractor("wavlm", ExtractOptions(checkpoint=str(ssl_models["wavlm"]), device="cuda"))


def test_config_round_trips_through_the_cache(ssl_models, tiny_corpus, tmp_path):
    corpus = Corpus.from_dir(tiny_corpus)
    ex = SSLExtractor("wav2vec2", _opts(ssl_models["wav2vec2"]))
    s = extract(corpus, ex, tmp_path, ids=corpus.ids[:2], progress=False)
    cfg = EmbeddingCache(s.cache).config
    assert json.loads(json.dumps(ex.config())).items() <= cfg.items()
    assert cfg["input"] == {"do_normalize": True, "return_attention_mask": False}
