"""Reading label tables (CSV by column name) and their error type: shared by the corpus table
(:mod:`exvo.corpus`) and a task's label files (:mod:`exvo.tasks.labels`)."""
from __future__ import annotations

import csv
from pathlib import Path

MAX_LISTED = 10
HIDDEN_LABELS_FILE = "hidden_test_labels.csv"
"""Side file with Test labels (written by the demo corpus generator, never by ExVo)."""


class CorpusError(ValueError):
    """The corpus table or folder is unusable; the message says what to fix."""


def listing(items, limit: int = MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def repeated(items) -> list:
    """The items that occur more than once in ``items``, sorted, each once (one pass: ``list.count`` per
    item made duplicate checks quadratic, minutes for a 20,000-row file)."""
    seen, twice = set(), set()
    for i in items:
        (twice if i in seen else seen).add(i)
    return sorted(twice)


def read_csv_rows(path: Path, missing: str) -> tuple[list[str], list[dict[str, str]], list[int], list[int]]:
    """``(header, rows as {column: cell}, CSV line of each row, lines with the wrong number of cells)``
    of a UTF-8 CSV (blank lines skipped); :class:`CorpusError` for a missing (``missing`` says what the
    file is for) or unreadable file. Columns are not checked here."""
    if not path.is_file():
        raise CorpusError(f"{path} not found; {missing}")
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
    return header, rows, lines, ragged
