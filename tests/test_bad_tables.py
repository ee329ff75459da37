"""Bad data_info.csv tables: each problem is a CorpusError naming the rows (CSV line numbers,
header = line 1) and what was expected; accepted oddities are kept, not lost."""
from __future__ import annotations

import numpy as np
import pytest

import fault_extractor
from fault_corpus import HEADER, row, tone, write_table, write_wav
from exvo.corpus import CorpusError, Corpus, warn_orphans
from exvo.extract.run import extract
from exvo.metrics import EMOTIONS


def _rows(n=4):
    return [row(f"[{k:05d}]", split=("Train", "Val", "Test")[k % 3], speaker=f"Speaker_{k}") for k in range(n)]


def test_valid_table_in_any_column_order(tmp_path):
    rows = _rows()
    write_table(tmp_path, rows, header=list(reversed(HEADER)))
    c = Corpus.from_dir(tmp_path)
    assert c.ids == ["[00000]", "[00001]", "[00002]", "[00003]"]
    assert list(c.splits) == ["Train", "Val", "Test", "Train"]
    assert c.country[2] == -1 and np.isnan(c.age[2]) and np.isnan(c.emotions[2]).all()
    assert c.age[0] == 30.0 and c.emotions[0, 0] == 0.5


def test_missing_column_is_named(tmp_path):
    write_table(tmp_path, _rows(), header=[h for h in HEADER if h not in ("Age", "Fear")])
    with pytest.raises(CorpusError, match=r"lacks column\(s\) \['Age', 'Fear'\]; found \['File_ID'"):
        Corpus.from_dir(tmp_path)


def test_extra_columns_are_kept(tmp_path):
    rows = [dict(r, Mic=f"m{k}", Notes="") for k, r in enumerate(_rows())]
    write_table(tmp_path, rows, header=HEADER + ["Mic", "Notes"])
    c = Corpus.from_dir(tmp_path)
    assert list(c.extra["Mic"]) == ["m0", "m1", "m2", "m3"]
    assert list(c.extra["Country_string"]) == ["China"] * 4
    assert list(c.extra["Notes"]) == [""] * 4


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = _rows()
    rows[3]["File_ID"] = "[00001]"
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=r"duplicate File_ID: \[00001\] \(lines 3 and 5\)"):
        Corpus.from_dir(tmp_path)


def test_duplicate_column_names(tmp_path):
    rows = _rows()
    write_table(tmp_path, rows, header=HEADER + ["Age"])
    with pytest.raises(CorpusError, match=r"duplicate column name\(s\) \['Age'\]"):
        Corpus.from_dir(tmp_path)


def test_unknown_split_names_lines_and_values(tmp_path):
    rows = _rows()
    rows[1]["Split"] = "Dev"
    rows[2]["Split"] = "train"
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=r"unknown Split value on line\(s\) 3, 4 \(values \['Dev', 'train'\]; "
                                          r"expected one of \['Train', 'Val', 'Test'\]\)"):
        Corpus.from_dir(tmp_path)


@pytest.mark.parametrize("col,value,msg", [
    ("Awe", "1.5", r"emotion intensity outside \[0, 1\] on line\(s\) 3"),
    ("Surprise", "-0.01", r"emotion intensity outside \[0, 1\] on line\(s\) 3"),
    ("Age", "250", r"Age outside \(1.0, 120.0\) years on line\(s\) 3"),
    ("Age", "0", r"Age outside \(1.0, 120.0\) years on line\(s\) 3"),
    ("Country", "4", r"Country not an integer code 0-3 on line\(s\) 3"),
    ("Country", "1.5", r"Country not an integer code 0-3 on line\(s\) 3"),
    ("Country", "China", r"non-numeric Country on line\(s\) 3"),
    ("Age", "thirty", r"non-numeric Age on line\(s\) 3"),
])
def test_labels_out_of_range_name_the_row(tmp_path, col, value, msg):
    rows = _rows()
    rows[1][col] = value   # line 3 (header is line 1)
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=msg):
        Corpus.from_dir(tmp_path)


@pytest.mark.parametrize("value", ["", "nan", "NaN", " "])
@pytest.mark.parametrize("col", ["Age", "Country", "Horror"])
def test_missing_or_nan_labels_in_train_val(tmp_path, col, value):
    rows = _rows()
    rows[0][col] = value    # Train, line 2
    rows[1][col] = value    # Val, line 3
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=rf"missing {col} label in Train/Val on line\(s\) 2, 3"):
        Corpus.from_dir(tmp_path)


