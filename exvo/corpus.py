"""The ExVo corpus layout: ``data_info.csv`` + ``wav/`` → :class:`Corpus`; audio loading.

A corpus is a folder::

    DIR/data_info.csv     one row per clip, read by column name
    DIR/wav/00000.wav     audio of File_ID "[00000]"

Labels are held as arrays aligned with ``Corpus.ids``:
``emotions`` ``(n_clips, 10)`` in [0, 1] (official order), ``country`` ``(n_clips,)``
int 0-3, ``age`` ``(n_clips,)`` years. Test rows have no public labels: NaN for
emotions/age and -1 for country.
"""
from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exvo.metrics import COUNTRIES, EMOTIONS

SAMPLE_RATE = 16_000
"""Every extractor receives mono float32 audio at this rate (Hz)."""

SPLITS: tuple[str, ...] = ("Train", "Val", "Test")
REQUIRED_COLUMNS: tuple[str, ...] = ("File_ID", "Split", "Subject_ID", "Country", "Age", *EMOTIONS)
OPTIONAL_COLUMNS: tuple[str, ...] = ("Country_string",)
HIDDEN_LABELS_FILE = "hidden_test_labels.csv"
"""Side file with Test labels (written by the demo corpus generator, never by ExVo)."""

AGE_RANGE = (1.0, 120.0)
MAX_LISTED = 10


class CorpusError(ValueError):
    """The corpus table or folder is unusable; the message says what to fix."""


