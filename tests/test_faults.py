"""Faults during extraction: kill -9, Ctrl-C, disk full, concurrent runs, mismatched or damaged
caches. The invariant everywhere: nothing already written is lost, nothing wrong is read,
and resuming gives the very bytes of an uninterrupted run."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import fault_extractor
from fault_corpus import good_corpus
from fault_extractor import InterruptAfter, RmsExtractor
from exvo.corpus import Corpus
from exvo.extract.cache import CacheBusy, CacheError, CacheMismatch, EmbeddingCache, cache_path
from exvo.extract.cache_writer import CacheWriter
from exvo.extract.run import extract

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "extract_driver.py"
N = 60


@pytest.fixture(scope="module")
def corpus_and_reference(tmp_path_factory):
    """A 60-clip corpus and its uninterrupted cache (the reference every fault run must equal)."""
    base = tmp_path_factory.mktemp("faults")
    root = base / "corpus"
    ids = good_corpus(root, N)
    corpus = Corpus.from_dir(root)
    s = extract(corpus, RmsExtractor(), base / "ref", progress=False)
    assert s.n_extracted == N and s.ok
    return corpus, ids, cache_path(base / "ref", corpus.name, fault_extractor.NAME)


def _h5(path: Path) -> tuple[list[str], np.ndarray, tuple]:
    with h5py.File(path, "r") as f:
        d = f["features"]
        return [s.decode() for s in f["ids"][()]], d[()], d.chunks


def assert_same_cache(path: Path, ref: Path) -> None:
    ids, x, chunks = _h5(path)
    rids, rx, rchunks = _h5(ref)
    assert ids == rids
    assert x.dtype == rx.dtype and x.shape == rx.shape and chunks == rchunks
    assert x.tobytes() == rx.tobytes()  # byte for byte
    assert EmbeddingCache(path).config == EmbeddingCache(ref).config


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.rglob("*") if ".tmp" in p.name or p.suffix == ".damaged")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def run_driver(corpus: Corpus, cache: Path, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), str(corpus.root), str(cache), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env())


def start_driver(corpus: Corpus, cache: Path, *args) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, str(DRIVER), str(corpus.root), str(cache), *map(str, args)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    line = p.stdout.readline()
    assert line.strip() == "READY", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def read_until(p: subprocess.Popen, line: str) -> None:
    """Read the driver's stdout up to ``line`` (the event it reports), failing if it ends first."""
    for got in iter(p.stdout.readline, ""):
        if got.strip() == line:
            return
    pytest.fail(f"the driver ended (exit {p.wait()}) before printing {line!r}: {p.stderr.read()[-2000:]}")


def n_in_parts(cache: Path, corpus: Corpus) -> int:
    parts = cache_path(cache, corpus.name, fault_extractor.NAME).with_suffix(".parts")
    n = 0
    for p in parts.glob("part-*.npz"):
        with np.load(p) as z:
            n += len(z["ids"])
    return n


