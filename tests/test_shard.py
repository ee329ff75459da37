"""Issue #16: sharded extraction (--shard I/N, torchrun, SLURM arrays) merges into exactly the
cache one process writes; shards resume after kill -9; a merge refuses a missing or
foreign shard with the fix; shards are balanced by audio seconds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import fault_extractor
from fault_corpus import HEADER, row, tone, write_table, write_wav
from fault_extractor import RmsExtractor
from exvo.corpus import Corpus
from exvo.extract import merge as M, shard as S
from exvo.extract.cache import CacheError, EmbeddingCache, cache_path
from exvo.extract.run import extract

HERE = Path(__file__).resolve().parent
N = 20


class _V2(RmsExtractor):
    version = "2"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 20-clip corpus of lengths 0.1 … 2.0 s (shuffled) and its single-process cache."""
    base = tmp_path_factory.mktemp("shard")
    root = base / "corpus"
    rng = np.random.default_rng(5)
    secs = rng.permutation(np.arange(1, N + 1) / 10.0)
    rows = []
    for k, s in enumerate(secs):
        rows.append(row(f"[s{k:03d}]", split=("Train", "Val")[k % 2], speaker=f"Speaker_{k % 5 + 5 * (k % 2)}"))
        write_wav(root, f"s{k:03d}", tone(float(s), freq=150 + 20 * k, seed=k))
    write_table(root, rows, header=HEADER)
    corpus = Corpus.from_dir(root)
    s = extract(corpus, RmsExtractor(), base / "one", progress=False)
    assert s.ok and s.n_extracted == N
    return corpus, cache_path(base / "one", corpus.name, fault_extractor.NAME)


def _h5(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f} | {f"@{k}": f.attrs[k] for k in f.attrs}


def assert_same_cache(path: Path, ref: Path) -> None:
    a, b = _h5(path), _h5(ref)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k          # ids, features (bitwise), identities, fingerprint …
    assert a["features"].tobytes() == b["features"].tobytes()


def _path(cache: Path, corpus: Corpus) -> Path:
    return cache_path(cache, corpus.name, fault_extractor.NAME)


# ----------------------------------------------------------------------------- assignment
def test_assign_known_answer_and_order():
    # longest first to the emptier shard: 5→0, 4→1, 3(c)→1 (7), 3(d)→0 (8), 1→1 (8)
    shards = S.assign(["a", "b", "c", "d", "e"], [5, 4, 3, 3, 1], 2)
    assert shards == [["a", "d"], ["b", "c", "e"]]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_shards_are_balanced_within_one_clip_and_partition_the_table(n):
    rng = np.random.default_rng(n)
    ids = [f"c{k}" for k in range(203)]
    sec = rng.lognormal(0.0, 0.8, len(ids))
    shards = S.assign(ids, sec, n)
    flat = [i for s in shards for i in s]
    assert sorted(flat) == sorted(ids) and len(flat) == len(ids)        # every clip exactly once
    pos = {i: k for k, i in enumerate(ids)}
    assert all([pos[i] for i in s] == sorted(pos[i] for i in s) for s in shards)   # table order kept
    tot = [sum(sec[pos[i]] for i in s) for s in shards]
    assert max(tot) - min(tot) <= sec.max() + 1e-9
    assert S.assign(ids, sec, n) == shards                               # deterministic


def test_clip_seconds_read_from_headers(tmp_path):
    p = write_wav(tmp_path, "a", tone(1.25))
    q = write_wav(tmp_path, "b", tone(0.5, sr=48000), sr=48000)
    junk = tmp_path / "wav" / "junk.wav"
    junk.write_bytes(b"x" * 64000)
    got = S.clip_seconds([p, q, junk, tmp_path / "missing.wav"])
    np.testing.assert_allclose(got, [1.25, 0.5, 64000 / S.FALLBACK_BYTES_PER_SECOND, 0.0])


