"""Frame-level cache (issue 15): ragged round trip, pooling, resume after kill -9, refusals,
and the GRU-transformer verify path reading it."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exvo.config import build
from exvo.corpus import Corpus
from exvo.extract.cache import CacheError, CacheMismatch
from exvo.extract.frames import FrameCache, FrameWriter, frames_path, pool_frames
from exvo.extract.frames_run import extract_frames
from exvo.metrics import EMOTIONS

HERE = Path(__file__).resolve().parent


def test_pool_frames_known_answer():
    f = np.arange(10, dtype=np.float32).reshape(5, 2)          # frames (0,1) (2,3) (4,5) (6,7) (8,9)
    np.testing.assert_array_equal(pool_frames(f, 2), [[1, 2], [5, 6], [8, 9]])   # last group: 1 frame
    np.testing.assert_array_equal(pool_frames(f, 1), f)
    np.testing.assert_array_equal(pool_frames(f, 8), [[4, 5]])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_ragged_sequences_round_trip_exactly_in_corpus_order(tmp_path, dtype):
    rng = np.random.default_rng(0)
    ids = [f"[{k:05d}]" for k in range(9)]
    seqs = {i: rng.normal(size=(int(rng.integers(1, 12)), 3)).astype(np.float32) for i in ids}
    path = tmp_path / "c" / "m.frames.h5"
    with FrameWriter(path, "m", {"v": 1}, dtype=dtype, part_size=2) as w:
        for i in ids[::-1][:5]:                                  # added out of order, across parts
            w.add(i, seqs[i])
        w.finalize(order=ids, files=[])
    with FrameWriter(path, "m", {"v": 1}, dtype=dtype, part_size=2) as w:   # a second run adds the rest
        assert w.done == set(ids[4:])
        for i in ids[:4]:
            w.add(i, seqs[i])
        w.finalize(order=ids, files=[])
    c = FrameCache(path)
    assert c.ids == ids and c.dim == 3
    np.testing.assert_array_equal(c.lengths_of(ids), [len(seqs[i]) for i in ids])
    np.testing.assert_array_equal(c.offsets, np.concatenate([[0], np.cumsum([len(seqs[i]) for i in ids])]))
    for i, got in zip(ids, c.iter_sequences(ids)):
        np.testing.assert_array_equal(got, seqs[i].astype(dtype).astype(np.float32))
    assert not (tmp_path / "c" / "m.frames.parts").exists()     # parts are gone once the file is whole


def test_other_settings_and_bad_frames_are_refused(tmp_path):
    path = tmp_path / "m.frames.h5"
    with FrameWriter(path, "m", {"pool_frames": 2}) as w:
        w.add("[a]", np.ones((3, 2)))
        with pytest.raises(CacheError, match="expected \\(n_frames >= 1, dim\\)"):
            w.add("[b]", np.ones((0, 2)))
        with pytest.raises(CacheError, match="NaN"):
            w.add("[c]", np.full((2, 2), np.nan))
        w.finalize(order=["[a]"], files=[])
    with pytest.raises(CacheMismatch, match="pool_frames: cache=2 requested=4.*--overwrite"):
        FrameWriter(path, "m", {"pool_frames": 4}).__enter__()
    with FrameWriter(path, "m", {"pool_frames": 4}, overwrite=True) as w:
        assert not w.done                                       # starts afresh …
    assert FrameCache(path).config["pool_frames"] == 2          # … but the old file stays until a new one is whole
    path.write_bytes(path.read_bytes()[:200])                   # truncated: never read as zeros
    with pytest.raises(CacheError, match="damaged"):
        FrameCache(path)


def _run_driver(corpus, cache, ckpt, die):
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(HERE / "frames_driver.py"), str(corpus), str(cache), str(ckpt),
                           "--die", die], capture_output=True, text=True, env=env, timeout=300)


def test_frames_resume_after_kill9_equals_an_uninterrupted_run(tiny_corpus, ssl_models, tmp_path):
    sys.path.insert(0, str(HERE))
    from frames_driver import FRAME_ARGS

    from exvo.extract.base import ExtractOptions

    import torch

    corpus = Corpus.from_dir(tiny_corpus)
    opts = ExtractOptions(checkpoint=str(ssl_models["wavlm"]), device="cpu", dtype="float32")
    # the killed runs use one thread (OMP_NUM_THREADS=1): so must the reference and the resume, since
    # another thread count sums in another order (differences of ~1e-7, not what this test is about)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _kill9_and_resume(corpus, tiny_corpus, ssl_models, tmp_path, opts, FRAME_ARGS)
    finally:
        torch.set_num_threads(old)


def _kill9_and_resume(corpus, tiny_corpus, ssl_models, tmp_path, opts, FRAME_ARGS):
    ref = extract_frames(corpus, "wavlm", tmp_path / "ref", opts, **FRAME_ARGS)
    assert ref.n_extracted == len(corpus.ids) and not ref.failures
    want = FrameCache(frames_path(tmp_path / "ref", corpus.name, "wavlm"))
    assert want.config["frames"]["layer"] == 1 and want.config["frames"]["pool_frames"] == 2
    cache = tmp_path / "killed"
    r = _run_driver(tiny_corpus, cache, ssl_models["wavlm"], "part:3")      # dies inside the 3rd part write
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    r = _run_driver(tiny_corpus, cache, ssl_models["wavlm"], "h5-replace")  # resumes, dies before the rename
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not frames_path(cache, corpus.name, "wavlm").exists()
    s = extract_frames(corpus, "wavlm", cache, opts, **FRAME_ARGS)
    assert s.n_cached_before == len(corpus.ids) and s.n_extracted == 0     # all kept across both kills
    got = FrameCache(frames_path(cache, corpus.name, "wavlm"))
    assert got.ids == want.ids and got.config == want.config
    np.testing.assert_array_equal(got.offsets, want.offsets)
    for a, b in zip(got.iter_sequences(got.ids), want.iter_sequences(want.ids)):
        np.testing.assert_array_equal(a, b)
    assert not list(cache.rglob("*.tmp*"))
    assert not list(cache.rglob("*.lock"))       # the last writer removed its lock file (a killed one's too)


def test_verify_reads_a_frame_cache_with_the_gru_transformer(tmp_path):
    from exvo.verify.api import verify
    from exvo.verify.config import VerifyConfig
    from exvo.verify.encoder import EncoderConfig

    rng = np.random.default_rng(0)
    classes = ["Amusement", "Awe", "Distress", "Awkwardness"]
    n_spk, per = 12, 10
    cls = rng.integers(0, 4, size=n_spk * per)
    splits = ["Train"] * 6 + ["Val"] * 6                          # no Test: queries from held-out Val speakers
    root = tmp_path / "corp"
    root.mkdir()
    with open(root / "data_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS])
        for k in range(len(cls)):
            sp = splits[k // per]
            emo = [0.9 if e == classes[cls[k]] else 0.1 for e in EMOTIONS]
            w.writerow([f"[{k:05d}]", sp, f"S{k // per}", *([0, 30, "x", *emo] if sp != "Test" else [""] * 13)])
    corpus = Corpus.from_dir(root)
    means = np.eye(4) * 3.0
    with FrameWriter(frames_path(tmp_path / "cache", corpus.name, "toy"), "toy", {"toy": 1}, dtype="float32") as fw:
        for k, i in enumerate(corpus.ids):
            T = int(rng.integers(2, 9))
            fw.add(i, means[cls[k]] + rng.normal(size=(T, 4)))
        fw.finalize(order=corpus.ids, files=[])
    cfg = build(VerifyConfig, features="toy", seen=classes[:3], task=["Amusement", "Awkwardness"], enrol=2, seeds=1,
                       epochs=3, n_per_class=3, device="cpu", curve=(), reference=False,
                       encoder_cfg=EncoderConfig(gru=16, heads=2, ff=16))
    res = verify(corpus, cfg, tmp_path / "cache", tmp_path / "runs", echo=lambda m: None)
    assert res.metrics["encoder"] == "gru" and res.metrics["margin"]["mean"] < 0
    assert res.metrics["uar"]["mean"] > 0.7
