"""The HDF5 embedding cache: layout, partial reads, streaming finalize, round trips."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from exvo.extract import cache as cache_mod
from exvo.extract.cache import FORMAT, CacheError, EmbeddingCache, cache_path
from exvo.extract.cache_writer import CacheWriter


def _ids(n):
    return [f"[{k:05d}]" for k in range(n)]


def _write(path: Path, feats: dict[str, np.ndarray], order, *, dtype="float32", part_size=64, config=None,
           feature_names=None):
    with CacheWriter(path, "toy", config or {"toy": 1}, dtype=dtype, part_size=part_size,
                     feature_names=feature_names) as w:
        for i, e in feats.items():
            if i not in w.done:
                w.add(i, e)
        w.finalize(order=order, files=[])
    return path


def _rchar() -> int:
    """Bytes this process has read through read()/pread() so far (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def test_contract_layout_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ids = _ids(50)
    x = rng.standard_normal((50, 3, 8)).astype(np.float32)
    p = _write(tmp_path / "c" / "toy.h5", dict(zip(ids, x)), ids, feature_names=[f"f{k}" for k in range(8)])
    with h5py.File(p, "r") as f:
        assert f.attrs["format"] == FORMAT == "exvo-embeddings/2"
        # no audio identity given to add(): stored as unknown (-1), never as a made-up value
        assert f["identity"].shape == (50, 2) and (f["identity"][()] == -1).all() and f["identity"].fletcher32
        assert f["digest"].shape == (50,) and f["digest"].fletcher32
        assert f.attrs["extractor"] == "toy"
        assert json.loads(f.attrs["config"]) == {"toy": 1, "storage_dtype": "float32"}
        assert len(f.attrs["fingerprint"]) == 64
        assert f["ids"].shape == (50,) and f["features"].shape == (50, 3, 8)
        assert f["features"].dtype == np.float32 and f["features"].fletcher32
        assert [s.decode() for s in f["ids"][()]] == ids
    c = EmbeddingCache(p)
    assert (len(c), c.n_layers, c.dim, c.feature_names) == (50, 3, 8, [f"f{k}" for k in range(8)])
    np.testing.assert_array_equal(c.all_layers(), x)
    np.testing.assert_array_equal(c.layer(1), x[:, 1])
    np.testing.assert_array_equal(c.layer(-1), x[:, 2])
    sel = ["[00042]", "[00003]", "[00017]"]
    np.testing.assert_array_equal(c.layer(0, ids=sel), x[[42, 3, 17], 0])
    np.testing.assert_array_equal(c.all_layers(ids=sel), x[[42, 3, 17]])


def test_reader_messages(tmp_path):
    ids = _ids(5)
    p = _write(tmp_path / "toy.h5", {i: np.ones((2, 3), np.float32) for i in ids}, ids)
    c = EmbeddingCache(p)
    with pytest.raises(CacheError, match=r"lacks 2 of the 3 requested clips \(\[x\], \[y\]\); run `exvo extract --model toy`"):
        c.layer(0, ids=["[00001]", "[x]", "[y]"])
    with pytest.raises(CacheError, match=r"layer 2 out of range for toy with 2 layers \(valid: 0\.\.1"):
        c.layer(2)


def test_one_layer_read_touches_about_1_over_L_of_the_file(tmp_path):
    L, N, F = 25, 2000, 64
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, L, F)).astype(np.float32)
    ids = _ids(N)
    p = _write(tmp_path / "ssl.h5", dict(zip(ids, x)), ids, part_size=500)
    with h5py.File(p, "r") as f:
        d = f["features"]
        rows = d.chunks[0]
        assert d.chunks == (rows, 1, F)            # one layer per chunk
        assert rows * F * 4 <= cache_mod.TARGET_CHUNK_BYTES
    c = EmbeddingCache(p)
    layer_bytes = N * F * 4
    r0 = _rchar()
    got = c.layer(7)
    r_layer = _rchar() - r0
    r0 = _rchar()
    allx = c.all_layers()
    r_all = _rchar() - r0
    np.testing.assert_array_equal(got, x[:, 7])
    np.testing.assert_array_equal(allx, x)
    assert r_all >= 0.95 * L * layer_bytes
    # one layer: its own bytes plus metadata (a few KiB), far below 2/L of the file
    assert layer_bytes <= r_layer < 1.5 * layer_bytes + 64 * 1024, (r_layer, layer_bytes, r_all)


def test_float16_storage(tmp_path):
    ids = _ids(10)
    x = np.linspace(-2, 2, 10 * 4, dtype=np.float32).reshape(10, 1, 4)
    p = _write(tmp_path / "h.h5", dict(zip(ids, x)), ids, dtype="float16")
    c = EmbeddingCache(p)
    assert c.dtype == np.float16 and c.config["storage_dtype"] == "float16"
    out = c.layer(0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x[:, 0], rtol=1e-3)
    with pytest.raises(ValueError, match="cache dtype must be float32 or float16, got 'int8'"):
        CacheWriter(tmp_path / "y.h5", "toy", {}, dtype="int8")


