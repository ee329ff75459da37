"""The learner registry, presets, losses, honest selection and threads (issues 12 and 20).

Uses the hand-made corpus of ``test_learn`` (labels are known functions of the features).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from exvo.config import SelectionConfig, build
from exvo.corpus import Corpus
from exvo.learn import registry
from exvo.learn.api import learn
from exvo.learn.config import LearnConfig
from exvo.learn.multitask import LossConfig, MultitaskModule
from exvo.predictions import load_seed_predictions
from test_learn import make_corpus, write_cache

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """A corpus and a copy of it (same folder name, so the same caches) whose Val labels are
    permuted among the Val rows."""
    tmp = tmp_path_factory.mktemp("learners")
    corpus, z = make_corpus(tmp / "a" / "corp")
    rng = np.random.default_rng(3)
    n = len(corpus)
    lin = np.concatenate([z * 3.0 + 1.0, rng.normal(size=(n, 4))], 1)[:, None, :]
    ssl = rng.normal(size=(n, 3, 8))
    ssl[:, 1, :4] = z
    cache = tmp / "cache"
    write_cache(cache, corpus, "lin", lin)
    write_cache(cache, corpus, "ssl3", ssl)
    rows = list(csv.reader(open(corpus.root / "data_info.csv")))
    head, body = rows[0], rows[1:]
    val = [k for k, r in enumerate(body) if r[1] == "Val"]
    perm = rng.permutation(val)
    lab = slice(3, len(head))                      # Country, Age, Country_string, emotions
    permuted = [list(r) for r in body]
    for k, src in zip(val, perm):
        permuted[k][lab] = body[src][lab]
    (tmp / "b" / "corp").mkdir(parents=True)
    with open(tmp / "b" / "corp" / "data_info.csv", "w", newline="") as f:
        csv.writer(f).writerows([head] + permuted)
    other = Corpus.from_dir(tmp / "b" / "corp")
    assert other.name == corpus.name and not np.array_equal(other.labels("Val")[2], corpus.labels("Val")[2])
    return {"corpus": corpus, "permuted": other, "cache": cache, "tmp": tmp}


def _cfg(**kw):
    base = dict(features=["lin"], arch="sys1", seeds=2, epochs=4, patience=2, device="cpu", threads=1)
    return build(LearnConfig, base | kw)


# ------------------------------------------------------------------ honest selection
def test_val_labels_never_change_a_default_run(world2, tmp_path):
    """Permuting the Val labels among Val rows leaves a default run's models unchanged: the same
    Test (and Val) predictions; only the Val scores move."""
    quiet = lambda m: None
    a = learn(world2["corpus"], _cfg(), world2["cache"], tmp_path / "a", echo=quiet)
    b = learn(world2["permuted"], _cfg(), world2["cache"], tmp_path / "b", echo=quiet)
    for split in ("Test", "Val"):
        pa, pb = load_seed_predictions(a.run_dir, split), load_seed_predictions(b.run_dir, split)
        np.testing.assert_array_equal(pa.emotions, pb.emotions)
        np.testing.assert_array_equal(pa.country_proba, pb.country_proba)
        np.testing.assert_array_equal(pa.age, pb.age)
    assert a.metrics["summary"]["s_mtl"] != b.metrics["summary"]["s_mtl"]
    assert a.config["selection"]["on"] == "folds" and not a.config["val_optimistic"]      # the default: speaker folds
    np.testing.assert_array_equal(load_seed_predictions(a.run_dir, "OOF").emotions,
                                  load_seed_predictions(b.run_dir, "OOF").emotions)   # OOF neither


def test_the_layer_probe_ignores_val_labels_unless_told(world2):
    from exvo.extract.cache import EmbeddingCache
    from exvo.extract.cache import cache_path
    from exvo.learn.probe import probe_layers

    c = EmbeddingCache(cache_path(world2["cache"], "corp", "ssl3"))
    la, ia = probe_layers(c, world2["corpus"])
    lb, ib = probe_layers(c, world2["permuted"])
    assert la == lb == 1 and ia["layer_scores"] == ib["layer_scores"] and ia["selected_on"] == "holdout"
    # speaker folds (the default presets): out-of-fold over every Train clip, Val labels unused
    fa, fia = probe_layers(c, world2["corpus"], SelectionConfig(on="folds", k=3))
    fb, fib = probe_layers(c, world2["permuted"], SelectionConfig(on="folds", k=3))
    assert fa == fb == 1 and fia["layer_scores"] == fib["layer_scores"] and fia["selected_on"] == "folds"
    assert "3 speaker folds of Train, out-of-fold" in fia["method"] and fia["layer_scores"] != ia["layer_scores"]
    va = probe_layers(c, world2["corpus"], SelectionConfig(on="val"))[1]["layer_scores"]
    vb = probe_layers(c, world2["permuted"], SelectionConfig(on="val"))[1]["layer_scores"]
    assert va != vb                                   # with --stop-on val, Val labels do choose


def test_presets_are_recorded_and_stop_on_val_is_marked_optimistic(world2, tmp_path):
    msgs = []
    res = learn(world2["corpus"], _cfg(preset="paper", arch=None, epochs=3), world2["cache"], tmp_path,
                echo=msgs.append)
    cfg = json.loads((res.run_dir / "config.json").read_text())
    met = json.loads((res.run_dir / "metrics.json").read_text())
    assert cfg["preset"] == "paper" and cfg["arch"] == "sys2" and cfg["losses"]["combine"] == "mean"
    assert cfg["train"]["restore"] == "last" and cfg["train"]["min_delta"] == 0.1 and cfg["train"]["patience"] == 2
    assert cfg["selection"]["on"] == "val" and cfg["selection"]["monitor"] == "loss" and cfg["val_optimistic"] is True
    assert met["selection"]["optimistic"] is True and met["val_optimistic"] is True
    assert "Val† CCC" in res.summary_line() and any("optimistic (†)" in m for m in msgs)
    base = learn(world2["corpus"], _cfg(preset="baseline", arch=None, epochs=2), world2["cache"], tmp_path,
                 echo=lambda m: None)
    assert base.run_dir.name == "lin_mlp_sys1_baseline" and base.config["losses"]["combine"] == "uncertainty"
    assert res.run_dir.name == "lin_mlp_sys2_paper"
    with pytest.raises(ValueError, match="unknown preset 'idiap'"):
        learn(world2["corpus"], _cfg(preset="idiap"), world2["cache"], tmp_path)


# ------------------------------------------------------------------ losses
def test_multitask_loss_choices_known_answer():
    class Fixed(MultitaskModule):
        def outputs(self, batch):
            return {}

    y = torch.tensor([[0.1] * 10, [0.9] * 10, [0.5] * 10])
    batch = {"emotions": y, "country": torch.tensor([0, 1, 2]), "age": torch.tensor([1.0, -3.0, 2.0])}
    out = {"emotions": y.clone(), "country": torch.zeros(3, 4), "age": torch.zeros(3)}
    m = Fixed(LossConfig(emotions="ccc", age="mae", combine="fixed", weights=(1.0, 2.0, 3.0)))
    # CCC of a perfect prediction is 1 (loss 0); CE of uniform logits is log 4; MAE = (1+3+2)/3 = 2
    assert m.loss(out, batch).item() == pytest.approx(0 + 2 * math.log(4) + 3 * 2, rel=1e-5)
    m = Fixed(LossConfig(emotions="mse", age="mse", combine="mean"))
    # emotions: Σ_j mean_b 0 = 0; age MSE = (1 + 9 + 4)/3
    assert m.loss(out, batch).item() == pytest.approx((0 + math.log(4) + 14 / 3) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="unknown emotion loss 'mae'"):
        LossConfig(emotions="mae")
    with pytest.raises(ValueError, match="loss weights must be 3"):
        LossConfig(combine="fixed", weights=(1.0, 2.0))


def test_xgb_refuses_the_ccc_emotion_loss(world2, tmp_path):
    with pytest.raises(ValueError, match="applies to torch learners only"):
        learn(world2["corpus"], _cfg(learner="xgb", emotion_loss="ccc"), world2["cache"], tmp_path,
              echo=lambda m: None)


# ------------------------------------------------------------------ a learner written only as a module
@dataclass
class ToyConfig:
    width: int = 8


class Toy(MultitaskModule):
    def __init__(self, dim, cfg, loss_cfg):
        super().__init__(loss_cfg)
        self.body = nn.Sequential(nn.Linear(dim, cfg.width), nn.Tanh())
        self.out = nn.Linear(cfg.width, 15)

    def outputs(self, batch):
        h = self.out(self.body(batch["x"]))
        return {"emotions": torch.sigmoid(h[..., :10]), "country": h[..., 10:14], "age": h[..., 14]}


@pytest.fixture
def toy_learner():
    registry.register(registry.module_learner("toy", "a one-layer test learner", ToyConfig,
                                              lambda dim, cfg, loss: Toy(dim, cfg, loss)))
    yield
    registry.unregister("toy")


def test_a_learner_written_only_as_a_module_trains_through_the_cli(world2, tmp_path, toy_learner):
    from typer.testing import CliRunner

    from exvo.cli import app

    common = ["--data", str(world2["corpus"].root), "--cache", str(world2["cache"]), "--runs", str(tmp_path)]
    r = CliRunner().invoke(app, ["learn", "-f", "lin", "--learner", "toy", "--opt", "width=5", "--seeds", "2",
                                 "--epochs", "3", "--emotion-loss", "ccc", "--age-loss", "mae", "--device", "cpu",
                                 "--threads", "1", *common])
    assert r.exit_code == 0, r.output
    run = tmp_path / "lin_toy"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["learner"] == "toy" and cfg["learner_config"] == {"width": 5} and cfg["losses"]["emotions"] == "ccc"
    # the default selection: 2 seeds × 5 speaker folds in one stack
    assert torch.load(run / "models" / "stack.pt", weights_only=True)["params"]["body.0.weight"].shape == (10, 5, 8)
    sp = load_seed_predictions(run, "Test")
    assert sp.seeds == [0, 1] and sp.emotions.shape[0] == 2
    r = CliRunner().invoke(app, ["predict", str(run), *common[:4]])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["learn", "-f", "lin", "--learner", "toy", "--opt", "depth=2", *common])
    assert r.exit_code == 2 and "learner 'toy' has no option 'depth'; its options are: width" in r.output
    r = CliRunner().invoke(app, ["learn", "-f", "lin", "--learner", "svm", *common])
    assert r.exit_code == 2 and "unknown learner 'svm'; choose one of ('mlp', 'xgb', 'burst2vec', 'wsum', 'toy')" in r.output


def test_registry_refuses_a_taken_name_and_bad_outputs(world2, tmp_path, toy_learner):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.module_learner("toy", "again", ToyConfig, lambda d, c, l: Toy(d, c, l)))

    class Wrong(Toy):
        def outputs(self, batch):
            return super().outputs(batch) | {"age": torch.zeros(batch["x"].shape[0], 1)}

    registry.register(registry.module_learner("toy", "wrong", ToyConfig, lambda d, c, l: Wrong(d, c, l)), replace=True)
    with pytest.raises(ValueError, match=r"output 'age' has shape \(2, 1\), expected \(2,\)"):
        learn(world2["corpus"], _cfg(learner="toy"), world2["cache"], tmp_path, echo=lambda m: None)


# ------------------------------------------------------------------ threads
def test_thread_default_backs_off_under_load(monkeypatch):
    from exvo.learn import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert threads.resolve_threads(0) == 4
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert threads.resolve_threads(0) == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert threads.resolve_threads(0) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_threads(0) == 3 and threads.resolve_threads(2) == 2
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        threads.resolve_threads(-1)


def test_an_option_of_the_wrong_type_says_what_was_expected():
    with pytest.raises(ValueError, match=r"option epochs='many' of TrainConfig: expected an integer"):
        registry.get("burst2vec").make_config({"epochs": "many"})
    with pytest.raises(ValueError, match=r"option dropout='x' of Burst2VecConfig: expected a number"):
        registry.get("burst2vec").make_config({"dropout": "x"})
