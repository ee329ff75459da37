"""Shared fixtures. Add yours with unique names; keep them small and fast."""
import shutil
from pathlib import Path

import pytest

from exvo.demo import make_demo_corpus


@pytest.fixture(scope="session")
def small_demo_corpus_dir(tmp_path_factory) -> Path:
    """A read-only 8-speaker × 3-clip demo corpus (24 clips). Copy it before modifying."""
    return make_demo_corpus(tmp_path_factory.mktemp("demo") / "small", speakers=8, clips_per_speaker=3,
                            seed=1, progress=False)


@pytest.fixture
def small_demo_copy(small_demo_corpus_dir, tmp_path) -> Path:
    """A private, writable copy of the small demo corpus."""
    dst = tmp_path / "small"
    shutil.copytree(small_demo_corpus_dir, dst)
    return dst
