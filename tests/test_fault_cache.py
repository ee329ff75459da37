"""Issue 27, cases 7, 8 and 16: a damaged chunk is found by `exvo extract` and only its rows are
redone; a full disk while writing parts counts what is really on disk; a run with nothing to
do leaves no parts folder, keeps the record of the real extraction and prints no 0/0 line."""
from __future__ import annotations

import errno
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import fault_extractor
from fault_corpus import HEADER, good_corpus, write_table
from fault_extractor import RmsExtractor
from exvo.corpus import Corpus
from exvo.extract import cache as C
from exvo.extract.cache import CacheError, EmbeddingCache, cache_path
from exvo.extract.run import extract

N = 96
ROWS = 16                   # clips per chunk here: 6 chunks, so one can be damaged alone


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(C, "TARGET_CHUNK_BYTES", ROWS * 6 * 4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 96-clip corpus and its uninterrupted cache (16-row chunks)."""
    base = tmp_path_factory.mktemp("damage")
    good_corpus(base / "corpus", N)
    corpus = Corpus.from_dir(base / "corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "TARGET_CHUNK_BYTES", ROWS * 6 * 4)
        extract(corpus, RmsExtractor(), base / "ref", progress=False)
    return corpus, cache_path(base / "ref", corpus.name, fault_extractor.NAME)


def _copy(ref, cache, corpus):
    path = cache_path(cache, corpus.name, fault_extractor.NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ref, path)
    return path


def _damage_chunk(path, first_row: int) -> None:
    """Flip one byte in the middle of the stored chunk that starts at row ``first_row``."""
    with h5py.File(path, "r") as f:
        d = f["features"]
        info = next(i for i in (d.id.get_chunk_info(k) for k in range(d.id.get_num_chunks()))
                    if i.chunk_offset[0] == first_row)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x10]))


def _same(path, ref) -> None:
    with h5py.File(path, "r") as a, h5py.File(ref, "r") as b:
        assert [x.decode() for x in a["ids"][()]] == [x.decode() for x in b["ids"][()]]
        assert a["features"][()].tobytes() == b["features"][()].tobytes()
        assert dict(a.attrs) == dict(b.attrs)


# ----------------------------------------------------------------------------- 7. a damaged chunk
def test_a_damaged_chunk_is_found_by_extract_and_only_its_rows_are_redone(world, tmp_path):
    corpus, ref = world
    path = _copy(ref, tmp_path, corpus)
    _damage_chunk(path, 32)                                   # rows 32..47
    with pytest.raises(CacheError, match=r"run the `exvo extract` command that made it again \(same options, without "
                                         r"--overwrite\): it checks every row and re-extracts only the damaged ones"):
        EmbeddingCache(path).all_layers()                     # what learn says about it
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False)
    assert (s.n_damaged, s.n_extracted, s.n_cached_before, s.failures) == (16, 16, 80, [])
    assert f"{N}/{N} clips cached (16 new, 16 damaged rows redone, 0 failed" in s.line()
    assert s.messages == [f"16 row(s) of {path} fail their checksum (damaged on disk); those clips are extracted "
                          "again, the other rows are kept: [g032], [g033], [g034], [g035], [g036], [g037], [g038], "
                          "[g039], [g040], [g041] … (+6 more)"]
    _same(path, ref)                                          # repaired: the very file of an undamaged run
    again = extract(corpus, RmsExtractor(), tmp_path, progress=False)
    assert (again.n_damaged, again.n_extracted) == (0, 0)


def test_a_damaged_row_outside_the_table_is_left_out_with_a_note(world, tmp_path):
    corpus, ref = world
    path = _copy(ref, tmp_path, corpus)
    _damage_chunk(path, 80)                                   # rows 80..95: not in the shorter table below
    short = tmp_path / "short"
    shutil.copytree(corpus.root, short / corpus.root.name)
    lines = (corpus.root / "data_info.csv").read_text().splitlines(keepends=True)
    (short / corpus.root.name / "data_info.csv").write_text("".join(lines[:41]))     # clips 0..39
    s = extract(Corpus.from_dir(short / corpus.root.name), RmsExtractor(), tmp_path, progress=False)
    assert s.n_extracted == 0 and s.n_damaged == 0
    assert any(m.startswith("16 damaged row(s) could not be extracted again (not in this table, or they failed) "
                            f"and are left out of {path}: [g080]") for m in s.messages), s.messages
    c = EmbeddingCache(path)
    assert c.ids == [f"[g{k:03d}]" for k in range(80)] and c.damaged_rows() == []
    np.testing.assert_array_equal(c.all_layers(), EmbeddingCache(ref).all_layers(ids=c.ids))


def test_cli_extract_names_and_repairs_the_damaged_rows(world, tmp_path):
    corpus, ref = world
    path = _copy(ref, tmp_path, corpus)
    _damage_chunk(path, 0)
    res = CliRunner().invoke(__import__("exvo.cli", fromlist=["app"]).app,
                             ["extract", "--model", fault_extractor.NAME, "--data", str(corpus.root),
                              "--cache", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "16 row(s) of" in res.output and "fail their checksum" in res.output
    assert f"{N}/{N} clips cached (16 new, 16 damaged rows redone" in res.output
    _same(path, ref)


# ----------------------------------------------------------------------------- 8. disk full while writing parts
def test_disk_full_while_writing_parts_counts_the_clips_on_disk(world, tmp_path, monkeypatch):
    corpus, _ = world
    real, parts = os.fsync, [0]

    def fsync(fd):
        if ".npz.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            parts[0] += 1
            if parts[0] >= 2:                         # the first part (64 clips) is written, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CacheError) as e:
        extract(corpus, RmsExtractor(), tmp_path, progress=False, part_size=64)
    monkeypatch.undo()
    assert "64 of the 96 clips are saved and kept" in str(e.value), str(e.value)
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False)
    assert (s.n_cached_before, s.n_extracted) == (64, 32)          # what the message said


# ----------------------------------------------------------------------------- 16. nothing to do
def test_a_fully_cached_run_leaves_no_parts_keeps_the_summary_and_prints_no_empty_progress(world, tmp_path):
    corpus, ref = world
    runner = CliRunner()
    from exvo.cli import app

    args = ["extract", "--model", fault_extractor.NAME, "--data", str(corpus.root), "--cache", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    path = cache_path(tmp_path, corpus.name, fault_extractor.NAME)
    summary = path.with_suffix(".summary.json")
    first = json.loads(summary.read_text())
    assert first["n_extracted"] == N
    res = runner.invoke(app, args, env={"EXVO_PROGRESS": "0.001"})     # plain progress lines, as in a log
    assert res.exit_code == 0, res.output
    assert f"{N}/{N} clips cached (0 new" in res.output
    assert "0/0" not in res.output and "ETA ?" not in res.output, res.output
    assert not path.with_suffix(".parts").exists()                         # no parts folder, no config.json
    after = json.loads(summary.read_text())
    assert {k: v for k, v in after.items() if k != "last_checked"} == first   # the real extraction's record
    assert after["last_checked"]["n_cached"] == N and after["last_checked"]["n_clips"] == N


def test_a_run_that_adds_clips_writes_its_own_summary(world, tmp_path):
    corpus, _ = world
    rows = [dict(zip(HEADER, r)) for r in
            [ln.split(",") for ln in (corpus.root / "data_info.csv").read_text().splitlines()[1:11]]]
    small = tmp_path / "small" / corpus.root.name
    write_table(small, rows, header=HEADER)
    shutil.copytree(corpus.root / "wav", small / "wav")
    extract(Corpus.from_dir(small), RmsExtractor(), tmp_path, progress=False)
    s = extract(corpus, RmsExtractor(), tmp_path, progress=False)
    record = json.loads(cache_path(tmp_path, corpus.name, fault_extractor.NAME).with_suffix(".summary.json").read_text())
    assert record["n_extracted"] == s.n_extracted == N - 10 and "last_checked" not in record