def test_test_rows_may_have_no_labels_but_not_out_of_range_ones(tmp_path):
    rows = _rows()
    write_table(tmp_path, rows, header=HEADER)
    Corpus.from_dir(tmp_path)  # row 2 (line 4) is Test with empty labels: fine
    rows[2]["Age"] = "500"
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=r"Age outside .* on line\(s\) 4"):
        Corpus.from_dir(tmp_path)


def test_all_problems_are_reported_at_once(tmp_path):
    rows = _rows(6)
    rows[0]["Split"] = "Dev"
    rows[1]["Age"] = ""
    rows[4]["Amusement"] = "2"
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError) as ei:
        Corpus.from_dir(tmp_path)
    msg = str(ei.value)
    assert "unknown Split value on line(s) 2" in msg
    assert "missing Age label in Train/Val on line(s) 3" in msg
    assert "emotion intensity outside [0, 1] on line(s) 6" in msg
    assert str(tmp_path / "data_info.csv") in msg


def test_long_lists_are_shortened(tmp_path):
    rows = [row(f"[{k:05d}]", split="Dev") for k in range(25)]
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=r"line\(s\) 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 … \(\+15 more\)"):
        Corpus.from_dir(tmp_path)


def test_ragged_rows_and_blank_lines_keep_true_line_numbers(tmp_path):
    rows = _rows()
    write_table(tmp_path, rows, header=HEADER)
    lines = (tmp_path / "data_info.csv").read_text().splitlines()
    lines[2] += ",surplus"            # line 3: one cell too many
    lines[3] = lines[3].rsplit(",", 2)[0]   # line 4: two cells too few
    lines.insert(4, "")               # a blank line 5: ignored, the next row is line 6
    (tmp_path / "data_info.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=rf"wrong number of cells \(the header has {len(HEADER)}\) on line\(s\) 3, 4$"):
        Corpus.from_dir(tmp_path)
    lines[2] = lines[2][: -len(",surplus")]
    lines[3] = ",".join([lines[3], "0.5", "0.5"])
    lines[5] = lines[5].replace("Train", "Tran")   # row after the blank line
    (tmp_path / "data_info.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"unknown Split value on line\(s\) 6 "):
        Corpus.from_dir(tmp_path)


@pytest.mark.parametrize("content,msg", [
    (b"", r"lacks column\(s\)"),
    (",".join(HEADER).encode() + b"\n", "has a header but no rows"),
    (b"\xff\xfe\x00F\x00i", "is not a readable UTF-8 CSV file"),
    (b"File_ID,Split\n[1],Train\n", r"lacks column\(s\) \['Subject_ID', 'Country', 'Age'"),
])
def test_unreadable_tables(tmp_path, content, msg):
    (tmp_path / "data_info.csv").write_bytes(content)
    with pytest.raises(CorpusError, match=msg):
        Corpus.from_dir(tmp_path)


def test_bom_and_padded_header_are_accepted(tmp_path):
    write_table(tmp_path, _rows(), header=HEADER)
    text = (tmp_path / "data_info.csv").read_text()
    head, rest = text.split("\n", 1)
    (tmp_path / "data_info.csv").write_bytes(b"\xef\xbb\xbf" + (", ".join(head.split(",")) + "\n" + rest).encode())
    assert len(Corpus.from_dir(tmp_path)) == 4


def test_missing_folder_or_table(tmp_path):
    with pytest.raises(CorpusError, match="does not exist; pass --data DIR"):
        Corpus.from_dir(tmp_path / "nope")
    with pytest.raises(CorpusError, match="data_info.csv not found"):
        Corpus.from_dir(tmp_path)


def test_path_separators_in_ids_are_refused(tmp_path):
    rows = _rows()
    rows[2]["File_ID"] = "../../etc/passwd"
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=r"File_ID with a path separator or NUL on line\(s\) 4"):
        Corpus.from_dir(tmp_path)


def test_ids_without_audio_and_audio_without_rows(tmp_path):
    rows = _rows(4)
    write_table(tmp_path, rows, header=HEADER)
    for stem in ("00000", "00002", "stray1", "stray2"):
        write_wav(tmp_path, stem, tone(0.1))
    c = Corpus.from_dir(tmp_path)
    missing, orphans = c.check_audio()
    assert missing == ["[00001]", "[00003]"]
    assert [p.name for p in orphans] == ["stray1.wav", "stray2.wav"]
    with pytest.warns(UserWarning, match=r"2 audio file\(s\) in .* have no row in data_info.csv and are ignored: "
                                         r"stray1.wav, stray2.wav"):
        warn_orphans(c)
    # extraction reports the ids without audio, one by one, and extracts the rest
    s = extract(c, fault_extractor.RmsExtractor(), tmp_path / "cache", progress=False)
    assert [f[0] for f in s.failures] == ["[00001]", "[00003]"]
    assert all("file not found" in f[1] for f in s.failures)
    assert s.n_extracted == 2


def test_emotion_columns_are_read_by_name_not_position(tmp_path):
    rows = _rows(1)
    for k, e in enumerate(EMOTIONS):
        rows[0][e] = f"0.{k}"
    header = HEADER[:5] + list(reversed(EMOTIONS)) + ["Country_string"]
    write_table(tmp_path, rows, header=header)
    c = Corpus.from_dir(tmp_path)
    np.testing.assert_allclose(c.emotions[0], [k / 10 for k in range(10)])


# ----------------------------------------------------------------------------- issue 27, cases 10-12
@pytest.mark.parametrize("col", ["Age", "Country", "Awe"])
@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_an_infinite_label_is_called_not_finite(tmp_path, col, value):
    rows = _rows()
    rows[1][col] = value   # line 3
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=rf"{col} is not finite \({value}\) on line\(s\) 3; labels must be finite "
                                          r"numbers") as e:
        Corpus.from_dir(tmp_path)
    assert "non-numeric" not in str(e.value)


