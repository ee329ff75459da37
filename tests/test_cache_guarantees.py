"""Issue #10: the cache never loses rows nor serves stale ones; runs are never silently replaced.

One test (or a few) per numbered case of the issue; each fails on the code before the fix.
The test extractor (``fault_extractor.RmsExtractor``) computes features checkable by hand,
so "the row is the features of this audio" is compared against ``reference_features``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

import fault_extractor
from fault_corpus import good_corpus, tone, toy_learn_world, write_wav
from fault_extractor import InterruptAfter, RmsExtractor, reference_features
from exvo.config import Seeds, build
from exvo.corpus import Corpus, load_audio
from exvo.extract.cache import EmbeddingCache, cache_path
from exvo.extract.run import extract

N = 24


class _V2(RmsExtractor):
    version = "2"


def _Interrupting(after: int) -> InterruptAfter:
    return InterruptAfter(after, version=_V2.version)


@pytest.fixture
def corpus(tmp_path) -> Corpus:
    good_corpus(tmp_path / "data" / "corpus", N)
    return Corpus.from_dir(tmp_path / "data" / "corpus")


def _cache(tmp_path, corpus) -> Path:
    return cache_path(tmp_path / "cache", corpus.name, fault_extractor.NAME)


def _rows_match_audio(c: EmbeddingCache, corpus: Corpus) -> None:
    for i in c.ids:
        want = reference_features(load_audio(corpus.audio_path(i)))
        np.testing.assert_array_equal(c.layer(0, ids=[i]), want, err_msg=i)


def _cut_table(corpus: Corpus, keep: int) -> Corpus:
    lines = (corpus.root / "data_info.csv").read_text().splitlines(keepends=True)
    (corpus.root / "data_info.csv").write_text("".join(lines[:1 + keep]))
    return Corpus.from_dir(corpus.root)


# ----------------------------------------------------------------------------- 1. shorter table
def test_case1_a_shorter_table_keeps_every_cached_row(corpus, tmp_path):
    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    path = _cache(tmp_path, corpus)
    before = EmbeddingCache(path)
    assert len(before) == N
    short = _cut_table(corpus, 8)
    s = extract(short, RmsExtractor(), tmp_path / "cache", progress=False)
    assert (s.n_clips, s.n_cached_before, s.n_extracted) == (8, 8, 0)
    # a run that does write (one clip's audio changed) still keeps the 16 clips the table omits
    write_wav(short.root, "g003", tone(0.2, freq=999, seed=99))
    s = extract(short, RmsExtractor(), tmp_path / "cache", progress=False)
    assert (s.n_changed, s.n_extracted) == (1, 1)
    after = EmbeddingCache(path)
    assert sorted(after.ids) == sorted(before.ids) and len(after) == N
    np.testing.assert_array_equal(after.layer(0, ids=before.ids[8:]), before.layer(0, ids=before.ids[8:]))
    _rows_match_audio(after, short)
    assert after.ids[:8] == short.ids          # table order first, then the rows it does not list


# ----------------------------------------------------------------------------- 2. --overwrite
def test_case2_overwrite_with_no_audio_keeps_the_old_cache(corpus, tmp_path):
    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    path = _cache(tmp_path, corpus)
    old_bytes = path.read_bytes()
    os.rename(corpus.root / "wav", corpus.root / "wav.away")
    s = extract(corpus, _V2(), tmp_path / "cache", overwrite=True, progress=False)
    assert len(s.failures) == N and s.n_extracted == 0
    assert path.read_bytes() == old_bytes                       # still the complete old file
    assert EmbeddingCache(path).config["version"] == "1" and len(EmbeddingCache(path)) == N
    assert any("is kept unchanged" in m for m in s.messages), s.messages


def test_case2_interrupted_overwrite_keeps_the_old_cache_and_resumes_as_a_rebuild(corpus, tmp_path):
    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    path = _cache(tmp_path, corpus)
    old_bytes = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        extract(corpus, _Interrupting(after=10), tmp_path / "cache", overwrite=True, progress=False, part_size=4)
    assert path.read_bytes() == old_bytes                       # Ctrl-C: the old file is untouched
    # the next run (with or without --overwrite) continues the rebuild, not the old cache
    s = extract(corpus, _V2(), tmp_path / "cache", progress=False, part_size=4)
    assert any("unfinished rebuild" in m for m in s.messages), s.messages
    assert (s.n_cached_before, s.n_extracted) == (10, N - 10)
    c = EmbeddingCache(path)
    assert c.config["version"] == "2" and len(c) == N
    assert not path.with_suffix(".parts").exists()


def test_case2_partial_rebuild_never_replaces_a_fuller_cache(corpus, tmp_path):
    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    path = _cache(tmp_path, corpus)
    old_bytes = path.read_bytes()
    lost = corpus.audio_path(corpus.ids[5])
    os.rename(lost, lost.with_suffix(".bak"))
    s = extract(corpus, _V2(), tmp_path / "cache", overwrite=True, progress=False)
    assert [f[0] for f in s.failures] == [corpus.ids[5]] and path.read_bytes() == old_bytes
    os.rename(lost.with_suffix(".bak"), lost)
    s = extract(corpus, _V2(), tmp_path / "cache", progress=False)   # resumes the rebuild: 1 clip
    assert s.n_extracted == 1
    c = EmbeddingCache(path)
    assert c.config["version"] == "2" and sorted(c.ids) == sorted(corpus.ids)
    _rows_match_audio(c, corpus)


# ----------------------------------------------------------------------------- 3. demo corpus
def test_case3_demo_corpus_refuses_a_non_empty_folder(tmp_path):
    from typer.testing import CliRunner

    from exvo.cli import app

    target = tmp_path / "mine"
    wav = write_wav(target, "00000", tone(0.5, seed=1))
    before = wav.read_bytes()
    res = CliRunner().invoke(app, ["demo-corpus", str(target), "--speakers", "8", "--clips-per-speaker", "1"])
    assert res.exit_code == 2, res.output
    assert "is not empty" in res.output and "Choose another folder" in res.output
    assert wav.read_bytes() == before and sorted(p.name for p in target.rglob("*")) == ["00000.wav", "wav"]


# ----------------------------------------------------------------------------- 4. learn runs
@pytest.fixture
def learn_world(tmp_path):
    root, cache = toy_learn_world(tmp_path, 40)
    return Corpus.from_dir(root), cache, tmp_path / "runs"


def test_case4_learn_refuses_to_replace_a_run_unless_overwrite(learn_world):
    from exvo.learn.api import learn
    from exvo.learn.config import LearnConfig
    from exvo.runs.store import RunExists

    corpus, cache, runs_dir = learn_world
    cfg = build(LearnConfig, features=["toy"], learner="mlp", arch="sys1", seeds=1, epochs=1, device="cpu")
    first = learn(corpus, cfg, cache, runs_dir, name="r", echo=lambda m: None)
    metrics = (first.run_dir / "metrics.json").read_bytes()
    with pytest.raises(RunExists, match=r"a run named 'r' already exists .*Pass --overwrite to replace it, "
                                        r"or --name NEW to keep both"):
        learn(corpus, cfg, cache, runs_dir, name="r", echo=lambda m: None)
    assert (first.run_dir / "metrics.json").read_bytes() == metrics
    assert sorted(p.name for p in runs_dir.iterdir()) == ["r"]         # no staging folder left
    learn(corpus, dataclasses.replace(cfg, seeds=Seeds(1, first=7)), cache, runs_dir, name="r", echo=lambda m: None,
          overwrite=True)
    assert (first.run_dir / "metrics.json").read_bytes() != metrics


def test_case4_commit_refuses_and_cleans_the_staging_folder(tmp_path):
    from exvo.runs.store import RunExists, commit, staging_dir

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("old")
    tmp = staging_dir(tmp_path, "r")
    (tmp / "new.txt").write_text("new")
    with pytest.raises(RunExists):
        commit(tmp, tmp_path / "r")
    assert not tmp.exists() and (tmp_path / "r" / "keep.txt").read_text() == "old"
    tmp = staging_dir(tmp_path, "r")
    (tmp / "new.txt").write_text("new")
    commit(tmp, tmp_path / "r", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_case4_cli_learn_exit_2_names_the_flag(learn_world):
    from typer.testing import CliRunner

    from exvo.cli import app

    corpus, cache, runs_dir = learn_world
    args = ["learn", "--features", "toy", "--arch", "sys1", "--seeds", "1", "--epochs", "1", "--device", "cpu",
            "--name", "r", "--data", str(corpus.root), "--cache", str(cache), "--runs", str(runs_dir)]
    assert CliRunner().invoke(app, args).exit_code == 0
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "already exists" in res.output and "--overwrite" in res.output, res.output
    assert CliRunner().invoke(app, args + ["--overwrite"]).exit_code == 0


# ----------------------------------------------------------------------------- 5. changed audio
def test_case5_changed_audio_is_reextracted_and_refused_by_learn(corpus, tmp_path):
    from exvo.learn.features import FeatureSpec, StaleCacheError, load_features

    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    path = _cache(tmp_path, corpus)
    changed = corpus.ids[5]
    # same length, so the same file size: only the mtime and the bytes tell
    write_wav(corpus.root, "g005", tone(0.2, freq=1234, seed=77))
    assert EmbeddingCache(path).changed_clips([changed], [corpus.audio_path(changed)]) == [changed]
    with pytest.raises(StaleCacheError, match=r"1 clip\(s\) of corpus are not the audio .*\[g005\].*"
                                              r"`exvo extract --model _test_rms --data .*` \(it re-extracts just"):
        load_features(corpus, [FeatureSpec(fault_extractor.NAME)], tmp_path / "cache", echo=lambda m: None)
    s = extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    assert (s.n_changed, s.n_extracted, s.n_cached_before) == (1, 1, N - 1)
    assert "1 changed audio redone" in s.line()
    c = EmbeddingCache(path)
    _rows_match_audio(c, corpus)
    fm = load_features(corpus, [FeatureSpec(fault_extractor.NAME)], tmp_path / "cache", echo=lambda m: None)
    assert fm.ids == corpus.ids


def test_case5_same_bytes_new_mtime_is_not_reextracted(corpus, tmp_path):
    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    p = corpus.audio_path(corpus.ids[3])
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))     # e.g. copied without -p
    s = extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    assert (s.n_changed, s.n_extracted) == (0, 0)
    c = EmbeddingCache(_cache(tmp_path, corpus))
    assert c.identity(corpus.ids[3]).mtime_ns == st.st_mtime_ns + 5_000_000_000   # the new mtime is recorded


def test_case5_another_corpus_with_the_same_folder_name_is_not_served(corpus, tmp_path):
    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    other_root = tmp_path / "elsewhere" / "corpus"             # same folder name, other audio
    rows = (corpus.root / "data_info.csv").read_text()
    good_corpus(other_root, N, seconds=0.3)
    (other_root / "data_info.csv").write_text(rows)
    other = Corpus.from_dir(other_root)
    assert other.name == corpus.name and other.ids == corpus.ids
    s = extract(other, RmsExtractor(), tmp_path / "cache", progress=False)
    assert (s.n_changed, s.n_extracted) == (N, N)
    _rows_match_audio(EmbeddingCache(_cache(tmp_path, corpus)), other)


def test_case5_format1_cache_adopts_identities_when_the_files_are_unchanged(corpus, tmp_path):
    """A cache from before identities: its files fingerprint still matches → no re-extraction."""
    import h5py

    from exvo.extract.cache import files_fingerprint
    from exvo.learn.features import FeatureSpec, StaleCacheError, load_features

    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    path = _cache(tmp_path, corpus)
    with h5py.File(path, "r+") as f:          # make it look like a format-1 file
        del f["identity"], f["digest"]
        f.attrs["format"] = "exvo-embeddings/1"
        f.attrs["fingerprint"] = files_fingerprint(f.attrs["config"], [corpus.audio_path(i) for i in corpus.ids])
    with pytest.raises(StaleCacheError, match="older exvo"):
        load_features(corpus, [FeatureSpec(fault_extractor.NAME)], tmp_path / "cache", echo=lambda m: None)
    s = extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    assert (s.n_changed, s.n_extracted) == (0, 0)
    c = EmbeddingCache(path)
    assert c.format == "exvo-embeddings/2" and all(c.identity(i).known for i in c.ids)
    load_features(corpus, [FeatureSpec(fault_extractor.NAME)], tmp_path / "cache", echo=lambda m: None)


def test_case2_a_rebuild_is_accepted_without_lost_clips_once_the_old_file_is_deleted(corpus, tmp_path):
    extract(corpus, RmsExtractor(), tmp_path / "cache", progress=False)
    path = _cache(tmp_path, corpus)
    gone = corpus.audio_path(corpus.ids[5])
    gone.unlink()                                               # this clip's audio is lost for good
    s = extract(corpus, _V2(), tmp_path / "cache", overwrite=True, progress=False)
    assert any(f"delete {path.name} and run again" in m for m in s.messages), s.messages
    assert EmbeddingCache(path).config["version"] == "1"
    path.unlink()
    s = extract(corpus, _V2(), tmp_path / "cache", progress=False)      # resumes the rebuild, nothing to redo
    assert s.n_extracted == 0 and [f[0] for f in s.failures] == [corpus.ids[5]]
    c = EmbeddingCache(path)
    assert c.config["version"] == "2" and len(c) == N - 1 and not path.with_suffix(".parts").exists()
