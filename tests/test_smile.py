"""openSMILE extractors: values equal openSMILE's own output; parallel == single-process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import opensmile
import pytest
import soundfile as sf

from exvo.corpus import Corpus, load_audio
from exvo.extract.base import ExtractOptions, get_extractor
from exvo.extract.cache import EmbeddingCache
from exvo.extract.run import extract
from exvo.extract.smile import MIN_SAMPLES, SmileExtractor, WorkerError, _worker_chunk
from procs import PPID, live_where


def _smile(feature_set):
    return opensmile.Smile(feature_set=feature_set, feature_level=opensmile.FeatureLevel.Functionals)


def test_egemaps_cache_equals_opensmile(tiny_corpus, tmp_path):
    corpus = Corpus.from_dir(tiny_corpus)
    s = extract(corpus, "egemaps", tmp_path, ExtractOptions(workers=2), progress=False)
    assert s.ok and s.n_extracted == len(corpus) == 16
    cache = EmbeddingCache(s.cache)
    assert (cache.n_layers, cache.dim) == (1, 88)
    ref_smile = _smile(opensmile.FeatureSet.eGeMAPSv02)
    assert cache.feature_names == list(ref_smile.feature_names)
    feats = cache.layer(0)
    for k, cid in enumerate(cache.ids):
        ref = ref_smile.process_signal(load_audio(corpus.audio_path(cid)), 16000).values[0]
        np.testing.assert_array_equal(feats[k], ref.astype(np.float32), err_msg=cid)
    cfg = cache.config
    assert cfg["feature_set"] == "eGeMAPSv02" and cfg["opensmile_version"] == opensmile.__version__
    assert cfg["sample_rate"] == 16000 and cfg["feature_level"] == "Functionals"


def test_compare_has_6373_functionals_equal_to_opensmile(tiny_corpus):
    corpus = Corpus.from_dir(tiny_corpus)
    items = [(i, corpus.audio_path(i)) for i in corpus.ids[:2]]
    ex = get_extractor("compare", ExtractOptions(workers=1))
    ref_smile = _smile(opensmile.FeatureSet.ComParE_2016)
    assert len(ex.feature_names()) == 6373
    for r in ex.run(items):
        assert r.embedding.shape == (1, 6373) and r.embedding.dtype == np.float32
        ref = ref_smile.process_signal(load_audio(corpus.audio_path(r.id)), 16000).values
        np.testing.assert_array_equal(r.embedding, ref)


def test_parallel_equals_single_process(tiny_corpus, tmp_path):
    corpus = Corpus.from_dir(tiny_corpus)
    # a corrupt file in the middle: one error, every other clip still extracted
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    items = [(i, corpus.audio_path(i)) for i in corpus.ids]
    items.insert(5, ("[bad]", bad))
    serial = {r.id: r for r in SmileExtractor("egemaps", ExtractOptions(workers=1)).run(items)}
    par = {r.id: r for r in SmileExtractor("egemaps", ExtractOptions(workers=2)).run(items)}
    assert set(par) == set(serial) == {i for i, _ in items}
    assert "not a readable audio file" in par["[bad]"].error and serial["[bad]"].error == par["[bad]"].error
    for cid in corpus.ids:
        assert par[cid].error is None
        np.testing.assert_array_equal(par[cid].embedding, serial[cid].embedding)


def _crash_on_00003(chunk):
    """A worker that dies (as a native crash would) when its chunk holds clip [00003]."""
    if any(cid == "[00003]" for cid, _ in chunk):
        os._exit(1)
    return _worker_chunk(chunk)


def test_worker_crash_costs_only_its_file(tiny_corpus):
    corpus = Corpus.from_dir(tiny_corpus)
    items = [(i, corpus.audio_path(i)) for i in corpus.ids]
    ex = SmileExtractor("egemaps", ExtractOptions(workers=2))
    ex._chunk_fn = _crash_on_00003
    got = {r.id: r for r in ex.run(items)}
    assert set(got) == set(corpus.ids)
    assert "worker process crashed" in got["[00003]"].error
    ok = [i for i in corpus.ids if i != "[00003]"]
    assert all(got[i].error is None and got[i].embedding.shape == (1, 88) for i in ok)


def _always_crash(chunk):
    os._exit(1)


def test_workers_that_cannot_run_at_all_stop_the_run_with_advice(tiny_corpus):
    corpus = Corpus.from_dir(tiny_corpus)
    items = [(i, corpus.audio_path(i)) for i in corpus.ids[:9]]      # two chunks: the pool is used
    ex = SmileExtractor("egemaps", ExtractOptions(workers=2))
    ex._chunk_fn = _always_crash
    got = []
    with pytest.raises(WorkerError, match=r"died on 3 clips in a row .*--workers 1 to see the error"):
        for r in ex.run(items):
            got.append(r)
    assert len(got) == 2 and all("worker process crashed" in r.error for r in got)


def _live_children() -> list[int]:
    """Pids of this process's children that are not zombies."""
    return live_where(PPID, os.getpid())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_stopping_early_leaves_no_worker_behind(tiny_corpus):
    """What Ctrl-C or --max-failures does to the results generator: its workers are gone when close() returns."""
    corpus = Corpus.from_dir(tiny_corpus)
    items = [(i, corpus.audio_path(i)) for i in corpus.ids]
    before = set(_live_children())
    results = SmileExtractor("egemaps", ExtractOptions(workers=2)).run(items)
    next(results)
    assert set(_live_children()) - before          # the pool is running
    results.close()
    # loky's resource tracker may stay: it serves the whole process and exits with it
    assert not set(_live_children()) - before - _trackers()


