"""Frame-level cache (ragged sequences of one SSL layer): placeholder, completed below."""
from __future__ import annotations

import re
from pathlib import Path


def safe_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_.@-]+", name))


def frames_path(cache_dir, corpus_name: str, name: str) -> Path:
    return Path(cache_dir) / corpus_name / f"{name}.frames.h5"
