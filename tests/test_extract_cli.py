"""`exvo extract` end to end: writes the cache, resumes, lists extractors, explains bad names."""
from __future__ import annotations

import re

import numpy as np
from typer.testing import CliRunner

from exvo.cli import app
from exvo.extract.base import names
from exvo.extract.cache import EmbeddingCache

runner = CliRunner()


def test_extract_egemaps_then_resume(tiny_corpus, tmp_path):
    args = ["extract", "--model", "egemaps", "--data", str(tiny_corpus), "--cache", str(tmp_path), "--workers", "2"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert re.search(r"egemaps: 16/16 clips cached \(16 new, 0 failed", r.output), r.output
    cache = EmbeddingCache(tmp_path / tiny_corpus.name / "egemaps.h5")
    assert len(cache) == 16 and (cache.n_layers, cache.dim) == (1, 88)
    before = cache.all_layers()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "(0 new, 0 failed" in r.output
    np.testing.assert_array_equal(EmbeddingCache(tmp_path / tiny_corpus.name / "egemaps.h5").all_layers(), before)


def test_list_shows_every_registered_extractor():
    r = runner.invoke(app, ["extract", "--list"])
    assert r.exit_code == 0, r.output
    listed = {line.split()[0] for line in r.output.splitlines() if line.strip()}
    assert {"compare", "egemaps", "wavlm", "hubert", "wav2vec2"} <= listed
    assert set(names()) <= listed


def test_unknown_extractor_lists_the_choices(tiny_corpus, tmp_path):
    r = runner.invoke(app, ["extract", "--model", "wavlm-xxl", "--data", str(tiny_corpus), "--cache", str(tmp_path)])
    assert r.exit_code == 2
    assert "unknown extractor 'wavlm-xxl'; choose one of:" in r.output
    assert "egemaps" in r.output and "wavlm" in r.output


def test_ssl_with_missing_checkpoint_fails_cleanly(tiny_corpus, tmp_path):
    r = runner.invoke(app, ["extract", "--model", "wavlm", "--data", str(tiny_corpus), "--cache", str(tmp_path),
                            "--checkpoint", str(tmp_path / "no_such_model"), "--device", "cpu"])
    assert r.exit_code == 2
    assert "no_such_model does not exist; pass `--checkpoint`" in r.output
    assert "Traceback" not in r.output


def test_ssl_extract_with_local_checkpoint(tiny_corpus, ssl_models, tmp_path):
    r = runner.invoke(app, ["extract", "--model", "hubert", "--data", str(tiny_corpus), "--cache", str(tmp_path),
                            "--checkpoint", str(ssl_models["hubert"]), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    cache = EmbeddingCache(tmp_path / tiny_corpus.name / "hubert.h5")
    assert len(cache) == 16 and (cache.n_layers, cache.dim) == (3, 64)
