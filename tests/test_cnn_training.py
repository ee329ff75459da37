"""Task CNN training: the all-frames sampler, the lr schedule, ER tie-breaking, cross-fitting, reloading."""
import hashlib
import json

import numpy as np
import pytest
import torch

from exvo.corpus import Corpus, load_audio
from exvo.extract.base import ExtractOptions, get_extractor
from exvo.extract.cache import EmbeddingCache
from exvo.extract.cnn.labels import strongest_emotion, tie_break
from exvo.splits import speaker_folds
from exvo.extract.cnn.sampler import AllFramesSampler, FramePool, fixed_chunks
from exvo.extract.cnn.train import PlateauHalving
from exvo.extract.run import extract

TINY = dict(channels=(4, 4, 4, 4))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _visits(batches, k):
    seen = []
    for b in batches:
        assert b.clips.size <= 3 and (b.count >= 1).all() and (b.count <= k).all()
        for c, f, n in zip(b.clips, b.first, b.count):
            seen += [(int(c), int(f) + j) for j in range(n)]
    return seen


@pytest.mark.parametrize("k", [1, 4, 16])
def test_sampler_visits_every_window_exactly_once_per_pass(k):
    n_frames = np.array([1, 2, 17, 40, 5, 16, 33])
    everything = sorted((c, f) for c, n in enumerate(n_frames) for f in range(n))
    s = AllFramesSampler(n_frames, k=k, batch=3, seed=4)
    orders = []
    for _ in range(3):                                   # three passes = three epochs
        seen = _visits(s.epoch(None), k)
        assert sorted(seen) == everything                # each window once, nothing else
        orders.append(seen)
    assert orders[0] != orders[1]                        # reshuffled each pass
    # fixed-size epochs cut the same passes: every window still once per pass
    s2 = AllFramesSampler(n_frames, k=k, batch=3, seed=4)
    seen = []
    while len(seen) < 2 * n_frames.sum():
        seen += _visits(s2.epoch(25), k)
    assert sorted(seen[: n_frames.sum()]) == everything and sorted(seen[n_frames.sum(): 2 * n_frames.sum()]) == everything


def test_sampler_segments_are_the_windows():
    rng = np.random.default_rng(0)
    sigs = [rng.standard_normal(n).astype(np.float32) for n in (4000, 4000 + 160 * 9 + 50, 1200)]
    pool = FramePool(sigs, np.array([0, 1, 0]), 4000, 160)
    assert list(pool.n_frames) == [1, 10, 1]
    b = fixed_chunks(pool.n_frames, 4)
    assert list(zip(b.clips, b.first, b.count)) == [(0, 0, 1), (1, 0, 4), (1, 4, 4), (1, 8, 2), (2, 0, 1)]
    seg = pool.segments(b.clips, b.first, 4)
    assert seg.shape == (5, 4000 + 3 * 160)
    f16 = [s.astype(np.float16).astype(np.float32) for s in sigs]
    np.testing.assert_array_equal(seg[2, :4000], f16[1][640:4640])      # frame 4 of clip 1
    np.testing.assert_array_equal(seg[4, :1200], f16[2]) and np.testing.assert_array_equal(seg[4, 1200:], 0)
    np.testing.assert_array_equal(seg[3, :4210], f16[1][1280:])          # frames 8, 9: the clip's last 4210 samples
    np.testing.assert_array_equal(seg[3, 4210:], 0)                      # past clip 1's end: zeros


def test_lr_halves_exactly_on_plateaus_and_stops_below_1e6():
    s = PlateauHalving(0.1, 1e-6, best=2.0, improvement=0.0)
    lrs, flags = [], []
    losses = [1.5, 1.6, 1.4, 1.4] + [1.5] * 30
    for loss in losses:
        if s.done:
            break
        lrs.append(s.lr)
        flags.append(s.step(loss))
    assert flags[:4] == [True, False, True, False]
    assert lrs[:5] == [0.1, 0.1, 0.05, 0.05, 0.025]
    for a, b, f in zip(lrs, lrs[1:], flags):
        assert b == (a if f else a / 2)
    assert min(lrs) == pytest.approx(0.1 / 2 ** 16) and min(lrs) >= 1e-6 and s.lr < 1e-6
    assert flags.count(False) == 17                      # 0.1 → 1e-6 takes 17 halvings
    assert not PlateauHalving(0.1, 1e-6, best=1.0, improvement=0.01).step(0.995)   # < 1 % is no gain