class AudioError(ValueError):
    """One audio file could not be turned into 16 kHz mono float32 samples."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def listing(items, limit: int = MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def file_stem(file_id: str) -> str:
    """``"[00000]"`` → ``"00000"`` (the audio file is ``wav/<stem>.wav``)."""
    s = file_id.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    return s


@dataclass
class Corpus:
    """A labelled corpus in the ExVo layout. Build it with :meth:`Corpus.from_dir`."""

    root: Path
    ids: list[str]
    splits: np.ndarray            # (n,) str: Train / Val / Test
    speakers: np.ndarray          # (n,) str
    country: np.ndarray           # (n,) int64, -1 where unknown (Test)
    age: np.ndarray               # (n,) float64 years, NaN where unknown
    emotions: np.ndarray          # (n, 10) float64 in [0, 1], NaN where unknown
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other CSV columns, as str

    @property
    def name(self) -> str:
        """Cache namespace: the corpus folder's name."""
        return self.root.resolve().name

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def wav_dir(self) -> Path:
        return self.root / "wav"

    def audio_path(self, file_id: str) -> Path:
        return self.wav_dir / f"{file_stem(file_id)}.wav"

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split, in CSV order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.splits == split)

    def split_ids(self, split: str) -> list[str]:
        return [self.ids[i] for i in self.indices(split)]

    def has_labels(self, split: str) -> bool:
        idx = self.indices(split)
        return idx.size > 0 and bool(np.isfinite(self.age[idx]).all())

    def labels(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(emotions (n, 10), country (n,), age (n,))`` of one split.

        Test labels come from the hidden side file when the corpus has one
        (the demo corpus does); otherwise a :class:`CorpusError` says they are not public.
        """
        idx = self.indices(split)
        if not self.has_labels(split):
            have = np.isfinite(self.age[idx])
            if have.any():
                lacking = [self.ids[i] for i in idx[~have]]
                raise CorpusError(
                    f"the {split} rows of {self.root / 'data_info.csv'} are only partly labelled: {int(have.sum())} "
                    f"of {idx.size} have labels, {len(lacking)} do not ({listing(lacking)}). Scoring needs every "
                    f"{split} clip labelled: fill in the missing labels (or remove the labels so that "
                    f"{HIDDEN_LABELS_FILE} is used)")
            hidden = self.root / HIDDEN_LABELS_FILE
            if not hidden.exists():
                raise CorpusError(
                    f"split {split!r} of {self.root} has no labels (ExVo Test labels are not public); "
                    f"score on 'Val' instead, or add {HIDDEN_LABELS_FILE} with the full columns"
                )
            h = Corpus.from_dir(self.root, table=hidden)
            pos = {i: k for k, i in enumerate(h.ids)}
            missing = [self.ids[i] for i in idx if self.ids[i] not in pos]
            if missing:
                raise CorpusError(f"{hidden} lacks labels for {len(missing)} ids: {listing(missing)}")
            hidx = np.array([pos[self.ids[i]] for i in idx], dtype=np.int64)
            return h.emotions[hidx], h.country[hidx], h.age[hidx]
        return self.emotions[idx], self.country[idx], self.age[idx]

    def audio_files(self) -> list[tuple[str, Path]]:
        """``(File_ID, path)`` for every row, in CSV order (paths may not exist)."""
        return [(i, self.audio_path(i)) for i in self.ids]

    def check_audio(self) -> tuple[list[str], list[Path]]:
        """``(ids whose audio file is missing, audio files with no row)``."""
        missing = [i for i in self.ids if not self.audio_path(i).is_file()]
        known = {file_stem(i) for i in self.ids}
        orphans = sorted(p for p in self.wav_dir.glob("*.wav") if p.stem not in known) if self.wav_dir.is_dir() else []
        return missing, orphans

    @classmethod
    def from_dir(cls, root: str | Path, table: str | Path | None = None) -> "Corpus":
        """Read ``root/data_info.csv`` (or ``table``) by column name and validate it.

        Raises :class:`CorpusError` naming the rows (CSV line numbers, header = 1)
        for: a missing folder/table/column, duplicate or empty ids, unknown split
        values, unparsable numbers, labels out of range and missing labels in
        Train/Val. Extra columns are kept in ``extra``.
        """
        root = Path(root)
        if not root.is_dir():
            raise CorpusError(
                f"corpus folder {root} does not exist; pass --data DIR (a folder with data_info.csv and wav/), "
                "set $EXVO_DATA, or create the demo corpus with `exvo demo-corpus DIR`"
            )
        path = Path(table) if table is not None else root / "data_info.csv"
        if not path.is_file():
            raise CorpusError(f"{path} not found; a corpus folder needs data_info.csv next to wav/")
        header: list[str] = []
        rows: list[dict[str, str]] = []
        lines: list[int] = []       # CSV line number of each row (header = 1), for messages
        ragged: list[int] = []
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                for cells in reader:
                    if not header:
                        header = [h.strip() for h in cells]
                        continue
                    if not cells or (len(cells) == 1 and not cells[0].strip()):
                        continue  # blank line
                    if len(cells) != len(header):
                        ragged.append(reader.line_num)
                    rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
                    lines.append(reader.line_num)
        except (UnicodeDecodeError, csv.Error) as e:
            raise CorpusError(f"{path} is not a readable UTF-8 CSV file ({e})") from None
        except OSError as e:
            raise CorpusError(f"{path} could not be read ({e.strerror or e}); check its permissions") from None
        missing_cols = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing_cols:
            raise CorpusError(
                f"{path} lacks column(s) {missing_cols}; found {header}. "
                f"An ExVo table needs {list(REQUIRED_COLUMNS)} (read by name, any order)"
            )
        dup_cols = sorted({h for h in header if header.count(h) > 1})
        if dup_cols:
            raise CorpusError(f"{path} has duplicate column name(s) {dup_cols}; each column must appear once")
        if not rows:
            raise CorpusError(f"{path} has a header but no rows")
        problems: list[str] = []

        def bad(kind: str, where: list[int], detail: str = ""):
            if where:
                problems.append(f"{kind} on line(s) {listing(where)}{detail}")

        bad(f"wrong number of cells (the header has {len(header)})", ragged)

        ids = [r["File_ID"].strip() for r in rows]
        bad("empty File_ID", [lines[n] for n, i in enumerate(ids) if not i])
        seen: dict[str, int] = {}
        dups = []
        for n, i in enumerate(ids):
            if i and i in seen:
                dups.append(f"{i} (lines {seen[i]} and {lines[n]})")
            seen.setdefault(i, lines[n])
        if dups:
            problems.append(f"duplicate File_ID: {listing(dups)}")
        # "[00005]" and "00005" are different ids but the same audio file wav/00005.wav
        by_file: dict[str, int] = {}
        same_file = []
        for n, i in enumerate(ids):
            if not i or i in seen and seen[i] != lines[n]:
                continue
            stem = file_stem(i)
            if stem in by_file and ids[by_file[stem]] != i:
                k = by_file[stem]
                same_file.append(f"{ids[k]} (line {lines[k]}) and {i} (line {lines[n]}) both name wav/{stem}.wav")
            by_file.setdefault(stem, n)
        if same_file:
            problems.append(f"File_IDs that name the same audio file (brackets are not part of the file name): "
                            f"{listing(same_file)}; keep one row per clip")
        bad_chars = [lines[n] for n, i in enumerate(ids) if i and ("/" in i or "\\" in i or "\x00" in i)]
        bad("File_ID with a path separator or NUL", bad_chars)

        splits = np.array([r["Split"].strip() for r in rows], dtype=object)
        unknown = [n for n, s in enumerate(splits) if s not in SPLITS]
        bad("unknown Split value", [lines[n] for n in unknown],
            f" (values {sorted({splits[n] for n in unknown})[:5]}; expected one of {list(SPLITS)})")

        def number(col: str, n: int) -> float:
            s = rows[n][col].strip()
            if s == "":
                return math.nan
            try:
                return float(s)
            except ValueError:
                return math.inf  # flagged below as unparsable

        n_rows = len(rows)
        emo = np.array([[number(c, n) for c in EMOTIONS] for n in range(n_rows)], dtype=np.float64)
        age = np.array([number("Age", n) for n in range(n_rows)], dtype=np.float64)
        cou_f = np.array([number("Country", n) for n in range(n_rows)], dtype=np.float64)

        for col, vals in [("Age", age), ("Country", cou_f)] + [(c, emo[:, j]) for j, c in enumerate(EMOTIONS)]:
            bad(f"non-numeric {col}", [lines[n] for n in np.flatnonzero(np.isinf(vals))])
        labelled = np.isin(splits, ("Train", "Val"))
        for col, vals in [("Age", age), ("Country", cou_f)] + [(c, emo[:, j]) for j, c in enumerate(EMOTIONS)]:
            bad(f"missing {col} label in Train/Val", [lines[n] for n in np.flatnonzero(labelled & np.isnan(vals))])
        fin_emo = np.isfinite(emo)
        bad("emotion intensity outside [0, 1]",
            [lines[n] for n in np.flatnonzero((fin_emo & ((emo < 0) | (emo > 1))).any(axis=1))])
        fin_age = np.isfinite(age)
        bad(f"Age outside {AGE_RANGE} years",
            [lines[n] for n in np.flatnonzero(fin_age & ((age < AGE_RANGE[0]) | (age > AGE_RANGE[1])))])
        fin_cou = np.isfinite(cou_f)
        bad(f"Country not an integer code 0-{len(COUNTRIES) - 1}",
            [lines[n] for n in np.flatnonzero(fin_cou & ~np.isin(cou_f, np.arange(len(COUNTRIES))))])
        if problems:
            raise CorpusError(f"{path} has problems:\n  - " + "\n  - ".join(problems))

        country = np.where(fin_cou, cou_f, -1).astype(np.int64)
        known = set(REQUIRED_COLUMNS)
        extra = {c: np.array([r[c] for r in rows], dtype=object) for c in header if c not in known}
        return cls(
            root=root, ids=ids, splits=splits.astype(str),
            speakers=np.array([r["Subject_ID"].strip() for r in rows]),
            country=country, age=age, emotions=emo, extra=extra,
        )


RATE_RANGE = (1_000, 768_000)
"""Sample rates (Hz) accepted from a file header; others mean a damaged header."""
_RIFF_PLACEHOLDERS = (0, 0xFFFFFFFF, 0x7FFFFFFF)
"""``data`` chunk sizes that streaming recorders leave when they never rewrite the header."""


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file, a reason if its ``data`` chunk is shorter than the header says.

    libsndfile silently reads whatever frames remain, so a half-copied file would
    otherwise yield half a burst without anyone noticing.
    """
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        tag, n = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if tag == b"data":
            have = size - (pos + 8)
            if n in _RIFF_PLACEHOLDERS or n <= have:
                return None
            return (f"file is truncated: its header declares {n} bytes of audio but only {have} are present "
                    f"({100.0 * have / n:.0f} %); an incomplete copy? re-copy or re-export it")
        pos += 8 + n + (n & 1)
    return None


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a sound file as mono float32 at ``sample_rate`` Hz, shape ``(n_samples,)``.

    Multi-channel audio is averaged; other rates are resampled with soxr (HQ).
    Raises :class:`AudioError` naming the file for a missing, empty, unreadable,
    truncated (WAV data shorter than its header declares) or non-finite file, or one
    whose header gives an implausible sample rate. Silence is returned as is (it is
    valid audio). Any other failure of the decoder is also an :class:`AudioError`.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found; check the File_ID in data_info.csv and the wav/ folder")
    try:
        if path.stat().st_size == 0:
            raise AudioError(path, "file is empty (0 bytes); re-export or remove its row")
    except OSError as e:
        raise AudioError(path, f"cannot be read ({e.strerror or e}); check its permissions") from None
    try:
        # opened here, not by libsndfile: a permission problem is named as such, and a path
        # that is not valid UTF-8 (odd folder names) is no problem for a file object
        fh = open(path, "rb")
    except PermissionError:
        raise AudioError(path, "permission denied: this user may not read the file; fix its permissions "
                               "(e.g. chmod a+r) or run as a user who can read it") from None
    except OSError as e:
        raise AudioError(path, f"cannot be opened ({e.strerror or e}); check the file and its folder") from None
    try:
        with fh:
            info = sf.info(fh)
            sr = int(info.samplerate)
            if not RATE_RANGE[0] <= sr <= RATE_RANGE[1]:
                raise AudioError(path, f"header gives an implausible sample rate of {sr} Hz (expected "
                                       f"{RATE_RANGE[0]}-{RATE_RANGE[1]} Hz); the file is damaged, re-export it")
            fh.seek(0)
            x, sr = sf.read(fh, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except MemoryError:
        raise AudioError(path, "header declares more audio than fits in memory; the file is damaged") from None
    except Exception as e:  # libsndfile raises several types for corrupt/non-audio files
        raise AudioError(path, f"not a readable audio file ({type(e).__name__}: {e}); re-export it as WAV") from None
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise AudioError(path, "audio has no samples; re-export or remove its row")
    trunc = _wav_truncation(path)
    if trunc:
        raise AudioError(path, trunc)
    if not np.isfinite(x).all():
        raise AudioError(path, "audio contains NaN or inf samples; re-export it from the source recording")
    # float64 accumulation: the mean of huge-but-finite float samples must not overflow
    x = x.mean(axis=1, dtype=np.float64).astype(np.float32) if x.shape[1] > 1 else x[:, 0]
    if sr != sample_rate:
        import soxr

        try:
            x = soxr.resample(x, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)
        except Exception as e:
            raise AudioError(path, f"could not resample from {sr} Hz to {sample_rate} Hz ({e})") from None
        if x.size == 0:
            raise AudioError(path, f"audio too short to resample from {sr} Hz to {sample_rate} Hz")
    if not np.isfinite(x).all():
        raise AudioError(path, "audio samples are too large to process (overflow to inf); re-export it normalised")
    return np.ascontiguousarray(x, dtype=np.float32)


def warn_orphans(corpus: Corpus) -> None:
    """Warn (not fail) about audio files that no table row refers to."""
    _, orphans = corpus.check_audio()
    if orphans:
        warnings.warn(
            f"{len(orphans)} audio file(s) in {corpus.wav_dir} have no row in data_info.csv and are ignored: "
            f"{listing(p.name for p in orphans)}",
            stacklevel=2,
        )
