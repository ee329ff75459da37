"""A task CNN's own clip posteriors as a partial fusion source (paper 001's hybrid country)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exvo.cli import app
from exvo.corpus import Corpus
from exvo.extract.cnn.extractor import model_file
from exvo.extract.cnn.train import train_cnn
from exvo.fusion.api import fuse
from exvo.fusion.cnn_source import cnn_source
from exvo.fusion.seeds import stack
from exvo.metrics import uar
from exvo.predictions import Predictions, save_seed_predictions, save_split
from exvo.runs.reader import Run

TINY = dict(channels=(4, 4, 4, 4))


@pytest.fixture
def cr_model(small_demo_copy, tmp_path):
    """The small demo corpus and a 1-epoch country CNN where `exvo extract --model raw_exvo_cr` keeps it."""
    c = Corpus.from_dir(small_demo_copy)
    cache = tmp_path / "cache"
    path = model_file(cache, c.name, "raw_exvo_cr", 0)
    path.parent.mkdir(parents=True)
    train_cnn(c, "Country", "raw", path, epochs=1, device="cpu", model_config=TINY, echo=lambda s: None)
    return c, cache, path


def _er_run(runs, corpus: Corpus) -> None:
    """A 2-seed multitask run (like `exvo learn` writes) with perfect emotions, an age 20 years
    off (the Train mean would beat it) and every country wrong (Val UAR 0)."""
    ids = corpus.split_ids("Val")
    emo, cou, age = corpus.labels("Val")
    p = Predictions(ids, emo, (cou + 1) % 4, age + 20.0)
    d = runs / "er"
    d.mkdir(parents=True)
    sp = stack([p, p], [0, 1])
    save_split(sp.ensemble(), d, "Val")
    save_seed_predictions(sp, d, "Val")
    (d / "config.json").write_text(json.dumps({"kind": "learn", "features": ["raw_exvo_er"], "learner": "mlp",
                                               "seeds": [0, 1]}))


def test_cnn_source_is_the_cnns_own_clip_decisions_and_hybrid_takes_it_for_country_only(cr_model, tmp_path):
    corpus, cache, path = cr_model
    runs = tmp_path / "runs"
    src = cnn_source(corpus, "raw_exvo_cr", cache, runs, name="cr", echo=lambda s: None)
    # its country UAR is the CNN's clip UAR as the trainer's existing evaluation scored it (Table 1)
    table1 = json.loads(path.with_suffix(".json").read_text())["val_metrics"]["clip_uar"]
    assert src.val_uar == [pytest.approx(table1, abs=1e-12)] and src.subtasks == ["country"]
    run = Run.open(runs / "cr")
    val = run.predictions("Val")
    assert uar(corpus.labels("Val")[1], val.take(corpus.split_ids("Val")).country) == pytest.approx(table1, abs=1e-12)
    assert run.kind == "cnn-posteriors" and run.subtasks == ("country",) and run.metrics["subtasks"] == ["country"]
    np.testing.assert_allclose(val.country_proba.sum(1), 1.0, atol=1e-9)
    # the columns it does not predict hold the Train means, recorded as such
    tr = corpus.indices("Train")
    np.testing.assert_allclose(val.age, corpus.age[tr].mean())
    assert run.record["filled_with_train_mean"] == ["emotion", "age"]

    _er_run(runs, corpus)
    lines: list[str] = []
    res = fuse(corpus, runs_dir=runs, run_names=["er", "cr"], mode="hybrid", select_on="val", name="hyb", echo=lines.append)
    rec = json.loads((runs / "hyb" / "fusion.json").read_text())
    assert res.chosen == {"emotion": ["er"], "country": ["cr"], "age": ["er"]}
    # the CNN is no candidate for emotion or age, though its Train-mean age would beat er's
    assert [c["run"] for c in rec["subtasks"]["age"]["candidates"]] == ["er"]
    assert [c["run"] for c in rec["subtasks"]["emotion"]["candidates"]] == ["er"]
    assert {c["run"] for c in rec["subtasks"]["country"]["candidates"]} == {"er", "cr"}
    # one CNN enters both fused seeds: the fusion keeps er's 2 seeds
    assert res.n_seeds == 2 and any("cr is one model" in n for n in res.notes)
    fused = Run.open(runs / "hyb").predictions("Val").take(corpus.split_ids("Val"))
    assert uar(corpus.labels("Val")[1], fused.country) == pytest.approx(table1, abs=1e-12)
    np.testing.assert_allclose(fused.age, corpus.labels("Val")[2] + 20.0)
    # the report lists the fusion and says what the partial source is, without a row for it
    from exvo.fusion.report import make_report

    text = make_report(runs, tmp_path / "report", corpus)
    assert "hyb" in text and "1 cnn-posteriors run(s) (cr) are partial fusion sources" in text


def test_cli_cnn_posteriors_and_its_refusals(cr_model, small_demo_copy, tmp_path):
    corpus, cache, _ = cr_model
    runs = tmp_path / "runs"
    common = ["--data", str(small_demo_copy), "--cache", str(cache), "--runs", str(runs)]
    r = CliRunner().invoke(app, ["cnn-posteriors", "--model", "raw_exvo_cr", *common])
    assert r.exit_code == 0, r.output
    assert "raw_exvo_cr-softmax: raw_exvo_cr's own clip decisions, country only: Val UAR" in r.output
    assert (runs / "raw_exvo_cr-softmax" / "val.csv").is_file()
    import exvo

    run = exvo.cnn_posteriors(corpus, "raw_exvo_cr", cache_dir=cache, runs_dir=runs, name="api")
    assert run.subtasks == ("country",) and run.kind == "cnn-posteriors"
    r = CliRunner().invoke(app, ["cnn-posteriors", "--model", "zff_exvo_cr", *common])
    assert r.exit_code != 0 and "run `exvo extract --model zff_exvo_cr` on this corpus" in r.output
    r = CliRunner().invoke(app, ["cnn-posteriors", "--model", "egemaps", *common])
    assert r.exit_code != 0 and "expected one of the task CNNs" in r.output
