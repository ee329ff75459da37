"""Bad audio among good audio: each bad file is processed correctly or reported by id with a
reason; the good files around it are all extracted; the CLI exit code tells (0/1/3)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fault_extractor  # noqa: F401  (registers _test_rms)
from fault_corpus import HEADER, row, tone, write_table, write_wav
from fault_extractor import RmsExtractor, reference_features
from exvo.corpus import SAMPLE_RATE, AudioError, Corpus, load_audio, read_audio
from exvo.extract.cache import EmbeddingCache, cache_path
from exvo.extract.run import ExtractionAborted, extract

SR = SAMPLE_RATE

# File_ID -> expected failure reason (substring); every other clip must be extracted
BAD = {
    "[missing]": "file not found",
    "[empty]": "file is empty (0 bytes)",
    "[truncated]": "file is truncated: its header declares 32000 bytes",
    "[corrupt_header]": "not a readable audio file",
    "[not_audio]": "not a readable audio file",
    "[nan]": "NaN or inf samples",
    "[inf]": "NaN or inf samples",
    "[folder]": "is a folder, not an audio file",
    "[loop]": "is a symbolic link loop",
    "[dangling]": "is a symbolic link to nowhere.wav, which does not exist",
    "[huge]": "float samples reach 4e+29, far outside [-1, 1] and beyond any integer scale",
}
# File_ID -> the note its clip gets (extracted, with a decision the user should know about)
NOTED = {
    "[int16scale]": "float samples at 16-bit integer scale (peak 9830, expected within [-1, 1]): divided by 32768",
    "[cancel]": "the 2 channels cancel out when averaged (the mix is silent; one channel is probably the other "
                "with inverted polarity): channel 0 alone was used",
}


def _build(root):
    rows = []

    def add(cid, split="Train"):
        rows.append(row(cid, split=split, speaker=f"Speaker_{len(rows) % 5}"))

    def good(k):
        cid = f"[good{k}]"
        write_wav(root, f"good{k}", tone(0.3, freq=300 + 50 * k, seed=k))
        add(cid)

    k = 0
    good(k); k += 1
    add("[missing]"); good(k); k += 1
    (root / "wav" / "empty.wav").write_bytes(b""); add("[empty]"); good(k); k += 1
    full = write_wav(root, "truncated", tone(1.0)).read_bytes()          # 1 s int16 = 32000 data bytes
    (root / "wav" / "truncated.wav").write_bytes(full[: len(full) // 2]); add("[truncated]"); good(k); k += 1
    (root / "wav" / "corrupt_header.wav").write_bytes(full[:30]); add("[corrupt_header]"); good(k); k += 1
    (root / "wav" / "not_audio.wav").write_text("File_ID,Split\n[00000],Train\n" * 50); add("[not_audio]"); good(k); k += 1
    write_wav(root, "silence", np.zeros(SR, np.float32)); add("[silence]"); good(k); k += 1
    write_wav(root, "short10ms", tone(0.010)); add("[short10ms]"); good(k); k += 1
    # 10 minutes, written as one second tiled (440 whole cycles per second: seamless)
    write_wav(root, "tenmin", np.tile(tone(1.0), 600)); add("[tenmin]"); good(k); k += 1
    left, right = tone(0.5, freq=300, amp=0.4), tone(0.5, freq=700, amp=0.2)
    write_wav(root, "stereo", np.stack([left, right], axis=1), subtype="FLOAT"); add("[stereo]"); good(k); k += 1
    write_wav(root, "sr8k", tone(1.0, sr=8000), sr=8000); add("[sr8k]"); good(k); k += 1
    write_wav(root, "sr48k", tone(1.0, sr=48000), sr=48000); add("[sr48k]"); good(k); k += 1
    for sub in ("PCM_16", "PCM_24", "FLOAT"):
        write_wav(root, f"enc_{sub}", tone(0.5), subtype=sub); add(f"[enc_{sub}]")
    good(k); k += 1
    x = tone(0.5); x[100] = np.nan
    write_wav(root, "nan", x, subtype="FLOAT"); add("[nan]"); good(k); k += 1
    x = tone(0.5); x[200] = np.inf
    write_wav(root, "inf", x, subtype="FLOAT"); add("[inf]"); good(k); k += 1
    (root / "wav" / "folder.wav").mkdir(); add("[folder]")                   # a folder named like a wav
    os.symlink("loop.wav", root / "wav" / "loop.wav"); add("[loop]")          # a link to itself
    os.symlink("nowhere.wav", root / "wav" / "dangling.wav"); add("[dangling]")
    write_wav(root, "huge", tone(0.2) * np.float32(4e29 / 0.3), subtype="FLOAT"); add("[huge]")
    write_wav(root, "int16scale", np.round(tone(0.5) * 32767), subtype="FLOAT"); add("[int16scale]")
    write_wav(root, "cancel", np.stack([tone(0.5), -tone(0.5)], axis=1), subtype="FLOAT"); add("[cancel]")
    write_table(root, rows, header=HEADER)
    return [r["File_ID"] for r in rows]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("badaudio") / "corpus"
    ids = _build(root)
    corpus = Corpus.from_dir(root)
    cache = root.parent / "cache"
    summary = extract(corpus, RmsExtractor(), cache, progress=False)
    return corpus, ids, cache, summary


def test_every_bad_file_is_reported_by_id_and_the_others_are_extracted(bad_run):
    corpus, ids, cache, summary = bad_run
    failed = dict(summary.failures)
    assert set(failed) == set(BAD), summary.failures
    for cid, reason in BAD.items():
        assert reason in failed[cid], (cid, failed[cid])
    assert not summary.ok
    assert summary.n_extracted == len(ids) - len(BAD)
    c = EmbeddingCache(cache_path(cache, corpus.name, fault_extractor.NAME))
    assert c.ids == [i for i in ids if i not in BAD]  # corpus order, nothing else
    # the summary is also on disk, beside the cache
    on_disk = json.loads(cache_path(cache, corpus.name, fault_extractor.NAME).with_suffix(".summary.json").read_text())
    assert {f[0] for f in on_disk["failures"]} == set(BAD)
    # clips that needed a decision are extracted and say which, by id
    notes = dict(summary.notes)
    assert set(notes) == set(NOTED), summary.notes
    for cid, note in NOTED.items():
        assert notes[cid].startswith(note), (cid, notes[cid])


def test_processed_edge_cases_have_the_right_numbers(bad_run):
    corpus, ids, cache, _ = bad_run
    c = EmbeddingCache(cache_path(cache, corpus.name, fault_extractor.NAME))
    x = dict(zip(c.ids, c.layer(0)))
    # silence: 1 s, mean 0, RMS 0, no zero crossings
    np.testing.assert_allclose(x["[silence]"], [1.0, 0, 0, 0, 0, 0], atol=1e-7)
    # 10 ms clip: one short frame, duration 0.01 s
    assert x["[short10ms]"][0] == pytest.approx(0.010)
    # 10 min of a 0.3 sine: RMS 0.3/sqrt(2) in every frame, 2*440 crossings per second
    ten = x["[tenmin]"]
    assert ten[0] == pytest.approx(600.0)
    assert ten[2] == pytest.approx(0.3 / np.sqrt(2), rel=2e-3)
    assert ten[4] == pytest.approx(2 * 440 / SR, rel=0.03)   # crossings per sample gap
    # encodings decode to the same tone
    for sub in ("PCM_16", "PCM_24", "FLOAT"):
        # (quantisation moves a few near-zero samples across zero: ZCR to within 5e-4)
        np.testing.assert_allclose(x[f"[enc_{sub}]"], reference_features(tone(0.5))[0], rtol=1e-3, atol=5e-4)
    # float samples at int16 scale: the features of the rescaled tone, not of a clipped or silent one
    np.testing.assert_allclose(x["[int16scale]"], reference_features(np.round(tone(0.5) * 32767) / 32768)[0],
                               rtol=1e-5, atol=1e-6)
    # channels that cancel: the features of one channel, not of silence
    np.testing.assert_allclose(x["[cancel]"], reference_features(tone(0.5))[0], rtol=1e-6, atol=1e-7)
    # every good clip equals the hand-computable reference on its decoded audio
    for k in range(15):
        cid = f"[good{k}]"
        np.testing.assert_allclose(x[cid], reference_features(load_audio(corpus.audio_path(cid)))[0], rtol=1e-6)


def test_stereo_is_the_mean_of_channels(tmp_path):
    left, right = tone(0.5, freq=300, amp=0.4), tone(0.5, freq=700, amp=0.2)
    p = write_wav(tmp_path, "st", np.stack([left, right], axis=1), subtype="FLOAT")
    np.testing.assert_allclose(load_audio(p), (left + right) / 2, atol=1e-7)
    p16 = write_wav(tmp_path, "st16", np.stack([left, right], axis=1), subtype="PCM_16")
    np.testing.assert_allclose(load_audio(p16), (left + right) / 2, atol=2 / 32768)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k(tmp_path, sr):
    p = write_wav(tmp_path, f"r{sr}", tone(1.0, sr=sr), sr=sr, subtype="FLOAT")
    y = load_audio(p)
    assert abs(y.size - SR) <= 1                       # length = duration * 16000
    ref = tone(1.0)
    # a 440 Hz sine survives resampling; compare away from the filter's edge transients
    np.testing.assert_allclose(y[400:-400], ref[400:-400], atol=2e-3)


@pytest.mark.parametrize("sub,tol", [("PCM_16", 1 / 32768), ("PCM_24", 1 / 2 ** 23), ("FLOAT", 0), ("DOUBLE", 1e-7)])
def test_encodings_decode_to_the_same_samples(tmp_path, sub, tol):
    x = tone(0.25)
    y = load_audio(write_wav(tmp_path, "e", x, subtype=sub))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=tol + 1e-9)


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "file not found"),
    (lambda p: p.write_bytes(b""), "file is empty"),
    (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt "), "not a readable audio file"),
    (lambda p: p.write_bytes(bytes(range(256)) * 8), "not a readable audio file"),
])
def test_load_audio_names_the_file_and_the_reason(tmp_path, make, reason):
    p = tmp_path / "x.wav"
    make(p)
    with pytest.raises(AudioError, match=reason) as ei:
        load_audio(p)
    assert str(p) in str(ei.value) and ei.value.path == p


def test_implausible_sample_rate_in_header_is_refused(tmp_path):
    import struct

    p = write_wav(tmp_path, "r", tone(0.1))
    b = bytearray(p.read_bytes())
    b[24:28] = struct.pack("<I", 3)            # fmt chunk: sample rate 3 Hz
    p.write_bytes(bytes(b))
    with pytest.raises(AudioError, match="implausible sample rate of 3 Hz"):
        load_audio(p)


def test_streamed_wav_with_placeholder_size_is_read_not_flagged(tmp_path):
    """Recorders killed mid-file leave data size 0 or 0xFFFFFFFF: read what is there."""
    import struct

    p = write_wav(tmp_path, "s", tone(0.5))
    b = bytearray(p.read_bytes())
    assert b[36:40] == b"data"
    b[40:44] = struct.pack("<I", 0xFFFFFFFF)
    p.write_bytes(bytes(b))
    y = load_audio(p)
    np.testing.assert_allclose(y, tone(0.5), atol=1 / 32768)


def test_huge_finite_float_samples_are_refused_not_overflowed_to_inf(tmp_path):
    big = np.full((100, 2), 3e38, dtype=np.float32)
    with pytest.raises(AudioError, match=r"float samples reach 3e\+38, far outside \[-1, 1\]"):
        load_audio(write_wav(tmp_path, "big", big, subtype="FLOAT"))


@pytest.mark.parametrize("scale,bits", [(32767, "16-bit"), (2 ** 23 - 1, "24-bit"), (2 ** 31 - 1, "32-bit")])
def test_float_samples_at_an_integer_scale_are_divided_by_it_with_a_note(tmp_path, scale, bits):
    x = tone(0.25)                                           # peak 0.3
    y, note = read_audio(write_wav(tmp_path, "i", x.astype(np.float64) * scale, subtype="DOUBLE"))
    full = {"16-bit": 2 ** 15, "24-bit": 2 ** 23, "32-bit": 2 ** 31}[bits]
    np.testing.assert_allclose(y, x * (scale / full), rtol=1e-6, atol=1e-9)
    peak = float(np.abs(x.astype(np.float64) * scale).astype(np.float32).max())     # as decoded (float32)
    assert note.startswith(f"float samples at {bits} integer scale (peak {peak:.6g}, expected within "
                           f"[-1, 1]): divided by {full}"), note


def test_float_samples_a_little_over_full_scale_are_used_as_they_are(tmp_path):
    x = tone(0.25, amp=3.5)                                  # +11 dBFS: within the headroom
    y, note = read_audio(write_wav(tmp_path, "hot", x, subtype="FLOAT"))
    np.testing.assert_array_equal(y, x)
    assert note is None


def test_stereo_channels_that_cancel_give_the_louder_channel_with_a_note(tmp_path):
    left = tone(0.5, seed=1)
    y, note = read_audio(write_wav(tmp_path, "c", np.stack([left * 0.999, -left], axis=1), subtype="FLOAT"))
    np.testing.assert_array_equal(y, -left)                  # channel 1 is the louder one
    assert note == ("the 2 channels cancel out when averaged (the mix is 66 dB below channel 1; one channel is "
                    "probably the other with inverted polarity): channel 1 alone was used")
    y, note = read_audio(write_wav(tmp_path, "ok", np.stack([left, left * 0.5], axis=1), subtype="FLOAT"))
    np.testing.assert_allclose(y, left * 0.75, atol=1e-7)
    assert note is None                                      # an ordinary stereo clip: the mean, no note


# ----------------------------------------------------------------------------- CLI exit codes
def _cli(args):
    from typer.testing import CliRunner

    from exvo.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_exit_1_lists_failures_and_0_when_clean(bad_run, tmp_path):
    corpus, ids, _, _ = bad_run
    res = _cli(["extract", "--model", fault_extractor.NAME, "--data", corpus.root, "--cache", tmp_path / "c"])
    assert res.exit_code == 1, res.output
    for cid, reason in BAD.items():
        assert f"FAILED {cid}: " in res.output and reason in res.output
    clean = tmp_path / "clean"
    write_wav(clean, "a", tone(0.2))
    write_table(clean, [row("[a]")], header=HEADER)
    res = _cli(["extract", "--model", fault_extractor.NAME, "--data", clean, "--cache", tmp_path / "c"])
    assert res.exit_code == 0, res.output
    assert "1/1 clips cached" in res.output


def _mostly_broken(root, n=20):
    """Even clips good, odd clips missing: 10 good, 10 broken."""
    rows = []
    for k in range(n):
        rows.append(row(f"[m{k:02d}]"))
        if k % 2 == 0:
            write_wav(root, f"m{k:02d}", tone(0.2, freq=200 + 20 * k, seed=k))
    write_table(root, rows, header=HEADER)
    return [r["File_ID"] for r in rows]


@pytest.mark.parametrize("limit", ["3", "15%", "0.15"])
def test_max_failures_aborts_early_keeps_work_and_resumes(tmp_path, limit):
    root = tmp_path / "broken"
    ids = _mostly_broken(root)
    corpus = Corpus.from_dir(root)
    with pytest.raises(ExtractionAborted, match=r"4 clips failed, more than --max-failures"):
        extract(corpus, RmsExtractor(), tmp_path / "cache", max_failures=limit, progress=False)
    # good clips 0, 2, 4, 6 came before the 4th failure (clip 7): kept as parts, no .h5 yet
    path = cache_path(tmp_path / "cache", corpus.name, fault_extractor.NAME)
    assert not path.exists()
    # fix the broken files, run again: resumes with the 4 kept clips
    for k in range(1, 20, 2):
        write_wav(root, f"m{k:02d}", tone(0.2, freq=200 + 20 * k, seed=k))
    s = extract(corpus, RmsExtractor(), tmp_path / "cache", max_failures=limit, progress=False)
    assert (s.n_cached_before, s.n_extracted, s.failures) == (4, 16, [])
    ref = extract(corpus, RmsExtractor(), tmp_path / "ref", progress=False)
    assert ref.n_extracted == 20
    a = EmbeddingCache(path)
    b = EmbeddingCache(cache_path(tmp_path / "ref", corpus.name, fault_extractor.NAME))
    assert a.ids == b.ids == ids
    assert np.array_equal(a.all_layers(), b.all_layers())


def test_cli_exit_3_on_max_failures(tmp_path):
    root = tmp_path / "broken"
    _mostly_broken(root)
    res = _cli(["extract", "--model", fault_extractor.NAME, "--data", root, "--cache", tmp_path / "c",
                "--max-failures", "10%"])
    assert res.exit_code == 3, res.output
    assert "more than --max-failures 10%" in res.output
    res = _cli(["extract", "--model", fault_extractor.NAME, "--data", root, "--cache", tmp_path / "c",
                "--max-failures", "lots"])
    assert res.exit_code == 2 and "--max-failures must be a count" in res.output


def test_nan_embedding_and_extractor_exception_are_per_clip_failures(tmp_path):
    root = tmp_path / "c"
    rows = []
    for k in range(6):
        rows.append(row(f"[n{k}]"))
        write_wav(root, f"n{k}", tone(0.2, seed=k))
    write_table(root, rows, header=HEADER)
    corpus = Corpus.from_dir(root)
    ex = RmsExtractor(fail_ids=["[n1]"], nan_ids=["[n3]"])
    s = extract(corpus, ex, tmp_path / "cache", progress=False)
    failed = dict(s.failures)
    assert set(failed) == {"[n1]", "[n3]"}
    assert "injected extractor failure" in failed["[n1]"]
    assert "contains NaN/inf; not stored" in failed["[n3]"]
    assert ex.closed
    assert EmbeddingCache(cache_path(tmp_path / "cache", corpus.name, fault_extractor.NAME)).ids == \
        ["[n0]", "[n2]", "[n4]", "[n5]"]


def test_egemaps_on_the_bad_corpus_processes_or_reports_every_clip(bad_run, tmp_path):
    """The real openSMILE extractor on the same corpus: same failures, everything else cached."""
    from exvo.extract.base import ExtractOptions, names

    if "egemaps" not in names():
        pytest.skip("egemaps (exvo/extract/smile.py) is not available")
    corpus, ids, _, _ = bad_run
    ids = [i for i in ids if i != "[tenmin]"]   # 10 min of openSMILE is too slow for the default suite
    s = extract(corpus, "egemaps", tmp_path, ExtractOptions(workers=2), ids=ids, progress=False)
    failed = dict(s.failures)
    assert set(failed) == set(BAD), s.failures
    for cid, reason in BAD.items():
        assert reason in failed[cid]
    # silence is valid audio; the 10 ms clip is padded to openSMILE's window, with a note saying so; the
    # clips whose audio needed a decision say which, from the worker processes too
    notes = dict(s.notes)
    assert set(notes) == {"[short10ms]", *NOTED} and "padded" in notes["[short10ms]"], s.notes
    assert all(notes[cid].startswith(n) for cid, n in NOTED.items()), s.notes
    c = EmbeddingCache(cache_path(tmp_path, corpus.name, "egemaps"))
    assert c.ids == [i for i in ids if i not in failed]
    assert (c.n_layers, c.dim) == (1, 88)
    assert all(f"[good{k}]" in c.ids for k in range(15))
    x = c.layer(0)
    assert np.isfinite(x).all()
    # stereo and resampled clips are real rows, not copies of one another
    assert not np.allclose(x[c.ids.index("[sr8k]")], x[c.ids.index("[stereo]")])