# ----------------------------------------------------------------------------- kill -9
def test_kill9_at_random_points_then_resume_equals_uninterrupted(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    cache = tmp_path / "cache"
    rng = random.Random(7)
    kept = [0]
    for kill in range(4):
        p = start_driver(corpus, cache, "--part-size", 4, "--pause-at", at := rng.randint(1, N - kept[-1] - 1))
        read_until(p, f"PAUSED {at}")        # the run itself says where it is: `at` clips into this run
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL
        kept.append(n_in_parts(cache, corpus))
        # nothing already saved was lost, every part this run filled is on disk, the rest died with it
        assert kept[-1] == kept[-2] + at // 4 * 4, (kept, at)
    kept = kept[1:]
    assert kept[-1] > 0, kept
    r = run_driver(corpus, cache, "--part-size", 4)
    assert r.returncode == 0, r.stderr
    done, before = map(int, r.stdout.split("DONE")[1].split())
    assert before == kept[-1] and done == N - kept[-1]
    assert_same_cache(cache_path(cache, corpus.name, fault_extractor.NAME), ref)
    assert leftovers(cache) == []


@pytest.mark.parametrize("mode", ["part-tmp:3", "h5-write", "h5-replace", "after-replace"])
def test_kill9_inside_a_write_then_resume(corpus_and_reference, tmp_path, mode):
    corpus, ids, ref = corpus_and_reference
    cache = tmp_path / "cache"
    path = cache_path(cache, corpus.name, fault_extractor.NAME)
    r = run_driver(corpus, cache, "--part-size", 8, "--die", mode)
    assert r.returncode == -signal.SIGKILL, (r.stdout, r.stderr)
    if mode == "part-tmp:3":
        assert any(n.startswith("part-000002.npz.tmp") for n in leftovers(cache))   # the killed write
        assert n_in_parts(cache, corpus) == 16                                       # two whole parts
        assert not path.exists()
    elif mode in ("h5-write", "h5-replace"):
        assert any(n.startswith(path.name + ".tmp") for n in leftovers(cache))
        assert not path.exists() and n_in_parts(cache, corpus) == N
    else:  # after-replace: the .h5 is whole and readable, parts not yet removed
        assert EmbeddingCache(path).ids == ids and n_in_parts(cache, corpus) == N
    r = run_driver(corpus, cache, "--part-size", 8)
    assert r.returncode == 0, r.stderr
    assert_same_cache(path, ref)
    assert leftovers(cache) == []                      # stale temporary files were removed
    assert not path.with_suffix(".parts").exists()


def test_sigint_keeps_parts_and_resumes(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    cache = tmp_path / "cache"
    p = start_driver(corpus, cache, "--pause-at", 17)   # part size 64 > N: nothing flushed by size
    read_until(p, "PAUSED 17")                          # the event: 17 clips computed, none on disk yet
    assert n_in_parts(cache, corpus) == 0
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "INTERRUPTED" in out, err
    k = n_in_parts(cache, corpus)
    assert k == 17                                   # what was computed was saved on the way out
    r = run_driver(corpus, cache)
    assert r.returncode == 0 and f"DONE {N - k} {k}" in r.stdout
    assert_same_cache(cache_path(cache, corpus.name, fault_extractor.NAME), ref)


_Interrupting = InterruptAfter


def test_keyboard_interrupt_in_process_keeps_parts(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    ex = _Interrupting(after=23)
    with pytest.raises(KeyboardInterrupt):
        extract(corpus, ex, tmp_path, progress=False, part_size=10)
    assert ex.closed                                  # the extractor was released
    assert n_in_parts(tmp_path, corpus) == 23         # 2 full parts + the 3 buffered clips
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False, part_size=10)
    assert (s.n_cached_before, s.n_extracted) == (23, N - 23)
    assert_same_cache(cache_path(tmp_path, corpus.name, fault_extractor.NAME), ref)


def test_time_based_flush_bounds_the_loss_for_slow_extractors(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    ex = _Interrupting(after=5)
    with pytest.raises(KeyboardInterrupt):
        # flush_seconds=0: every clip is its own part (as if each clip took longer than the interval)
        extract(corpus, ex, tmp_path, progress=False, part_size=1000, flush_seconds=0.0)
    parts = list(cache_path(tmp_path, corpus.name, fault_extractor.NAME).with_suffix(".parts").glob("part-*.npz"))
    assert len(parts) == 5


# ----------------------------------------------------------------------------- disk full
def _enospc_on(monkeypatch, when):
    """Make os.fsync raise ENOSPC for the file descriptors ``when(path, count)`` selects."""
    real = os.fsync
    count = {"n": 0}

    def fsync(fd):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        count["n"] += 1
        if when(target, count["n"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_while_writing_parts_then_resume(corpus_and_reference, tmp_path, monkeypatch):
    corpus, ids, ref = corpus_and_reference
    parts_written = {"n": 0}

    def when(target, _):
        if ".npz.tmp" in target:
            parts_written["n"] += 1
            return parts_written["n"] >= 3      # from the 3rd part on, the disk is full
        return False

    _enospc_on(monkeypatch, when)
    with pytest.raises(CacheError, match=r"could not write the cache .*No space left on device\); 14 of the 60 "
                                         r"clips are saved and kept\. Free disk space .* run the same command again "
                                         r"to resume"):
        extract(corpus, RmsExtractor(), tmp_path, progress=False, part_size=7)
    monkeypatch.undo()
    assert n_in_parts(tmp_path, corpus) == 14 and leftovers(tmp_path) == []
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False, part_size=7)
    assert (s.n_cached_before, s.n_extracted) == (14, N - 14)
    assert_same_cache(cache_path(tmp_path, corpus.name, fault_extractor.NAME), ref)


def test_disk_full_while_finalizing_keeps_old_cache_readable(corpus_and_reference, tmp_path, monkeypatch):
    corpus, ids, ref = corpus_and_reference
    path = cache_path(tmp_path, corpus.name, fault_extractor.NAME)
    extract(corpus, RmsExtractor(), tmp_path, ids=ids[:20], progress=False)     # a first, partial cache
    assert EmbeddingCache(path).ids == ids[:20]
    _enospc_on(monkeypatch, lambda target, _: ".h5.tmp" in target)
    with pytest.raises(CacheError, match="No space left on device"):
        extract(corpus, RmsExtractor(), tmp_path, progress=False)
    monkeypatch.undo()
    old = EmbeddingCache(path)                       # the previous file is untouched and readable
    assert old.ids == ids[:20]
    np.testing.assert_array_equal(old.all_layers(), EmbeddingCache(ref).all_layers(ids=ids[:20]))
    assert n_in_parts(tmp_path, corpus) == N - 20 and leftovers(tmp_path) == []
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False)
    assert (s.n_cached_before, s.n_extracted) == (N, 0)
    assert_same_cache(path, ref)


def test_disk_full_from_h5py_itself(corpus_and_reference, tmp_path, monkeypatch):
    corpus, ids, ref = corpus_and_reference
    real = h5py.Dataset.__setitem__

    def setitem(self, key, value):
        if self.name == "/features":
            raise OSError(errno.ENOSPC, "Can't write data (file write failed: No space left on device)")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    with pytest.raises(CacheError, match="could not write the cache"):
        extract(corpus, RmsExtractor(), tmp_path, progress=False)
    monkeypatch.undo()
    assert leftovers(tmp_path) == [] and n_in_parts(tmp_path, corpus) == N
    extract(corpus, RmsExtractor(), tmp_path, progress=False)
    assert_same_cache(cache_path(tmp_path, corpus.name, fault_extractor.NAME), ref)


def test_an_extractor_oserror_is_not_called_a_disk_problem(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference

    class Broken(RmsExtractor):
        def run(self, items):
            yield from super().run(items[:3])
            raise OSError("model weights not found at /nowhere")

    with pytest.raises(OSError, match="model weights not found"):
        extract(corpus, Broken(), tmp_path, progress=False)
    assert n_in_parts(tmp_path, corpus) == 3


# ----------------------------------------------------------------------------- concurrency
def test_second_writer_is_refused_while_first_runs(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    p = start_driver(corpus, tmp_path, "--pause-at", 5)   # holds the lock, paused mid-run
    try:
        read_until(p, "PAUSED 5")
        with pytest.raises(CacheBusy, match=rf"another extraction \(pid {p.pid}\) is writing .*wait for it to finish"):
            extract(corpus, RmsExtractor(), tmp_path, progress=False)
    finally:
        out, err = p.communicate("go on\n", timeout=60)
    assert p.returncode == 0, err
    assert_same_cache(cache_path(tmp_path, corpus.name, fault_extractor.NAME), ref)
    # the lock dies with its holder: a later run gets it at once
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False)
    assert (s.n_cached_before, s.n_extracted) == (N, 0)


def test_lock_of_a_killed_writer_is_released(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    p = start_driver(corpus, tmp_path, "--pause-at", 3)
    read_until(p, "PAUSED 3")                       # it holds the lock now
    p.kill()
    p.communicate()
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False)
    assert (s.n_cached_before, s.n_extracted) == (0, N)     # the lock was free; nothing was on disk yet


# ----------------------------------------------------------------------------- settings
class _V2(RmsExtractor):
    version = "2"


def test_config_mismatch_is_refused_and_overwrite_rebuilds(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    extract(corpus, RmsExtractor(), tmp_path, progress=False)
    path = cache_path(tmp_path, corpus.name, fault_extractor.NAME)
    with pytest.raises(CacheMismatch, match=r"was built with other settings \(version: cache='1' requested='2'\)\. "
                                            r"Refusing to mix them: pass --overwrite"):
        extract(corpus, _V2(), tmp_path, progress=False)
    assert EmbeddingCache(path).config["version"] == "1"      # refused before touching anything
    s = extract(corpus, _V2(), tmp_path, overwrite=True, progress=False)
    assert (s.n_cached_before, s.n_extracted) == (0, N)
    assert EmbeddingCache(path).config["version"] == "2"


def test_unfinished_parts_with_other_settings_are_refused(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    with pytest.raises(KeyboardInterrupt):
        extract(corpus, _Interrupting(after=10), tmp_path, progress=False)
    with pytest.raises(CacheMismatch, match=r"unfinished parts in .* were made with other settings "
                                            r"\(storage_dtype: cache='float32' requested='float16'\); "
                                            r"pass --overwrite to discard them"):
        from exvo.extract.base import ExtractOptions
        extract(corpus, RmsExtractor(), tmp_path, ExtractOptions(dtype="float16"), progress=False)


def test_cli_mismatch_exit_2_then_overwrite(corpus_and_reference, tmp_path):
    from typer.testing import CliRunner

    from exvo.cli import app

    corpus, ids, ref = corpus_and_reference
    args = ["extract", "--model", fault_extractor.NAME, "--data", str(corpus.root), "--cache", str(tmp_path)]
    assert CliRunner().invoke(app, args).exit_code == 0
    res = CliRunner().invoke(app, args + ["--dtype", "float16"])
    assert res.exit_code == 2 and "Refusing to mix them: pass --overwrite" in res.output
    res = CliRunner().invoke(app, args + ["--dtype", "float16", "--overwrite"])
    assert res.exit_code == 0, res.output
    c = EmbeddingCache(cache_path(tmp_path, corpus.name, fault_extractor.NAME))
    assert c.dtype == np.float16 and len(c) == N


# ----------------------------------------------------------------------------- damaged files
def _fresh_copy(ref: Path, tmp_path: Path) -> Path:
    p = tmp_path / ref.name
    p.write_bytes(ref.read_bytes())
    return p


def _read_everything(p: Path) -> None:
    c = EmbeddingCache(p)
    c.all_layers()
    for layer in range(c.n_layers):
        c.layer(layer)


@pytest.mark.parametrize("keep", [0.99, 0.9, 0.5, 0.1, 600, 8])
def test_truncated_cache_is_detected_not_read_as_zeros(corpus_and_reference, tmp_path, keep):
    corpus, ids, ref = corpus_and_reference
    p = _fresh_copy(ref, tmp_path)
    b = p.read_bytes()
    n = int(len(b) * keep) if keep < 1 else int(keep)
    p.write_bytes(b[:n])
    with pytest.raises(CacheError, match=r"damaged|not an exvo cache"):
        _read_everything(p)


def test_flipped_bytes_in_features_are_caught_by_fletcher32(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    p = _fresh_copy(ref, tmp_path)
    with h5py.File(p, "r") as f:
        d = f["features"]
        assert d.fletcher32
        info = d.id.get_chunk_info(0)
    with open(p, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x10]))
    c = EmbeddingCache(p)            # metadata is intact
    with pytest.raises(CacheError, match=r"is damaged \(checksum or truncation.*run the `exvo extract` command that made it "
                                         r"again \(same options, without --overwrite\): it checks every row"):
        c.layer(0)


def test_flipped_bytes_in_ids_are_caught(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    p = _fresh_copy(ref, tmp_path)
    b = bytearray(p.read_bytes())
    k = b.find(b"[g017]")
    assert k > 0
    b[k + 3] = ord("9")              # "[g017]" -> "[g097]": a plausible, wrong id
    p.write_bytes(bytes(b))
    with pytest.raises(CacheError, match="stored ids do not match their checksum"):
        EmbeddingCache(p)


def test_not_a_cache_at_all(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    with pytest.raises(CacheError, match=r"damaged or not an exvo cache"):
        EmbeddingCache(p)
    with pytest.raises(CacheError, match=r"no embedding cache at"):
        EmbeddingCache(tmp_path / "missing.h5")


def test_resume_on_a_damaged_cache_says_overwrite_and_overwrite_rebuilds(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    path = cache_path(tmp_path, corpus.name, fault_extractor.NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(ref.read_bytes()[:2000])
    with pytest.raises(CacheError, match="--overwrite"):
        extract(corpus, RmsExtractor(), tmp_path, progress=False)
    extract(corpus, RmsExtractor(), tmp_path, overwrite=True, progress=False)
    assert_same_cache(path, ref)


# ----------------------------------------------------------------------------- parts logic
def test_stale_temporaries_are_cleaned_and_damaged_parts_redone(corpus_and_reference, tmp_path):
    corpus, ids, ref = corpus_and_reference
    with pytest.raises(KeyboardInterrupt):
        extract(corpus, _Interrupting(after=30), tmp_path, progress=False, part_size=10)
    path = cache_path(tmp_path, corpus.name, fault_extractor.NAME)
    parts = path.with_suffix(".parts")
    assert sorted(p.name for p in parts.glob("part-*.npz")) == ["part-000000.npz", "part-000001.npz", "part-000002.npz"]
    (parts / "part-000003.npz.tmp99999").write_bytes(b"half a part")       # killed mid-write
    (path.parent / (path.name + ".tmp99999")).write_bytes(b"half an h5")   # killed mid-finalize
    (parts / "part-000001.npz").write_bytes(b"PK\x03\x04 garbage")          # damaged by other means
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False, part_size=10)
    assert (s.n_cached_before, s.n_extracted) == (20, 40)                  # the damaged part's 10 redone
    assert_same_cache(path, ref)
    assert leftovers(tmp_path) == []


def test_writer_rejects_bad_embeddings_without_side_effects(tmp_path):
    with CacheWriter(tmp_path / "c" / "x.h5", "x", {"a": 1}) as w:
        w.add("a", np.ones((2, 3), np.float32))
        with pytest.raises(CacheError, match=r"embedding of b has shape \(3,\); expected \(n_layers, dim\)"):
            w.add("b", np.ones(3, np.float32))
        with pytest.raises(CacheError, match=r"embedding shape \(2, 4\) differs from earlier clips \(2, 3\)"):
            w.add("c", np.ones((2, 4), np.float32))
        with pytest.raises(CacheError, match="contains NaN/inf"):
            w.add("d", np.full((2, 3), np.inf, np.float32))
        assert w.done == {"a"}
        w.finalize(order=["d", "c", "b", "a"], files=[])
    assert EmbeddingCache(tmp_path / "c" / "x.h5").ids == ["a"]


def test_cli_ctrl_c_exits_130_and_resumes(corpus_and_reference, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import exvo.extract.run as run_mod
    from exvo.cli import app

    corpus, ids, ref = corpus_and_reference
    real = run_mod.extract
    monkeypatch.setattr(run_mod, "extract", lambda c, model, *a, **k: real(c, _Interrupting(after=12), *a, **k))
    args = ["extract", "--model", fault_extractor.NAME, "--data", str(corpus.root), "--cache", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130 and "interrupted; the clips finished so far are saved" in res.output
    monkeypatch.undo()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and f"{N}/{N} clips cached ({N - 12} new" in res.output, res.output
    assert_same_cache(cache_path(tmp_path, corpus.name, fault_extractor.NAME), ref)