def test_lru_plan_detects_scattered_parts():
    in_order = [k // 10 for k in range(1000)]             # 100 parts of 10 consecutive clips
    assert cache_mod.lru_misses(in_order, 2) == 100
    rng = np.random.default_rng(0)
    scattered = list(rng.permutation(in_order))          # e.g. length-sorted batches
    assert cache_mod.lru_misses(scattered, 8) > 2 * 100 + 8
    assert cache_mod.lru_misses([-1, -1, 3, -1, 3], 2) == 1


@pytest.mark.parametrize("mode", ["auto", "direct", "staged"])
def test_streaming_finalize_with_tiny_blocks_old_rows_and_shuffled_parts(tmp_path, monkeypatch, mode):
    """Rows come from an old file and from many parts in any order; result = corpus order.

    ``direct`` reads parts through the LRU, ``staged`` through the raw staging file: same bytes.
    """
    monkeypatch.setattr(cache_mod, "TARGET_CHUNK_BYTES", 5 * 6 * 4)       # 5 rows per chunk
    monkeypatch.setattr(cache_mod, "FINALIZE_BLOCK_BYTES", 40 * 2 * 6 * 4)  # ~20-row blocks
    if mode != "auto":
        monkeypatch.setattr(cache_mod, "lru_misses", lambda seq, cap: 0 if mode == "direct" else 10 ** 9)
    rng = np.random.default_rng(2)
    n = 137
    ids = _ids(n)
    x = rng.standard_normal((n, 2, 6)).astype(np.float32)
    p = tmp_path / "s.h5"
    first = list(rng.permutation(n)[:60])
    _write(p, {ids[k]: x[k] for k in first}, order=ids, part_size=7)
    assert EmbeddingCache(p).ids == [ids[k] for k in sorted(first)]
    # the rest, in random order, 3 clips per part (many parts, more than the reader's LRU)
    order = list(rng.permutation(n))
    rest = {ids[k]: x[k] for k in order if k not in set(first)}
    _write(p, rest, order=ids, part_size=3)
    c = EmbeddingCache(p)
    assert c.ids == ids
    np.testing.assert_array_equal(c.all_layers(), x)
    # a new corpus order (rows of the old file now scattered in every block): still exact
    shuffled = [ids[k] for k in rng.permutation(n)]
    with CacheWriter(p, "toy", {"toy": 1}) as w:
        w.add("[extra]", np.zeros((2, 6), np.float32))
        w.finalize(order=shuffled + ["[extra]"], files=[])
    c = EmbeddingCache(p)
    assert c.ids == shuffled + ["[extra]"]
    np.testing.assert_array_equal(c.all_layers(ids=ids), x)
    assert not p.with_suffix(".parts").exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["s.h5"]   # no staging/tmp/lock left


@pytest.mark.parametrize("shuffled", [False, True])
def test_finalize_memory_is_bounded_by_the_block_not_the_file(tmp_path, monkeypatch, shuffled):
    # blocks are whole chunk rows of all layers: 256 rows x 25 layers x 64 x 4 B = 1.6 MiB here
    monkeypatch.setattr(cache_mod, "TARGET_CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(cache_mod, "FINALIZE_BLOCK_BYTES", 2 << 20)
    N, L, F = 3200, 25, 64                        # 20 MiB of features
    ids = _ids(N)
    rng = np.random.default_rng(3)
    p = tmp_path / "m.h5"
    total = N * L * F * 4
    with CacheWriter(p, "toy", {"toy": 1}, part_size=100) as w:
        # shuffled: clips finish in another order than the corpus (as with length-sorted batches)
        for k in (rng.permutation(N) if shuffled else range(N)):
            w.add(ids[k], rng.standard_normal((L, F)).astype(np.float32))
        tracemalloc.start()
        w.finalize(order=ids, files=[])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert len(EmbeddingCache(p)) == N
    # one output block (2 MiB) + a handful of parts (8 x 640 KiB) + slack; the whole file is 20 MiB
    print(f"finalize peak {peak / 2**20:.1f} MiB for a {total / 2**20:.1f} MiB file")
    assert peak < 0.4 * total, (peak, total)
    assert peak < 2 * (2 << 20) + 8 * 100 * L * F * 4, peak


def test_nothing_new_leaves_the_file_untouched(tmp_path):
    ids = _ids(20)
    p = _write(tmp_path / "t.h5", {i: np.ones((1, 3), np.float32) for i in ids}, ids)
    st = p.stat()
    _write(p, {}, ids)
    st2 = p.stat()
    assert (st.st_ino, st.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)
    # rows are keyed by clip: another table order, or a table listing fewer clips, reads a
    # subset and rewrites nothing
    _write(p, {}, ids[::-1])
    _write(p, {}, ids[:5])
    st3 = p.stat()
    assert (st.st_ino, st.st_mtime_ns) == (st3.st_ino, st3.st_mtime_ns) and EmbeddingCache(p).ids == ids


def test_cache_path_rejects_unsafe_names(tmp_path):
    assert cache_path(tmp_path, "corp", "wavlm@12") == tmp_path / "corp" / "wavlm@12.h5"
    with pytest.raises(ValueError, match="is not a safe file name"):
        cache_path(tmp_path, "corp", "../evil")