def test_corpus_shards_balanced_by_seconds(world):
    corpus, _ = world
    sec = S.clip_seconds([corpus.audio_path(i) for i in corpus.ids])
    np.testing.assert_allclose(sorted(sec), np.arange(1, N + 1) / 10.0, atol=1e-4)
    shards = S.assign(corpus.ids, sec, 3)
    tot = [sum(sec[corpus.ids.index(i)] for i in s) for s in shards]
    assert max(tot) - min(tot) <= 2.0 + 1e-6


# ----------------------------------------------------------------------------- which shard
def test_shard_from_launchers_and_flag():
    tr = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1", "LOCAL_RANK": "1"}
    assert S.shard_from_env(tr) == S.Shard(3, 4, "torchrun")
    assert S.shard_from_env(dict(tr, WORLD_SIZE="1", RANK="0")) is None
    sl = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}
    assert S.shard_from_env(sl) == S.Shard(2, 4, "slurm-array")
    with pytest.raises(ValueError, match="contiguous array"):
        S.shard_from_env(dict(sl, SLURM_ARRAY_TASK_ID="16"))     # --array=10-16:2: task ids are not 0..N-1
    assert S.shard_from_env({}) is None
    assert S.resolve_shard("1/2", tr) == S.Shard(1, 2)            # the flag wins
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard|shard"):
            S.parse_shard(bad)


# ----------------------------------------------------------------------------- shards + merge
def test_two_shards_then_merge_equal_one_process(world, tmp_path):
    corpus, ref = world
    cache = tmp_path / "c"
    got = []
    for i in range(2):
        s = extract(corpus, RmsExtractor(), cache, shard=S.Shard(i, 2), progress=False, part_size=3)
        assert s.ok and s.n_cached_before == 0
        got.append(s.n_extracted)
        assert not _path(cache, corpus).exists()          # shards never write the .h5
    assert sum(got) == N and min(got) >= 1
    r = M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    assert (r.n_shards, r.n_rows, r.failures) == (2, N, [])
    assert_same_cache(_path(cache, corpus), ref)
    assert not S.shards_root(_path(cache, corpus)).exists()          # shard folders removed after the merge
    # a second sharded run finds everything cached
    s = extract(corpus, RmsExtractor(), cache, shard=S.Shard(0, 2), progress=False)
    assert s.n_extracted == 0 and s.n_cached_before == s.n_clips


def test_shards_run_at_once_but_not_beside_a_single_process_run(world, tmp_path):
    corpus, _ = world
    cache = tmp_path / "c"
    path = _path(cache, corpus)
    a = S.ShardWriter(path, S.Shard(0, 2), fault_extractor.NAME, RmsExtractor().config())
    b = S.ShardWriter(path, S.Shard(1, 2), fault_extractor.NAME, RmsExtractor().config())
    with a, b:    # two shards hold the cache lock shared at once
        with pytest.raises(CacheError, match="already being extracted"):
            S.ShardWriter(path, S.Shard(1, 2), fault_extractor.NAME, RmsExtractor().config()).__enter__()
        with pytest.raises(CacheError, match=r"another extraction \(pid \d+, shard 1/2 of a sharded run\)"):
            extract(corpus, RmsExtractor(), cache, progress=False)


def test_merge_names_a_missing_shard_with_its_command(world, tmp_path):
    corpus, _ = world
    cache = tmp_path / "c"
    cmd = "exvo extract --model _test_rms --data D --cache C --shard {shard}"
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(0, 3), command=cmd, progress=False)
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(2, 3), command=cmd, progress=False)
    with pytest.raises(CacheError) as e:
        M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    msg = str(e.value)
    assert "1 of 3 shards are missing or unfinished (1/3)" in msg
    assert "`exvo extract --model _test_rms --data D --cache C --shard 1/3`" in msg
    assert not _path(cache, corpus).exists()


CMD = "exvo extract --model _test_rms --data {data} --cache C{extra} --shard {{shard}}"


