"""Helpers for the robustness tests: tiny ExVo-layout corpora written in milliseconds."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.corpus import REQUIRED_COLUMNS, SAMPLE_RATE
from exvo.metrics import EMOTIONS

HEADER = list(REQUIRED_COLUMNS) + ["Country_string"]


def row(file_id: str, split: str = "Train", speaker: str = "Speaker_0", country="0", age="30",
        emo: str | Sequence[str] = "0.5", **extra) -> dict[str, str]:
    """One valid ``data_info.csv`` row as strings (Test rows get empty labels)."""
    emos = [emo] * len(EMOTIONS) if isinstance(emo, str) else list(emo)
    r = {"File_ID": file_id, "Split": split, "Subject_ID": speaker, "Country": str(country),
         "Age": str(age), "Country_string": "China", **dict(zip(EMOTIONS, emos))}
    if split == "Test":
        r.update({"Country": "", "Age": "", **{e: "" for e in EMOTIONS}})
    r.update({k: str(v) for k, v in extra.items()})
    return r


def write_table(root: Path, rows: list[dict[str, str]], header: Sequence[str] | None = None,
                name: str = "data_info.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = list(header) if header is not None else list(rows[0].keys())
    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(c, "") for c in header])
    return root / name


def tone(seconds: float, sr: int = SAMPLE_RATE, freq: float = 440.0, amp: float = 0.3,
         seed: int | None = None) -> np.ndarray:
    """A sine (plus a little seeded noise when ``seed`` is given), float32 ``(n,)``."""
    n = int(round(seconds * sr))
    x = amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)
    if seed is not None:
        x = x + 0.05 * np.random.default_rng(seed).standard_normal(n)
    return x.astype(np.float32)


def write_wav(root: Path, stem: str, data: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    (root / "wav").mkdir(parents=True, exist_ok=True)
    p = root / "wav" / f"{stem}.wav"
    sf.write(str(p), data, sr, subtype=subtype)
    return p


def good_corpus(root: Path, n: int, seconds: float = 0.2, split_cycle: Sequence[str] = ("Train", "Val")) -> list[str]:
    """``n`` valid clips ``[g000]``… with distinct noisy tones; returns their ids. Up to 7 speakers per
    split, none in two splits (ExVo's splits are speaker-disjoint)."""
    rows, ids = [], []
    order = list(dict.fromkeys(split_cycle))
    for k in range(n):
        cid = f"[g{k:03d}]"
        ids.append(cid)
        split = split_cycle[k % len(split_cycle)]
        rows.append(row(cid, split=split, speaker=f"Speaker_{k % 7 + 7 * order.index(split)}"))
        write_wav(root, f"g{k:03d}", tone(seconds, freq=200 + 10 * k, seed=k))
    write_table(root, rows, header=HEADER)
    return ids


def toy_learn_world(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """A corpus of ``n`` clips (Train, Train, Val, …) and a 4-dim random ``toy`` cache of it:
    ``(corpus root, cache folder)``, enough for `exvo learn --features toy`."""
    import numpy as np

    from exvo.corpus import Corpus
    from exvo.extract.cache import cache_path
    from exvo.extract.cache_writer import CacheWriter

    root = tmp_path / "lw"
    good_corpus(root, n, split_cycle=("Train", "Train", "Val"))
    corpus = Corpus.from_dir(root)
    rng = np.random.default_rng(0)
    with CacheWriter(cache_path(tmp_path / "cache", corpus.name, "toy"), "toy", {"toy": 1}) as w:
        for i in corpus.ids:
            w.add(i, rng.standard_normal((1, 4)).astype(np.float32))
        w.finalize(order=corpus.ids, files=[])
    return root, tmp_path / "cache"
