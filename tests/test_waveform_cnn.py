"""Task CNNs: model shapes, band-pass sinc filters, training, extraction, custom models."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from exvo.corpus import Corpus
from exvo.extract.base import ExtractOptions, find, get_extractor
from exvo.extract.cache import CacheMismatch, EmbeddingCache
from exvo.extract.run import extract
from exvo.extract.cnn.extractor import train_custom_cnn
from exvo.extract.cnn.model import CNNConfig, build_model, clip_embeddings, weights_sha256
from exvo.extract.cnn.sampler import FramePool
from exvo.extract.cnn.train import TrainConfig, fit, load_model, prepare_signal

SR = 16_000
TINY = dict(channels=(8, 8, 8, 8))                                       # paper arch, fewer channels
TINY_SINC = dict(arch="sinc", channels=(8, 8, 8, 8), kernels=(33, 5, 5, 5))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(n_classes=3, seed=0, cfg=TINY):
    torch.manual_seed(seed)
    return build_model(CNNConfig(n_classes=n_classes, **cfg)).eval()


@pytest.mark.parametrize("cfg", [TINY, TINY_SINC])
def test_shapes_and_embedding_is_pre_activation(cfg):
    m = tiny(5, cfg=cfg)
    x = torch.randn(3, 4000)
    logits, emb = m(x)
    assert logits.shape == (3, 5) and emb.shape == (3, 10)
    assert (emb < 0).any()                 # taken before the ReLU
    with torch.no_grad():
        np.testing.assert_allclose(m.out(torch.relu(emb)).numpy(), logits.detach().numpy(), rtol=1e-6)


def test_paper_architecture_by_default():
    cfg = CNNConfig(n_classes=10)
    m = build_model(cfg)
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv1d)]
    assert cfg.arch == "paper" and len(convs) == 4 and convs[0].stride == (10,)
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in m.modules()) == 4
    assert m.fc.out_features == 10 and m.out.out_features == 10 and cfg.downsampling == 160
    plain = build_model(CNNConfig(n_classes=10, batch_norm=False))     # the paper's layers without BN
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in plain.modules())
    assert [type(x).__name__ for x in plain.convs[0]] == ["Conv1d", "ReLU", "MaxPool1d"]


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of the total pooling"):
        CNNConfig(n_classes=2, pools=(3, 3, 3, 3))
    with pytest.raises(ValueError, match="must be odd"):
        CNNConfig(n_classes=2, arch="sinc", kernels=(100, 5, 5, 5))
    with pytest.raises(ValueError, match="unknown CNN architecture 'wide'"):
        CNNConfig(n_classes=2, arch="wide")
    with pytest.raises(ValueError, match="at least 2 classes"):
        CNNConfig(n_classes=1)


@pytest.mark.parametrize("perturb", [False, True])
def test_sinc_filters_are_band_pass(perturb):
    torch.manual_seed(1)
    m = build_model(CNNConfig(n_classes=2, arch="sinc", channels=(16, 32, 32, 32), kernels=(129, 5, 5, 5)))
    if perturb:   # any parameter values must still give band-pass filters
        with torch.no_grad():
            m.first.low_khz.add_(0.3 * torch.randn(16))
            m.first.band_khz.add_(0.3 * torch.randn(16))
    with torch.no_grad():
        h = m.first.filters().numpy().astype(np.float64)
        low, high = (t.numpy() for t in m.first.cutoffs())
    nfft = 8192
    gain = np.abs(np.fft.rfft(h, nfft, axis=1))
    freqs = np.fft.rfftfreq(nfft, 1 / SR)
    trans = 4.0 * SR / 129          # Hamming transition band (≈ 3.3 fs / N) with margin
    for k in range(16):
        assert 0 < low[k] < high[k] <= SR / 2
        stop = (freqs < low[k] - trans) | (freqs > high[k] + trans)
        if stop.any():
            assert gain[k, stop].max() < 0.02, (k, low[k], high[k])
        if high[k] - low[k] > 2 * trans:   # wide enough for a flat pass band
            centre = np.argmin(np.abs(freqs - (low[k] + high[k]) / 2))
            assert gain[k, centre] == pytest.approx(1.0, abs=0.03)
    # a filter entirely above 500 Hz blocks DC (speech's zero frequency)
    assert all(gain[k, 0] < 0.02 for k in range(16) if low[k] > 500)


@pytest.mark.parametrize("cfg", [TINY, TINY_SINC, {**TINY, "batch_norm": False}])
def test_whole_clip_extraction_equals_frame_by_frame(cfg):
    m = tiny(4, seed=3, cfg=cfg)
    with torch.no_grad():   # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(4000 + 160 * 37 + 77)).astype(np.float32)
    emb, note = clip_embeddings(m, x, chunk_frames=5)    # several chunks, uneven last one
    assert note is None and emb.shape == (38, 10)
    frames = np.stack([x[i * 160: i * 160 + 4000] for i in range(38)])
    with torch.no_grad():
        ref = np.concatenate([m(torch.from_numpy(f[None]))[1].numpy() for f in frames])
    np.testing.assert_allclose(emb, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_short_clip_is_zero_padded_and_noted():
    m = tiny(2)
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    emb, note = clip_embeddings(m, x)
    assert emb.shape == (1, 10) and "padded" in note and "0.062 s" in note
    with torch.no_grad():
        ref = m(torch.from_numpy(np.pad(x, (0, 3000))[None]))[1].numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-6)


def _band_noise(rng, lo, hi, n):
    from scipy.signal import butter, sosfilt

    return (0.3 * sosfilt(butter(4, (lo, hi), btype="bandpass", fs=SR, output="sos"),
                          rng.standard_normal(n))).astype(np.float32)


def test_tiny_training_overfits_a_few_clips():
    rng = np.random.default_rng(0)
    bands = [(100, 400), (500, 1200), (1500, 3000), (3500, 6000), (300, 900), (2000, 5000)]
    sigs = [_band_noise(rng, lo, hi, 6000 + 500 * k) for k, (lo, hi) in enumerate(bands)]
    y = np.array([0, 1, 2, 0, 1, 2])
    pool = FramePool(sigs, y, 4000, 160)
    m = tiny(3)
    with torch.no_grad():
        m.input_scale.fill_(1 / pool.rms())
    hist = fit(m, pool, pool, TrainConfig(max_epochs=12, frames_per_chunk=4, batch_chunks=4), "cpu",
               echo=lambda s: None)
    assert len(hist) == 12 and all(h["windows"] == pool.total_frames for h in hist)
    with torch.no_grad():
        pred = [int(m.frame_logits(torch.from_numpy(s[None].astype(np.float32)))[0][0].softmax(1).sum(0).argmax())
                for s in sigs]
    assert np.mean(np.array(pred) == y) >= 5 / 6
    assert min(h["heldout_loss"] for h in hist) < 0.5


def _tiny_cfg(monkeypatch):
    """Make built-in extractors train the tiny model (fast tests)."""
    import exvo.extract.cnn.extractor as wc

    orig = wc.train_cnn

    def small(*a, **k):
        k.setdefault("model_config", TINY)
        return orig(*a, **k)

    monkeypatch.setattr(wc, "train_cnn", small)


def test_seeded_training_is_reproducible(small_demo_corpus_dir, tmp_path):
    c = Corpus.from_dir(small_demo_corpus_dir)
    kw = dict(epochs=2, device="cpu", model_config=TINY, echo=lambda s: None, evaluate=False)
    from exvo.extract.cnn.train import train_cnn

    shas = []
    for k, seed in enumerate([5, 5, 6]):
        p = train_cnn(c, "emotion", "zff", tmp_path / f"m{k}.pt", seed=seed, **kw)
        shas.append(json.loads(p.with_suffix(".json").read_text())["weights_sha256"])
        assert load_model(p).sha256 == shas[-1]
    assert shas[0] == shas[1] != shas[2]


def test_builtin_extractor_trains_once_extracts_and_reloads(small_demo_copy, tmp_path, monkeypatch):
    _tiny_cfg(monkeypatch)
    c = Corpus.from_dir(small_demo_copy)
    short_id = c.split_ids("Test")[0]
    sf.write(c.audio_path(short_id), np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.1, SR)
    cache = tmp_path / "cache"
    opts = ExtractOptions(train_epochs=1, device="cpu")
    s = extract(c, "raw_exvo_cr", cache, opts, progress=False)
    assert s.ok and s.n_extracted == len(c)
    assert [i for i, _ in s.notes] == [short_id] and "padded" in s.notes[0][1]
    model = cache / c.name / "models" / "raw_exvo_cr.pt"
    info = json.loads(model.with_suffix(".json").read_text())
    assert info["classes"] == ["China", "South Africa", "United States", "Venezuela"]
    assert info["signal"] == "raw" and info["train_config"]["max_epochs"] == 1
    assert set(info["val_metrics"]) >= {"window_uar", "window_war", "clip_uar", "clip_war"}
    emb = EmbeddingCache(cache / c.name / "raw_exvo_cr.h5")
    assert emb.n_layers == 1 and emb.dim == 20 and emb.config["weights_sha256"] == info["weights_sha256"]
    # a fresh extractor reuses the saved model (no retraining) and gives the same embeddings
    mtime = model.stat().st_mtime_ns
    ex = get_extractor("raw_exvo_cr", opts)
    ex.prepare(c, cache)
    assert model.stat().st_mtime_ns == mtime
    ids = [c.ids[0], short_id]
    from exvo.corpus import load_audio

    again = np.stack([ex.embed(load_audio(c.audio_path(i))) for i in ids])
    np.testing.assert_allclose(again, emb.all_layers(ids), rtol=1e-5, atol=1e-6)
    # pooled by hand from frame-by-frame recomputation
    lm = load_model(model)
    long_id = next(i for i in c.ids if load_audio(c.audio_path(i)).size >= 8000)   # several 250 ms windows
    wav = load_audio(c.audio_path(long_id))
    n = 1 + (wav.size - 4000) // 160
    with torch.no_grad():
        fr = lm.model(torch.from_numpy(np.stack([wav[i * 160: i * 160 + 4000] for i in range(n)])))[1].numpy()
    by_hand = np.concatenate([fr.mean(0), fr.std(0)])
    np.testing.assert_allclose(emb.all_layers([long_id])[0, 0], by_hand, rtol=1e-4, atol=1e-5)
    # retraining (other weights) changes the config: the old cache is refused unless --overwrite
    model.unlink()
    with pytest.raises(CacheMismatch, match="weights_sha256"):
        extract(c, "raw_exvo_cr", cache, ExtractOptions(train_epochs=1, device="cpu", seed=1), progress=False)
    s = extract(c, "raw_exvo_cr", cache, ExtractOptions(train_epochs=1, device="cpu", seed=1), overwrite=True,
                progress=False)
    assert s.ok and EmbeddingCache(cache / c.name / "raw_exvo_cr.h5").config["weights_sha256"] != info["weights_sha256"]


def test_custom_string_labels_train_and_extract_on_another_corpus(small_demo_copy, small_demo_corpus_dir, tmp_path):
    # a "Mood" column of strings, not tied to speakers
    table = small_demo_copy / "data_info.csv"
    rows = list(csv.reader(open(table, newline="")))
    rows[0].append("Mood")
    for k, r in enumerate(rows[1:]):
        r.append(["calm", "tense", "calm "][k % 3])    # stray space: stripped
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    train_corpus = Corpus.from_dir(small_demo_copy)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="'Moood' not found .*available: .*Mood"):
        train_custom_cnn(train_corpus, name="raw_mood", label_column="Moood", cache_dir=cache)
    with pytest.raises(ValueError, match="built-in extractor"):
        train_custom_cnn(train_corpus, name="raw_exvo_er", label_column="Mood", cache_dir=cache)
    assert find("raw_mood", cache) is None
    path = train_custom_cnn(train_corpus, name="raw_mood", label_column="Mood", signal="zff", cache_dir=cache,
                            epochs=1, device="cpu", seed=0, echo=lambda s: None, model_config=TINY)
    assert path == cache / "models" / "raw_mood.pt"
    lm = load_model(path)
    assert lm.meta["classes"] == ["calm", "tense"] and lm.meta["signal"] == "zff"
    # the name now resolves as an extractor (with this cache) and extracts on another corpus
    assert find("raw_mood", cache) is not None
    with pytest.raises(KeyError, match="unknown extractor 'raw_mood'"):
        get_extractor("raw_mood", cache_dir=tmp_path / "elsewhere")
    other = Corpus.from_dir(small_demo_corpus_dir)
    s = extract(other, "raw_mood", cache, ExtractOptions(device="cpu"), progress=False)
    assert s.ok and s.n_extracted == len(other)
    e = EmbeddingCache(cache / other.name / "raw_mood.h5")
    assert e.all_layers().shape == (len(other), 1, 20)
    assert e.config["signal"] == "zff" and e.config["trained_on"] == train_corpus.name
    from exvo.corpus import load_audio

    wav = load_audio(other.audio_path(other.ids[2]))
    x = prepare_signal(wav, "zff")
    fr, _ = clip_embeddings(lm.model, x)
    np.testing.assert_allclose(e.all_layers([other.ids[2]])[0, 0], np.concatenate([fr.mean(0), fr.std(0)]),
                               rtol=1e-4, atol=1e-5)


def test_cli_accepts_custom_names(small_demo_corpus_dir, tmp_path):
    from typer.testing import CliRunner

    from exvo.cli import app

    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["extract", "--model", "raw_nothing", "--data", str(small_demo_corpus_dir),
                                 "--cache", str(cache)])
    assert r.exit_code == 2 and "exvo train-cnn" in r.output
    r = CliRunner().invoke(app, ["train-cnn", "--name", "raw_cou", "--label-column", "Country_string",
                                 "--data", str(small_demo_corpus_dir), "--cache", str(cache), "--epochs", "0",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (cache / "models" / "raw_cou.pt").is_file() and "saved" in r.output
    r = CliRunner().invoke(app, ["extract", "--model", "raw_cou", "--data", str(small_demo_corpus_dir),
                                 "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert (cache / small_demo_corpus_dir.name / "raw_cou.h5").is_file()


def test_weights_hash_tracks_weights():
    a, b = tiny(2, seed=0), tiny(2, seed=0)
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert weights_sha256(a) != weights_sha256(b)


def test_load_model_rejects_other_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"format": "something-else"}, p)
    with pytest.raises(ValueError, match="not an exvo waveform CNN"):
        load_model(p)
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable exvo CNN"):
        load_model(p)
    with pytest.raises(FileNotFoundError, match="no trained CNN"):
        load_model(tmp_path / "missing.pt")


def test_heldout_split_is_random_speakers_ten_percent():
    from exvo.splits import holdout_split

    speakers = np.repeat([f"S{i}" for i in range(30)], 5)
    rows = np.arange(speakers.size)
    draws = set()
    for seed in range(5):
        fit, held = holdout_split(rows, speakers, None, 0.1, seed)
        assert set(speakers[held]).isdisjoint(speakers[fit]) and len(set(speakers[held])) == 3
        assert np.array_equal(np.sort(np.concatenate([fit, held])), rows)
        draws.add(tuple(sorted(set(speakers[held]))))
        assert np.array_equal(held, holdout_split(rows, speakers, None, 0.1, seed)[1])        # seeded
    assert len(draws) > 1
    with pytest.raises(ValueError, match="at least 2 speakers"):
        holdout_split(np.arange(2), np.array(["a", "a"]), None, 0.1, 0)