def test_training_never_selects_the_untrained_weights():
    """Held-out labels are the opposite of the training labels, so every epoch makes the
    cross-validation loss worse than the random start; the first epoch is kept regardless."""
    from exvo.extract.cnn.model import CNNConfig, build_model
    from exvo.extract.cnn.train import TrainConfig, fit

    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    tone = {0: np.sin(2 * np.pi * 300 * t), 1: np.sign(np.sin(2 * np.pi * 2500 * t))}
    sigs = [(tone[k % 2] + 0.05 * rng.standard_normal(t.size)).astype(np.float16) for k in range(8)]
    y = np.arange(8) % 2
    torch.manual_seed(0)
    model = build_model(CNNConfig(n_classes=2, **TINY))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    hist = fit(model, FramePool(sigs, y, 4000, 160), FramePool(sigs[:4], 1 - y[:4], 4000, 160),
               TrainConfig(max_epochs=3, lr_start=0.05), "cpu", echo=lambda m: None)
    assert hist[0]["improved"]
    assert hist[0]["heldout_loss"] > np.log(2)                # worse than chance: training did move
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_er_ties_are_broken_by_file_id_not_order():
    e = np.zeros((4, 10))
    e[0, [0, 3, 7]] = 1.0                    # tie of Awe, Awkwardness, Triumph
    e[1, 2] = 0.9
    e[2, [0, 1]] = 0.5
    e[3, 4] = np.nan
    ids = ["[00007]", "[00001]", "[00002]", "[00003]"]
    y, ties = strongest_emotion(e, ids)
    pick = int(hashlib.sha256(b"[00007]").hexdigest(), 16) % 3
    assert y[0] == [0, 3, 7][pick] and y[1] == 2 and y[3] == -1 and ties == 2
    assert y[2] == [0, 1][int(hashlib.sha256(b"[00002]").hexdigest(), 16) % 2]
    y_rev, _ = strongest_emotion(e[::-1], ids[::-1])
    assert np.array_equal(y_rev[::-1], y)                # row order does not matter
    many = [tie_break(f"[{i:05d}]", 10) for i in range(2000)]
    assert min(np.bincount(many, minlength=10)) > 150    # spread over the tied emotions, not all Awe


def test_speaker_folds_keep_speakers_together():
    spk = np.repeat([f"S{i}" for i in range(7)], 3)
    f = speaker_folds(spk, 3, seed=0)
    for s in set(spk):
        assert len(set(f[spk == s])) == 1
    assert sorted(np.bincount([f[spk == s][0] for s in sorted(set(spk))])) == [2, 2, 3]
    with pytest.raises(ValueError, match="--crossfit 8"):
        speaker_folds(spk, 8, 0)


def _tiny(monkeypatch):
    import exvo.extract.cnn.extractor as ex

    orig = ex.train_cnn

    def small(*a, **k):
        k.setdefault("model_config", TINY)
        return orig(*a, **k)

    monkeypatch.setattr(ex, "train_cnn", small)


def test_crossfit_never_embeds_a_clip_with_a_cnn_that_saw_its_speaker(small_demo_corpus_dir, tmp_path, monkeypatch):
    _tiny(monkeypatch)
    c = Corpus.from_dir(small_demo_corpus_dir)
    cache = tmp_path / "cache"
    opts = ExtractOptions(train_epochs=1, device="cpu", crossfit=2, cnn_seeds=2)
    s = extract(c, "zff_exvo_er", cache, opts, progress=False)
    assert s.ok and s.n_extracted == len(c)
    emb = EmbeddingCache(cache / c.name / "zff_exvo_er.h5")
    assert emb.n_layers == 2 and emb.dim == 20 and emb.config["crossfit"] == 2
    ex = get_extractor("zff_exvo_er", opts)
    ex.prepare(c, cache)                                 # reuses the 2 × (1 + 2) saved models
    train = set(c.split_ids("Train"))
    spk = dict(zip(c.ids, c.speakers))
    used = set()
    for cid in c.ids:
        models = ex.models_for(cid)
        assert len(models) == 2
        for m in models:
            seen = set(m.info["speakers_seen"])
            if cid in train:
                assert spk[cid] not in seen
            else:
                assert m in ex.full and not set(c.speakers[c.indices("Train")]) - seen - {spk[cid]}
            used.add(str(m.path))
    assert len(used) == 6
    # the cache holds exactly what those models give (seed layers in order)
    some = [c.split_ids("Train")[0], c.split_ids("Val")[0]]
    again = np.stack([ex.embed_with_note(load_audio(c.audio_path(i)), i)[0] for i in some])
    np.testing.assert_allclose(emb.all_layers(some), again, rtol=1e-5, atol=1e-6)
    assert not np.allclose(again[0, 0], ex.embed(load_audio(c.audio_path(some[0])))[0])  # Train: not the full CNN


