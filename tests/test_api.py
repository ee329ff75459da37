"""The Python API: the docs/api.md example runs as written, and its pieces keep their promises."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import exvo

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _example() -> str:
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


def test_docs_example_runs(small_demo_copy, tmp_path):
    code = _example()
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 16
    env = {"DATA": small_demo_copy, "CACHE": tmp_path / "cache", "RUNS": tmp_path / "runs"}
    exec(compile(code, str(DOC), "exec"), env)
    run, hybrid = env["run"], env["hybrid"]
    scores = run.scores
    assert list(scores.index) == [0, 1, "mean", "std", "ensemble"]
    assert scores.loc["mean", "ccc"] == pytest.approx(scores.loc[[0, 1], "ccc"].mean())
    assert scores.loc["std", "ccc"] == pytest.approx(np.std(scores.loc[[0, 1], "ccc"].to_numpy(float)))
    from exvo.learn.config import LearnConfig

    assert isinstance(run.config, LearnConfig) and run.config.features == ["egemaps"] and run.config.seeds.n == 2
    assert hybrid.kind == "fusion" and hybrid.stale == []
    assert (tmp_path / "runs" / "report" / "report.md").is_file() and "hybrid" in env["table"]


def test_load_features_forms(small_demo_copy, tmp_path):
    corpus = exvo.Corpus.from_dir(small_demo_copy)
    exvo.extract(corpus, "egemaps", cache_dir=tmp_path / "c")
    ids, X = exvo.load_features(corpus, "egemaps", split="Val", cache_dir=tmp_path / "c")
    assert ids == corpus.split_ids("Val") and X.shape == (len(ids), 88) and X.dtype == np.float32
    df = exvo.load_features(corpus, ["egemaps"], split="Val", cache_dir=tmp_path / "c", frame=True, brackets=False)
    assert isinstance(df, pd.DataFrame) and df.index.name == "File_ID"
    assert list(df.index) == [i.strip("[]") for i in ids]
    np.testing.assert_array_equal(df.to_numpy(), X)


def test_unknown_extract_option_is_named(small_demo_copy, tmp_path):
    with pytest.raises(TypeError, match=r"unknown extract option\(s\) \['wrokers'\]"):
        exvo.extract(small_demo_copy, "egemaps", cache_dir=tmp_path / "c", wrokers=2)


def test_import_exvo_is_light():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import exvo, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
