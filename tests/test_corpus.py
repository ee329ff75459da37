"""Corpus reader and audio loader: the happy paths with hand-checked values."""
import csv

import numpy as np
import pytest
import soundfile as sf

from exvo.corpus import AudioError, Corpus, CorpusError, file_stem, load_audio
from exvo.metrics import EMOTIONS

HEADER = ["Subject_ID", "File_ID", "Split", "Age", "Country", "Country_string", *EMOTIONS]  # not the ExVo order


def write_table(root, rows, header=HEADER):
    root.mkdir(parents=True, exist_ok=True)
    (root / "wav").mkdir(exist_ok=True)
    with open(root / "data_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def row(fid, split, spk, age, cou, emo_value=0.5):
    emo = [""] * 10 if split == "Test" else [emo_value] * 10
    return [spk, fid, split, "" if split == "Test" else age, "" if split == "Test" else cou, "x", *emo]


def test_columns_are_read_by_name_not_position(tmp_path):
    write_table(tmp_path / "c", [row("[00001]", "Train", "Speaker_1", 30, 2, 0.25),
                                 row("[00002]", "Val", "Speaker_2", 41, 3), row("[00003]", "Test", "Speaker_3", 0, 0)])
    c = Corpus.from_dir(tmp_path / "c")
    assert c.name == "c" and c.ids == ["[00001]", "[00002]", "[00003]"]
    assert list(c.splits) == ["Train", "Val", "Test"]
    assert c.age[0] == 30 and c.country[1] == 3 and c.country[2] == -1 and np.isnan(c.age[2])
    assert c.emotions[0].tolist() == [0.25] * 10
    assert c.audio_path("[00001]") == tmp_path / "c" / "wav" / "00001.wav"
    emo, cou, age = c.labels("Val")
    assert emo.shape == (1, 10) and cou.tolist() == [3] and age.tolist() == [41.0]
    with pytest.raises(CorpusError, match="no labels"):
        c.labels("Test")
    assert "Country_string" in c.extra


def test_file_stem():
    assert file_stem("[00042]") == "00042" and file_stem("abc") == "abc"


def test_missing_column_is_named(tmp_path):
    write_table(tmp_path / "c", [row("[1]", "Train", "S", 30, 1)[:-1]], header=HEADER[:-1])
    with pytest.raises(CorpusError, match=r"lacks column\(s\) \['Surprise'\]"):
        Corpus.from_dir(tmp_path / "c")


def test_missing_folder_says_how_to_fix(tmp_path):
    with pytest.raises(CorpusError, match="exvo demo-corpus"):
        Corpus.from_dir(tmp_path / "nope")


def test_demo_corpus_hidden_test_labels(small_demo_corpus_dir):
    c = Corpus.from_dir(small_demo_corpus_dir)
    emo, cou, age = c.labels("Test")
    assert len(age) == len(c.indices("Test")) > 0 and np.isfinite(age).all() and (cou >= 0).all()
    # speaker-disjoint splits
    spk = {s: set(c.speakers[c.indices(s)]) for s in ("Train", "Val", "Test")}
    assert not (spk["Train"] & spk["Val"]) and not (spk["Train"] & spk["Test"]) and not (spk["Val"] & spk["Test"])


def test_load_audio_stereo_is_averaged(tmp_path):
    left = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    x = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(x, left / 2, atol=1e-7)
    assert x.dtype == np.float32


def test_load_audio_resamples_with_a_real_resampler(tmp_path):
    t = np.arange(48000) / 48000
    sf.write(tmp_path / "r.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 48000, subtype="FLOAT")
    x = load_audio(tmp_path / "r.wav")
    assert x.shape == (16000,)
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    # away from the edges a 440 Hz tone survives the 48k -> 16k conversion almost exactly
    np.testing.assert_allclose(x[200:-200], ref[200:-200], atol=2e-3)


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: file is empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match="text.wav: not a readable audio file"):
        load_audio(tmp_path / "text.wav")