def test_reloaded_model_gives_the_same_embeddings(small_demo_corpus_dir, tmp_path):
    from exvo.extract.cnn.model import clip_embeddings
    from exvo.extract.cnn.train import load_model, train_cnn

    c = Corpus.from_dir(small_demo_corpus_dir)
    p = train_cnn(c, "Country", "raw", tmp_path / "m.pt", epochs=1, device="cpu", model_config=TINY,
                  echo=lambda s: None)
    info = json.loads(p.with_suffix(".json").read_text())
    assert {"clip_uar", "clip_war", "window_uar"} <= set(info["val_metrics"]) and info["model_config"]["arch"] == "paper"
    a, b = load_model(p), load_model(p)
    x = load_audio(c.audio_path(c.ids[5]))
    ea, _ = clip_embeddings(a.model, x)
    eb, _ = clip_embeddings(b.model, x)
    assert a.sha256 == b.sha256 == info["weights_sha256"] and float(a.model.input_scale) != 1.0
    np.testing.assert_array_equal(ea, eb)


def test_bad_cnn_options_are_refused_with_a_message():
    with pytest.raises(ValueError, match="--crossfit must be 0 \\(off\\) or K >= 2 folds, got 1"):
        get_extractor("raw_exvo_er", ExtractOptions(crossfit=1))
    with pytest.raises(ValueError, match="--cnn-arch must be one of"):
        get_extractor("raw_exvo_er", ExtractOptions(cnn_arch="wide"))


# ----------------------------------------------------------------------------- issue 27, case 5
def test_training_killed_after_some_epochs_resumes_bit_identically(small_demo_corpus_dir, tmp_path):
    """A per-epoch checkpoint: killed in epoch 3 of 4, the next call trains epochs 3 and 4 only and ends
    with the very weights and history of an uninterrupted training."""
    from exvo.extract.cnn.files import checkpoint_path, load_model
    from exvo.extract.cnn.train import TrainConfig, train_cnn

    c = Corpus.from_dir(small_demo_corpus_dir)
    # a plateau (weights restored, lr halved) inside the run: the checkpoint must carry the schedule too
    kw = dict(epochs=4, device="cpu", model_config=TINY, evaluate=False, seed=3,
              train_config=TrainConfig(windows_per_epoch=3000, improvement=0.2))
    whole = train_cnn(c, "Country", "raw", tmp_path / "whole.pt", echo=lambda m: None, **kw)

    class Killed(Exception):
        pass

    def kill_in_epoch_3(msg):
        if msg.startswith("  epoch   3"):
            raise Killed                   # after epochs 1-2 were saved, as kill -9 would
    cut = tmp_path / "cut.pt"
    with pytest.raises(Killed):
        train_cnn(c, "Country", "raw", cut, echo=kill_in_epoch_3, **kw)
    assert checkpoint_path(cut).is_file() and not cut.exists()
    said: list[str] = []
    train_cnn(c, "Country", "raw", cut, echo=said.append, **kw)
    trained = [m.split(":")[0].split()[1] for m in said if m.startswith("  epoch ")]
    assert trained == ["3", "4"], said                       # not from epoch 1 again
    assert any(m.startswith(f"  resuming after epoch 2 from {checkpoint_path(cut)}") for m in said), said
    a, b = load_model(tmp_path / "whole.pt"), load_model(cut)
    assert a.sha256 == b.sha256                              # bit-identical weights
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "windows_per_s")} for h in a.info["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in ("seconds", "windows_per_s")} for h in b.info["history"]]
    assert [h["lr"] for h in a.info["history"]] != [0.1] * 4       # the schedule did halve: a real plateau
    assert not checkpoint_path(cut).exists() and not checkpoint_path(whole).exists()   # served, removed


def test_a_checkpoint_of_other_settings_is_not_resumed(small_demo_corpus_dir, tmp_path):
    from exvo.extract.cnn.files import checkpoint_path, load_model
    from exvo.extract.cnn.train import TrainConfig, train_cnn

    c = Corpus.from_dir(small_demo_corpus_dir)
    kw = dict(epochs=2, device="cpu", model_config=TINY, evaluate=False,
              train_config=TrainConfig(windows_per_epoch=2000))

    class Killed(Exception):
        pass

    def kill_in_epoch_2(msg):
        if msg.startswith("  epoch   2"):
            raise Killed
    p = tmp_path / "m.pt"
    with pytest.raises(Killed):
        train_cnn(c, "Country", "raw", p, echo=kill_in_epoch_2, seed=1, **kw)
    said: list[str] = []
    train_cnn(c, "Country", "raw", p, echo=said.append, seed=2, **kw)          # another seed: another training
    assert any("is the checkpoint of a training with other settings or clips; training from the first epoch" in m
               for m in said), said
    fresh = train_cnn(c, "Country", "raw", tmp_path / "fresh.pt", echo=lambda m: None, seed=2, **kw)
    assert load_model(p).sha256 == load_model(fresh).sha256
    assert not checkpoint_path(p).exists()
