"""The ExVo corpus layout: ``data_info.csv`` + ``wav/`` → :class:`Corpus` (audio loading: :mod:`exvo.audio`).

A corpus is a folder, in the ExVo layout::

    DIR/data_info.csv     one row per clip, read by column name
    DIR/wav/00000.wav     audio of File_ID "[00000]"

or in the A-VB 2022 layout (as the organisers released it)::

    DIR/labels/data_info.csv         File_ID, Split, Subject_ID (and any other columns)
    DIR/labels/<task>_info.csv       File_ID, Split, the task's label columns (high, two, culture, type)
    DIR/audio/wav/00000.wav

Which label columns are read depends on the task (:mod:`exvo.tasks`; ExVo-MTL by default): each is
looked up by name in ``data_info.csv``, then in every ``labels/*_info.csv`` (joined on File_ID).
``Corpus.labels(split)`` returns the task's labels: ``(intensities (n, k), class codes (n,),
value (n,))`` (ExVo: emotions, country, age; a group the task lacks is filled with 0).

Labels are held as arrays aligned with ``Corpus.ids``:
``emotions`` ``(n_clips, 10)`` in [0, 1] (official order), ``country`` ``(n_clips,)``
int 0-3, ``age`` ``(n_clips,)`` years. Test rows have no public labels: NaN for
emotions/age and -1 for country.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exvo.audio import RATE_RANGE, SAMPLE_RATE, AudioError, load_audio, read_audio
from exvo.metrics import COUNTRIES, EMOTIONS
from exvo.tables import HIDDEN_LABELS_FILE, CorpusError, listing, read_csv_rows

__all__ = ["AGE_RANGE", "HIDDEN_LABELS_FILE", "OPTIONAL_COLUMNS", "RATE_RANGE", "REQUIRED_COLUMNS", "SAMPLE_RATE",
           "SPLITS", "AudioError", "Corpus", "CorpusError", "SpeakerOverlapWarning", "file_stem", "listing",
           "load_audio", "read_audio", "warn_orphans", "warn_speaker_overlaps"]


SPLITS: tuple[str, ...] = ("Train", "Val", "Test")
REQUIRED_COLUMNS: tuple[str, ...] = ("File_ID", "Split", "Subject_ID", "Country", "Age", *EMOTIONS)
OPTIONAL_COLUMNS: tuple[str, ...] = ("Country_string",)
BASE_COLUMNS: tuple[str, ...] = ("File_ID", "Split", "Subject_ID")
"""What every table needs whatever the task (the task's label columns are checked by :mod:`exvo.tasks.labels`)."""
AGE_RANGE = (1.0, 120.0)


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
    task: object = None           # exvo.tasks.TaskSpec whose labels `labels` returns (None: ExVo-MTL)
    task_labels: tuple | None = None  # (intensities (n, k), class (n,) int64 -1 unknown, value (n,)); None: ExVo's
    layout: str = "exvo"          # exvo | avb

    def __post_init__(self):
        from exvo.tasks import get_task

        self.task = get_task(self.task)
        if self.task_labels is None:
            self.task_labels = (self.emotions, self.country, self.age)

    @property
    def name(self) -> str:
        """Cache namespace: the corpus folder's name."""
        return self.root.resolve().name

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def wav_dir(self) -> Path:
        return self.root / "audio" / "wav" if self.layout == "avb" else self.root / "wav"

    def audio_path(self, file_id: str) -> Path:
        return self.wav_dir / f"{file_stem(file_id)}.wav"

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split, in CSV order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.splits == split)

    def split_ids(self, split: str) -> list[str]:
        return [self.ids[i] for i in self.indices(split)]

    def _known(self) -> np.ndarray:
        """``(n,)`` bool: rows with every label of the task known."""
        reg, cls, val = self.task_labels
        ok = np.ones(len(self.ids), dtype=bool)
        if self.task.has("value"):
            ok &= np.isfinite(val)
        if self.task.has("class"):
            ok &= cls >= 0
        if self.task.has("intensities"):
            ok &= np.isfinite(reg).all(axis=1)
        return ok

    def has_labels(self, split: str) -> bool:
        idx = self.indices(split)
        return idx.size > 0 and bool(self._known()[idx].all())

    def labels(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(emotions (n, 10), country (n,), age (n,))`` of one split.

        Test labels come from the hidden side file when the corpus has one
        (the demo corpus does); otherwise a :class:`CorpusError` says they are not public.
        """
        idx = self.indices(split)
        if not self.has_labels(split):
            have = self._known()[idx]
            if have.any():
                lacking = [self.ids[i] for i in idx[~have]]
                raise CorpusError(
                    f"the {split} rows of {self.root / 'data_info.csv'} are only partly labelled: {int(have.sum())} "
                    f"of {idx.size} have labels, {len(lacking)} do not ({listing(lacking)}). Scoring needs every "
                    f"{split} clip labelled: fill in the missing labels (or remove the labels so that "
                    f"{HIDDEN_LABELS_FILE} is used)")
            hidden = self.root / HIDDEN_LABELS_FILE
            if (self.layout == "avb" or self.task.name != "exvo-mtl") and (self.root / "labels" / HIDDEN_LABELS_FILE).exists():
                hidden = self.root / "labels" / HIDDEN_LABELS_FILE      # the A-VB labels' own hidden file
            if not hidden.exists():
                raise CorpusError(
                    f"split {split!r} of {self.root} has no labels (ExVo Test labels are not public); "
                    f"score on 'Val' instead, or add {HIDDEN_LABELS_FILE} with the full columns"
                )
            h = Corpus.from_dir(self.root, table=hidden, task=self.task)
            pos = {i: k for k, i in enumerate(h.ids)}
            missing = [self.ids[i] for i in idx if self.ids[i] not in pos]
            if missing:
                raise CorpusError(f"{hidden} lacks labels for {len(missing)} ids: {listing(missing)}")
            hidx = np.array([pos[self.ids[i]] for i in idx], dtype=np.int64)
            return tuple(a[hidx] for a in h.task_labels)
        return tuple(a[idx] for a in self.task_labels)

    def audio_files(self) -> list[tuple[str, Path]]:
        """``(File_ID, path)`` for every row, in CSV order (paths may not exist)."""
        return [(i, self.audio_path(i)) for i in self.ids]

    def check_audio(self) -> tuple[list[str], list[Path]]:
        """``(ids whose audio file is missing, audio files with no row)``."""
        missing = [i for i in self.ids if not self.audio_path(i).is_file()]
        known = {file_stem(i) for i in self.ids}
        orphans = sorted(p for p in self.wav_dir.glob("*.wav") if p.stem not in known) if self.wav_dir.is_dir() else []
        return missing, orphans

    def shared_speakers(self, a: str = "Train", b: str = "Val") -> list[str]:
        """Speakers (sorted) with clips in both split ``a`` and split ``b``; ExVo's splits share none."""
        sa = set(self.speakers[self.indices(a)].tolist()) - {""}
        return sorted(sa & set(self.speakers[self.indices(b)].tolist()))

    def speaker_overlaps(self) -> dict[tuple[str, str], list[str]]:
        """``{(split, later split): shared speakers}`` for every pair of splits that share any."""
        out = {}
        for k, a in enumerate(SPLITS):
            for b in SPLITS[k + 1:]:
                if shared := self.shared_speakers(a, b):
                    out[(a, b)] = shared
        return out

    @classmethod
    def from_dir(cls, root: str | Path, table: str | Path | None = None, task=None) -> "Corpus":
        """Read ``root/data_info.csv`` (or ``table``; or ``root/labels/data_info.csv`` in the A-VB
        layout) by column name and validate it, with the label columns of ``task`` (a name, TOML
        file or :class:`~exvo.tasks.TaskSpec`; None → ExVo-MTL, whose columns are all required, or
        A-VB High for a folder in the A-VB layout).

        Raises :class:`CorpusError` naming the rows (CSV line numbers, header = 1)
        for: a missing folder/table/column, duplicate or empty ids, unknown split
        values, unparsable or infinite numbers, labels out of range, missing labels and
        speakers in Train/Val. Extra columns are kept in ``extra``. Splits that share a
        speaker get a :class:`SpeakerOverlapWarning` (:meth:`speaker_overlaps` lists them).
        """
        root = Path(root)
        if not root.is_dir():
            raise CorpusError(
                f"corpus folder {root} does not exist; pass --data DIR (a folder with data_info.csv and wav/), "
                "set $EXVO_DATA, or create the demo corpus with `exvo demo-corpus DIR`"
            )
        from exvo.tasks import get_task

        layout = "avb" if (not (root / "data_info.csv").is_file() and (root / "labels" / "data_info.csv").is_file()) \
            else "exvo"
        # the default task: ExVo-MTL, or A-VB High for a folder in the A-VB layout (which has no ExVo labels)
        task = get_task(task if task is not None else ("avb-high" if layout == "avb" else None))
        path = Path(table) if table is not None else root / ("labels" if layout == "avb" else "") / "data_info.csv"
        exvo_labels = task.name == "exvo-mtl"
        header, rows, lines, ragged = _read_table(path, REQUIRED_COLUMNS if exvo_labels else BASE_COLUMNS, task)
        exvo_labels = exvo_labels or all(c in header for c in REQUIRED_COLUMNS)
        problems: list[str] = []
        if ragged:
            problems.append(f"wrong number of cells (the header has {len(header)}) on line(s) {listing(ragged)}")
        ids = [r["File_ID"].strip() for r in rows]
        problems += _id_problems(ids, lines)
        splits = np.array([r["Split"].strip() for r in rows], dtype=object)
        unknown = [n for n, s in enumerate(splits) if s not in SPLITS]
        if unknown:
            problems.append(f"unknown Split value on line(s) {listing(lines[n] for n in unknown)} (values "
                            f"{sorted({splits[n] for n in unknown})[:5]}; expected one of {list(SPLITS)})")
        labelled = np.isin(splits, ("Train", "Val"))
        if exvo_labels:
            emo, age, cou_f, label_problems = _labels(rows, lines, labelled)
        else:
            emo, age, cou_f, label_problems = (np.full((len(rows), len(EMOTIONS)), np.nan), np.full(len(rows), np.nan),
                                               np.full(len(rows), np.nan), [])
        speakers = np.array([r["Subject_ID"].strip() for r in rows])
        problems += label_problems + _speaker_problems(speakers, lines, labelled)
        if problems:
            raise CorpusError(f"{path} has problems:\n  - " + "\n  - ".join(problems))
        known = set(REQUIRED_COLUMNS)
        extra = {c: np.array([r[c] for r in rows], dtype=object) for c in header if c not in known}
        country = np.where(np.isfinite(cou_f), cou_f, -1).astype(np.int64)
        if "Country" in header and not exvo_labels:     # A-VB data_info.csv: country codes or names, for folds
            country = np.array([_country_code(r.get("Country", "")) for r in rows], dtype=np.int64)
        task_labels = None
        if task.name != "exvo-mtl":
            from exvo.tasks.labels import read_task_labels

            task_labels = read_task_labels(task, root, path, header, rows, lines, ids, labelled, layout)
        corpus = cls(root=root, ids=ids, splits=splits.astype(str), speakers=speakers,
                     country=country, age=age, emotions=emo,
                     extra=extra, task=task, task_labels=task_labels, layout=layout)
        warn_speaker_overlaps(corpus, path)
        return corpus


class SpeakerOverlapWarning(UserWarning):
    """Two splits of a table share a speaker (ExVo's splits are speaker-disjoint)."""


def warn_speaker_overlaps(corpus: Corpus, path: Path) -> None:
    """One :class:`SpeakerOverlapWarning` naming every pair of splits of ``corpus`` that share speakers."""
    over = corpus.speaker_overlaps()
    if not over:
        return
    parts = [f"{len(s)} speaker{'s are' if len(s) > 1 else ' is'} in both {a} and {b} ({listing(s)})"
             for (a, b), s in over.items()]
    warnings.warn(f"{path}: {'; '.join(parts)}. ExVo's splits are speaker-disjoint: scores on a split that shares "
                  "speakers with the training data are optimistic. Give each speaker one Split, or keep in mind "
                  "that these scores are not clean estimates", SpeakerOverlapWarning, stacklevel=3)


def _country_code(cell: str) -> int:
    """An A-VB ``Country`` cell (a code 0-3 or a country name) → its code, -1 if neither."""
    c = cell.strip()
    if c in COUNTRIES:
        return COUNTRIES.index(c)
    return int(c) if c.isdigit() and int(c) < len(COUNTRIES) else -1


def _read_table(path: Path, required: tuple[str, ...] | None = None, task=None
                ) -> tuple[list[str], list[dict[str, str]], list[int], list[int]]:
    """``(header, rows as {column: cell}, CSV line of each row, lines with the wrong number of cells)``;
    :class:`CorpusError` for a missing or unreadable table, missing or duplicate columns, or no rows."""
    header, rows, lines, ragged = read_csv_rows(path, "a corpus folder needs data_info.csv next to wav/")
    required = REQUIRED_COLUMNS if required is None else required
    missing_cols = [c for c in required if c not in header]
    if missing_cols:
        if required == REQUIRED_COLUMNS:
            hint = ("" if task is None or any(c in header for c in ("Age", *EMOTIONS)) else
                    "; for another task's labels pass --task (e.g. avb-high, or a .toml task file)")
            raise CorpusError(
                f"{path} lacks column(s) {missing_cols}; found {header}. "
                f"An ExVo table needs {list(REQUIRED_COLUMNS)} (read by name, any order){hint}"
            )
        raise CorpusError(f"{path} lacks column(s) {missing_cols}; found {header}. The table needs "
                          f"{list(required)} (read by name, any order)")
    dup_cols = sorted({h for h in header if header.count(h) > 1})
    if dup_cols:
        raise CorpusError(f"{path} has duplicate column name(s) {dup_cols}; each column must appear once")
    if not rows:
        raise CorpusError(f"{path} has a header but no rows")
    return header, rows, lines, ragged


def _id_problems(ids: list[str], lines: list[int]) -> list[str]:
    """Empty, duplicate, path-like ids, and two ids naming one audio file (``[00005]`` and ``00005``)."""
    problems = []
    if empty := [lines[n] for n, i in enumerate(ids) if not i]:
        problems.append(f"empty File_ID on line(s) {listing(empty)}")
    seen: dict[str, int] = {}
    dups = []
    for n, i in enumerate(ids):
        if i and i in seen:
            dups.append(f"{i} (lines {seen[i]} and {lines[n]})")
        seen.setdefault(i, lines[n])
    if dups:
        problems.append(f"duplicate File_ID: {listing(dups)}")
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
    if bad_chars := [lines[n] for n, i in enumerate(ids) if i and ("/" in i or "\\" in i or "\x00" in i)]:
        problems.append(f"File_ID with a path separator or NUL on line(s) {listing(bad_chars)}")
    return problems


def _labels(rows: list[dict[str, str]], lines: list[int], labelled: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(emotions (n, 10), age (n,), country (n,) as float, problems)``: empty cells and ``nan`` are
    NaN (missing); unparsable and infinite cells, missing Train/Val labels and values out of range
    are problems naming their lines."""
    unparsable: set[tuple[int, str]] = set()

    def number(col: str, n: int) -> float:
        s = rows[n][col].strip()
        if s == "":
            return math.nan
        try:
            return float(s)
        except ValueError:
            unparsable.add((n, col))
            return math.nan

    n_rows = len(rows)
    emo = np.array([[number(c, n) for c in EMOTIONS] for n in range(n_rows)], dtype=np.float64)
    age = np.array([number("Age", n) for n in range(n_rows)], dtype=np.float64)
    cou = np.array([number("Country", n) for n in range(n_rows)], dtype=np.float64)
    columns = [("Age", age), ("Country", cou)] + [(c, emo[:, j]) for j, c in enumerate(EMOTIONS)]
    problems = []
    for col, vals in columns:
        if bad := [lines[n] for n in range(n_rows) if (n, col) in unparsable]:
            problems.append(f"non-numeric {col} on line(s) {listing(bad)}")
        if inf := np.flatnonzero(np.isinf(vals)).tolist():
            cells = sorted({rows[n][col].strip() for n in inf})
            problems.append(f"{col} is not finite ({', '.join(cells)}) on line(s) {listing(lines[n] for n in inf)}; "
                            "labels must be finite numbers")
    for col, vals in columns:
        missing = [lines[n] for n in np.flatnonzero(labelled & np.isnan(vals)) if (n, col) not in unparsable]
        if missing:
            problems.append(f"missing {col} label in Train/Val on line(s) {listing(missing)}")
    fin = np.isfinite(emo)
    ranges = [("emotion intensity outside [0, 1]", (fin & ((emo < 0) | (emo > 1))).any(axis=1)),
              (f"Age outside {AGE_RANGE} years", np.isfinite(age) & ((age < AGE_RANGE[0]) | (age > AGE_RANGE[1]))),
              (f"Country not an integer code 0-{len(COUNTRIES) - 1}",
               np.isfinite(cou) & ~np.isin(cou, np.arange(len(COUNTRIES))))]
    problems += [f"{kind} on line(s) {listing(lines[n] for n in np.flatnonzero(m))}" for kind, m in ranges if m.any()]
    return emo, age, cou, problems


def _speaker_problems(speakers: np.ndarray, lines: list[int], labelled: np.ndarray) -> list[str]:
    """An empty ``Subject_ID`` column, or empty speakers of Train/Val rows (Test speakers may be unknown)."""
    empty = speakers == ""
    if empty.all():
        return [f"the Subject_ID column is empty on every row ({empty.size} rows); exvo needs each clip's speaker "
                "(speaker-disjoint hold-outs and folds): fill it in (e.g. Speaker_<n>)"]
    if bad := [lines[n] for n in np.flatnonzero(empty & labelled)]:
        return [f"empty Subject_ID in Train/Val on line(s) {listing(bad)}"]
    return []


def warn_orphans(corpus: Corpus) -> None:
    """Warn (not fail) about audio files that no table row refers to."""
    _, orphans = corpus.check_audio()
    if orphans:
        warnings.warn(
            f"{len(orphans)} audio file(s) in {corpus.wav_dir} have no row in data_info.csv and are ignored: "
            f"{listing(p.name for p in orphans)}",
            stacklevel=2,
        )
