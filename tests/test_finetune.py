"""End-to-end fine-tuning (exvo.learn.finetune) on a tiny random HuBERT, CPU; RMS normalisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exvo.config import build
from exvo.cli import app
from exvo.corpus import Corpus
from exvo.learn.burst2vec import Burst2VecConfig
from exvo.learn.finetune import finetune
from exvo.learn.finetune_config import FinetuneConfig
from exvo.preprocess import rms_normalise

TINY_HEAD = dict(proj_dim=8, hidden=8, head_hidden=8)


def _cfg(ckpt, **kw):
    # 4 Train speakers, 1 per country: too few for a country-stratified hold-out, so choose on Val
    base = dict(model="hubert", checkpoint=str(ckpt), head=Burst2VecConfig(**TINY_HEAD), epochs=2, patience=5,
                batch_size=4, lr=1e-4, stop_on="val", device="cpu")
    return build(FinetuneConfig, base | kw)


def test_rms_normalise_known_answer():
    x = np.array([0.5, -0.5, 0.5, -0.5], dtype=np.float32)          # RMS 0.5
    y = rms_normalise(x, -3.0)
    np.testing.assert_allclose(np.sqrt(np.mean(y.astype(np.float64) ** 2)), 10 ** (-3 / 20), rtol=1e-6)
    np.testing.assert_allclose(y / x, 10 ** (-3 / 20) / 0.5, rtol=1e-6)
    np.testing.assert_array_equal(rms_normalise(np.zeros(5, np.float32), -3.0), np.zeros(5))
    with pytest.raises(ValueError, match="finite level"):
        rms_normalise(x, float("nan"))


def test_finetune_one_epoch_then_extract_with_the_exported_encoder(tiny_corpus, ssl_models, tmp_path):
    runs = tmp_path / "runs"
    r = CliRunner().invoke(app, ["finetune", "--model", "hubert", "--checkpoint", str(ssl_models["hubert"]),
                                 "--data", str(tiny_corpus), "--runs", str(runs), "--epochs", "1", "--batch-size", "4",
                                 "--stop-on", "val", "--device", "cpu", "--rms-db", "-3", "--name", "ft",
                                 "--export", str(tmp_path / "enc")])
    assert r.exit_code == 0, r.output
    run = runs / "ft"
    for f in ("val.csv", "test.csv", "per_seed/val.npz", "per_seed/test.npz", "metrics.json", "config.json",
              "models/encoder_seed0/config.json", "models/head_seed0.pt"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["rms_db"] == -3.0 and cfg["learner"] == "burst2vec" and cfg["finetune"]["model"] == "hubert"
    assert not (runs / ".ft.finetune").exists()                   # the resume state goes once the run is whole
    # the exported encoder is a checkpoint `exvo extract` reads; its weights are the fine-tuned ones
    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["extract", "--model", "hubert", "--checkpoint", str(tmp_path / "enc"),
                                 "--data", str(tiny_corpus), "--cache", str(cache), "--device", "cpu",
                                 "--rms-db", "-3"])
    assert r.exit_code == 0, r.output
    from safetensors.numpy import load_file

    before = load_file(str(ssl_models["hubert"] / "model.safetensors"))
    after = load_file(str(tmp_path / "enc" / "model.safetensors"))
    changed = [k for k in before if k in after and not np.array_equal(before[k], after[k])]
    assert changed and not any(k.startswith("feature_extractor.") for k in changed)   # CNN front end frozen
    from exvo.extract.cache import EmbeddingCache, cache_path

    c = EmbeddingCache(cache_path(cache, Corpus.from_dir(tiny_corpus).name, "hubert"))
    assert c.config["rms_db"] == -3.0 and len(c) == 16


def test_resume_equals_uninterrupted(tiny_corpus, ssl_models, tmp_path):
    corpus = Corpus.from_dir(tiny_corpus)
    whole, _ = finetune(corpus, _cfg(ssl_models["hubert"]), runs_dir=tmp_path / "a", name="x", echo=lambda m: None)

    class Killed(Exception):
        pass

    def kill_after_epoch_1(msg):
        if "epoch   1:" in msg:
            raise Killed                       # after the epoch's state was saved, as a kill would
    with pytest.raises(Killed):
        finetune(corpus, _cfg(ssl_models["hubert"]), runs_dir=tmp_path / "b", name="x", echo=kill_after_epoch_1)
    assert (tmp_path / "b" / ".x.finetune" / "seed0.pt").is_file() and not (tmp_path / "b" / "x").exists()
    with pytest.raises(ValueError, match="other settings"):
        finetune(corpus, _cfg(ssl_models["hubert"], lr=3e-4), runs_dir=tmp_path / "b", name="x", echo=lambda m: None)
    said = []
    resumed, _ = finetune(corpus, _cfg(ssl_models["hubert"]), runs_dir=tmp_path / "b", name="x", echo=said.append)
    assert any("resuming after epoch 1" in m for m in said)
    a, b = np.load(whole / "per_seed" / "val.npz"), np.load(resumed / "per_seed" / "val.npz")
    for k in ("emotions", "country_proba", "age"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    ha, hb = (json.loads((d / "history.json").read_text())["per_seed"][0] for d in (whole, resumed))
    np.testing.assert_allclose(ha["history"] + ha["train_loss"], hb["history"] + hb["train_loss"], rtol=1e-5)
    assert ha["best_epoch"] == hb["best_epoch"]


def test_bad_finetune_settings_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        FinetuneConfig(model="whisper").validate()
    with pytest.raises(ValueError, match="holdout_frac must be in"):
        build(FinetuneConfig, holdout=1.5).validate()


def test_rms_db_is_refused_for_extractors_that_would_ignore_it(tiny_corpus, tmp_path):
    r = CliRunner().invoke(app, ["extract", "--model", "compare", "--rms-db", "-3", "--data", str(tiny_corpus),
                                 "--cache", str(tmp_path / "cache")])
    assert r.exit_code == 2 and "--rms-db applies to the SSL models" in r.output