def test_a_shard_with_other_options_than_its_siblings_is_refused_before_it_starts(world, tmp_path):
    """Issue 27, case 6: `--dtype float16` on one of two shards is refused at its start, with the others' command."""
    from exvo.extract.base import ExtractOptions

    corpus, ref = world
    cache = tmp_path / "c"
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(0, 2), progress=False,
            command=CMD.format(data="D", extra=""))
    with pytest.raises(CacheError) as e:
        extract(corpus, RmsExtractor(), cache, ExtractOptions(dtype="float16"), shard=S.Shard(1, 2), progress=False,
                command=CMD.format(data="D", extra=" --dtype float16"))
    d0 = S.shard_dir(_path(cache, corpus), S.Shard(0, 2))
    assert str(e.value) == (
        f"shard 1/2 of {_path(cache, corpus)} would not merge with shard 0/2, already in {d0} (storage_dtype: "
        "cache='float32' requested='float16'; 'cache' is shard 0/2, 'requested' this one). Run it with the options "
        "of the other shards: `exvo extract --model _test_rms --data D --cache C --shard 1/2`; or, to change the "
        "settings, run every shard with --overwrite")
    assert not S.shard_dir(_path(cache, corpus), S.Shard(1, 2)).exists()      # nothing extracted, nothing written
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(1, 2), progress=False)  # the fix works
    M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    assert_same_cache(_path(cache, corpus), ref)


def test_a_shard_of_another_split_is_refused_before_it_starts(world, tmp_path):
    corpus, _ = world
    cache = tmp_path / "c"
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(0, 3), progress=False)
    with pytest.raises(CacheError, match=r"holds shard 0/3 of a split into 3 shards; this is shard 1/2, and a merge "
                                         r"needs the shards of one split"):
        extract(corpus, RmsExtractor(), cache, shard=S.Shard(1, 2), progress=False)


def test_merge_refuses_a_shard_with_another_config_and_hints_with_the_right_options(world, tmp_path):
    corpus, ref = world
    cache = tmp_path / "c"
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(0, 2), progress=False,
            command=CMD.format(data="D", extra=""))
    # a shard made elsewhere with other settings, copied in (the start check could not see it)
    extract(corpus, _V2(), tmp_path / "elsewhere", shard=S.Shard(1, 2), progress=False,
            command=CMD.format(data="D", extra=" --odd-option"))
    import shutil

    d1 = S.shard_dir(_path(cache, corpus), S.Shard(1, 2))
    shutil.copytree(S.shard_dir(_path(tmp_path / "elsewhere", corpus), S.Shard(1, 2)), d1)
    with pytest.raises(CacheError) as e:
        M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    msg = str(e.value)
    assert "shard(s) 1/2 were made with other settings than shard 0/2" in msg
    assert "version: cache='1' requested='2'" in msg
    assert f"Delete {d1} and run `exvo extract --model _test_rms --data D --cache C --shard 1/2` (the options" in msg
    assert "--odd-option" not in msg                       # the hint does not repeat the odd shard's mistake
    shutil.rmtree(d1)
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(1, 2), progress=False)
    M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    assert_same_cache(_path(cache, corpus), ref)


def test_merge_names_a_shard_of_another_corpus_with_the_same_name_and_hints_with_this_corpus(world, tmp_path):
    """Issue 27, case 18: a foreign shard's hint runs the shard for the corpus being merged, not the foreign one."""
    import shutil

    corpus, ref = world
    other_root = tmp_path / "other" / corpus.root.name        # the same folder name: the same cache folder
    shutil.copytree(corpus.root, other_root)
    write_wav(other_root, "s000", tone(0.35, freq=999, seed=99))         # other audio: another split
    other = Corpus.from_dir(other_root)
    cache = tmp_path / "c"
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(0, 2), progress=False,
            command=CMD.format(data=corpus.root, extra=""))
    extract(other, RmsExtractor(), cache, shard=S.Shard(1, 2), progress=False,
            command=CMD.format(data=other_root, extra=""))
    with pytest.raises(CacheError) as e:
        M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids, corpus)
    msg = str(e.value)
    d1 = S.shard_dir(_path(cache, corpus), S.Shard(1, 2))
    assert (f"shard(s) 1/2 were made from another clip list than the table of {corpus.root} (another table, audio "
            f"that changed since, or another corpus with the same folder name: --data {other_root}). Delete {d1} "
            f"and run them for this corpus: `exvo extract --model _test_rms --data {corpus.root} --cache C "
            "--shard 1/2`") in msg, msg
    shutil.rmtree(d1)
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(1, 2), progress=False)
    M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids, corpus)
    assert_same_cache(_path(cache, corpus), ref)