def test_the_pool_is_killed_with_ctrl_c_ignored_so_a_second_press_cannot_break_it(tiny_corpus, monkeypatch):
    """Issue 27, case 19: without psutil loky runs `pgrep -P` (a process of our group) to kill each worker;
    a second Ctrl-C killed it and the exit hung. During the kill this process and its children ignore it."""
    import signal

    from exvo.extract import smile

    corpus = Corpus.from_dir(tiny_corpus)
    items = [(i, corpus.audio_path(i)) for i in corpus.ids]
    seen = []
    real = smile.kill_pool

    def watching(pool):
        real_shutdown = pool.shutdown

        def shutdown(*a, **k):
            seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), k.get("kill_workers")))
            return real_shutdown(*a, **k)

        pool.shutdown = shutdown
        return real(pool)

    monkeypatch.setattr(smile, "kill_pool", watching)
    before = signal.getsignal(signal.SIGINT)
    results = SmileExtractor("egemaps", ExtractOptions(workers=2)).run(items)
    next(results)
    results.close()                                   # what Ctrl-C does to the generator
    assert seen == [(signal.SIG_IGN, signal.SIG_IGN, True)]
    assert signal.getsignal(signal.SIGINT) is before      # the handler is back once the workers are gone


def _trackers() -> set[int]:
    def cmd(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            return ""
    return {pid for pid in _live_children() if "resource_tracker" in cmd(pid)}


def test_a_script_without_a_main_guard_runs_the_workers(tiny_corpus, tmp_path):
    """loky's workers do not re-run the caller's ``__main__``, so a plain script works."""
    script = tmp_path / "plain.py"
    script.write_text(
        "from exvo.corpus import Corpus\n"
        "from exvo.extract.base import ExtractOptions\n"
        "from exvo.extract.smile import SmileExtractor\n"
        f"c = Corpus.from_dir({str(tiny_corpus)!r})\n"
        "rs = list(SmileExtractor('egemaps', ExtractOptions(workers=2)).run([(i, c.audio_path(i)) for i in c.ids]))\n"
        "print(len(rs), sum(r.error is None for r in rs))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["16", "16"] and "Traceback" not in r.stderr


def test_too_short_clip_is_padded_and_noted(tmp_path):
    wav = (0.1 * np.random.default_rng(0).standard_normal(500)).astype(np.float32)
    sf.write(tmp_path / "short.wav", wav, 16000, subtype="FLOAT")
    (r,) = list(get_extractor("egemaps", ExtractOptions(workers=1)).run([("s", tmp_path / "short.wav")]))
    assert r.error is None and "padded" in r.note
    ref = _smile(opensmile.FeatureSet.eGeMAPSv02).process_signal(np.pad(wav, (0, MIN_SAMPLES - 500)), 16000).values
    np.testing.assert_array_equal(r.embedding, ref)
    assert np.isfinite(r.embedding).all()


def test_negative_workers_refused():
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        get_extractor("egemaps", ExtractOptions(workers=-1))