def test_all_subject_ids_empty_names_the_column(tmp_path):
    rows = _rows(6)
    for r in rows:
        r["Subject_ID"] = " "
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=r"the Subject_ID column is empty on every row \(6 rows\); exvo needs each "
                                          r"clip's speaker \(speaker-disjoint hold-outs and folds\)") as e:
        Corpus.from_dir(tmp_path)
    assert "speaker(s)" not in str(e.value) and "--stop-on" not in str(e.value)


def test_empty_subject_ids_of_labelled_rows_are_named(tmp_path):
    rows = _rows(6)
    rows[0]["Subject_ID"] = ""      # Train, line 2
    rows[2]["Subject_ID"] = ""      # Test, line 4: allowed (Test speakers need not be known)
    rows[4]["Subject_ID"] = ""      # Val, line 6
    write_table(tmp_path, rows, header=HEADER)
    with pytest.raises(CorpusError, match=r"empty Subject_ID in Train/Val on line\(s\) 2, 6$"):
        Corpus.from_dir(tmp_path)


def test_a_speaker_in_train_and_val_is_warned_about_and_listed(tmp_path):
    from exvo.corpus import SpeakerOverlapWarning

    rows = [row(f"[{k:05d}]", split=s, speaker=p) for k, (s, p) in enumerate(
        [("Train", "Speaker_1"), ("Train", "Speaker_2"), ("Val", "Speaker_2"), ("Val", "Speaker_3"),
         ("Test", "Speaker_3"), ("Test", "Speaker_4")])]
    write_table(tmp_path, rows, header=HEADER)
    with pytest.warns(SpeakerOverlapWarning) as caught:
        c = Corpus.from_dir(tmp_path)
    msgs = [str(w.message) for w in caught]
    assert msgs == [
        f"{tmp_path / 'data_info.csv'}: 1 speaker is in both Train and Val (Speaker_2); 1 speaker is in both Val and "
        "Test (Speaker_3). ExVo's splits are speaker-disjoint: scores on a split that shares speakers with the "
        "training data are optimistic. Give each speaker one Split, or keep in mind that these scores are not "
        "clean estimates"]
    assert c.shared_speakers("Train", "Val") == ["Speaker_2"]
    assert c.shared_speakers("Val", "Test") == ["Speaker_3"] and c.shared_speakers("Train", "Test") == []
    assert c.speaker_overlaps() == {("Train", "Val"): ["Speaker_2"], ("Val", "Test"): ["Speaker_3"]}


def test_disjoint_splits_give_no_warning(tmp_path):
    import warnings

    write_table(tmp_path, _rows(6), header=HEADER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = Corpus.from_dir(tmp_path)
    assert c.speaker_overlaps() == {}