def test_a_shard_refuses_settings_other_than_the_existing_cache(world, tmp_path):
    corpus, _ = world
    cache = tmp_path / "c"
    extract(corpus, RmsExtractor(), cache, progress=False)
    with pytest.raises(CacheError, match="other settings"):
        extract(corpus, _V2(), cache, shard=S.Shard(0, 2), progress=False)


def test_bad_files_are_reported_by_their_shard_and_by_the_merge(world, tmp_path):
    corpus, _ = world
    import shutil

    root = tmp_path / "corpus"
    shutil.copytree(corpus.root, root)
    bad = Corpus.from_dir(root).ids[4]
    Corpus.from_dir(root).audio_path(bad).write_bytes(b"not audio at all")
    c = Corpus.from_dir(root)
    cache = tmp_path / "c"
    fails = []
    for i in range(2):
        s = extract(c, RmsExtractor(), cache, shard=S.Shard(i, 2), progress=False)
        fails += [f[0] for f in s.failures]
    assert fails == [bad]
    r = M.merge(_path(cache, c), fault_extractor.NAME, c.ids)
    assert [f[0] for f in r.failures] == [bad] and r.n_rows == N - 1


_KILL_AFTER_PARTS = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
import fault_extractor
from exvo.corpus import Corpus
from exvo.extract import shard as S
from exvo.extract.run import extract
real, seen = os.replace, [0]
def replace(src, dst, *a, **k):
    real(src, dst, *a, **k)
    if Path(dst).name.startswith("part-"):
        seen[0] += 1
        if seen[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
extract(Corpus.from_dir(sys.argv[1]), fault_extractor.RmsExtractor(), sys.argv[2], shard=S.Shard(0, 2),
        part_size=2, progress=False)
"""


def test_a_shard_killed_mid_way_resumes(world, tmp_path):
    corpus, ref = world
    cache = tmp_path / "c"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _KILL_AFTER_PARTS, str(corpus.root), str(cache), str(HERE)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr
    d = S.shard_dir(_path(cache, corpus), S.Shard(0, 2))
    assert len(list(d.glob("part-*.npz"))) == 2 and not (d / S.DONE).exists()
    with pytest.raises(CacheError, match=r"unfinished \(0/2, 1/2\)"):
        M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    s = extract(corpus, RmsExtractor(), cache, shard=S.Shard(0, 2), progress=False)
    assert s.n_cached_before == 4 and s.n_extracted == s.n_clips - 4
    extract(corpus, RmsExtractor(), cache, shard=S.Shard(1, 2), progress=False)
    M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    assert_same_cache(_path(cache, corpus), ref)


def test_torchrun_two_ranks_equal_one_process(world, tmp_path):
    corpus, ref = world
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    cache = tmp_path / "c"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_ARRAY_TASK_ID"):
        env.pop(k, None)
    r = subprocess.run(["timeout", "150", str(torchrun), "--standalone", "--nproc-per-node", "2",
                        str(HERE / "fault_cli.py"), "extract", "--model", fault_extractor.NAME,
                        "--data", str(corpus.root), "--cache", str(cache)],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shard 0/2 (torchrun)" in r.stdout and "shard 1/2 (torchrun)" in r.stdout
    assert f"merged 2 shards: {N} clips cached" in r.stdout
    assert_same_cache(_path(cache, corpus), ref)


def test_cli_shards_and_merge(world, tmp_path):
    corpus, ref = world
    from typer.testing import CliRunner

    import fault_cli  # noqa: F401  (registers the test extractors)
    from exvo.cli import app

    cache = tmp_path / "c"
    base = ["extract", "--model", fault_extractor.NAME, "--data", str(corpus.root), "--cache", str(cache)]
    run = CliRunner().invoke
    r = run(app, base + ["--shard", "1/2"])
    assert r.exit_code == 0, r.output
    r = run(app, base + ["--merge"])
    assert r.exit_code == 2 and "--shard 0/2" in r.output, r.output
    assert run(app, base + ["--shard", "0/2"]).exit_code == 0
    r = run(app, base + ["--merge"])
    assert r.exit_code == 0 and f"merged 2 shards: {N} clips cached" in r.output, r.output
    assert_same_cache(_path(cache, corpus), ref)


def test_slurm_array_tasks_shard_themselves_and_the_last_one_merges(world, tmp_path):
    corpus, ref = world
    from typer.testing import CliRunner

    import fault_cli  # noqa: F401
    from exvo.cli import app

    cache = tmp_path / "c"
    base = ["extract", "--model", fault_extractor.NAME, "--data", str(corpus.root), "--cache", str(cache)]
    outs = []
    for task in (7, 5, 6):       # --array=5-7, finishing out of order
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "5"}
        r = CliRunner().invoke(app, base, env=env)
        assert r.exit_code == 0, r.output
        outs.append(r.output)
    assert f"shard {7 - 5}/3 (slurm-array)" in outs[0] and "merged" not in outs[0] + outs[1]
    assert f"merged 3 shards: {N} clips cached" in outs[2]
    assert_same_cache(_path(cache, corpus), ref)


def test_overwrite_shards_rebuild_the_cache_on_merge(world, tmp_path):
    corpus, ref = world
    cache = tmp_path / "c"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(ref.parent, _path(cache, corpus).parent)     # an existing cache of version 1
    for i in range(2):
        extract(corpus, _V2(), cache, shard=S.Shard(i, 2), overwrite=True, progress=False)
    assert EmbeddingCache(_path(cache, corpus)).config["version"] == "1"     # untouched until the merge
    M.merge(_path(cache, corpus), fault_extractor.NAME, corpus.ids)
    c = EmbeddingCache(_path(cache, corpus))
    assert c.config["version"] == "2" and c.ids == EmbeddingCache(ref).ids
    np.testing.assert_array_equal(c.all_layers(), EmbeddingCache(ref).all_layers())


def test_torchrun_ranks_split_the_node_cores_and_keep_an_explicit_device():
    env = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1", "LOCAL_RANK": "1",
           "LOCAL_WORLD_SIZE": "2"}
    dev, workers = S.rank_options("cpu", 0, env)
    assert dev == "cpu" and workers == max(1, (os.cpu_count() or 1) // 2)
    assert S.rank_options("cpu", 3, env) == ("cpu", 3)           # an explicit --workers is kept
    assert S.rank_options("auto", 0, {}) == ("auto", 0)          # no launcher: nothing changes


def test_ssl_shards_with_kept_layers_equal_one_process(ssl_models, tiny_corpus, tmp_path):
    from exvo.extract.base import ExtractOptions

    corpus = Corpus.from_dir(tiny_corpus)
    opts = ExtractOptions(checkpoint=str(ssl_models["wavlm"]), device="cpu", layers="0,2", normalize="on")
    one = extract(corpus, "wavlm", tmp_path / "one", opts, progress=False)
    for i in range(2):
        extract(corpus, "wavlm", tmp_path / "sh", opts, shard=S.Shard(i, 2), progress=False)
    r = M.merge(cache_path(tmp_path / "sh", corpus.name, "wavlm"), "wavlm", corpus.ids)
    assert r.n_rows == len(corpus) == len(EmbeddingCache(one.cache).ids)
    assert_same_cache(r.path, Path(one.cache))
    assert EmbeddingCache(r.path).layer_ids == [0, 2]
