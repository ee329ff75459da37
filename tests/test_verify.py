"""Enrol-to-verify (issue 15): losses by hand, margin/scale constraints, prototypes, the protocol.

The synthetic corpus gives each clip one dominant emotion (0.9 against 0.1 for the others)
and features = a class-specific mean + noise, so the right answers are known.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exvo.config import build
from exvo.corpus import Corpus
from exvo.extract.cache import cache_path
from exvo.extract.cache_writer import CacheWriter
from exvo.metrics import EMOTIONS
from exvo.verify import api as vapi
from exvo.verify.api import verify
from exvo.verify.config import VerifyConfig
from exvo.verify.encoder import EncoderConfig, VerifyModule
from exvo.verify.episodes import (dominant_class, draw_enrolment, episodic_sampler, nearest_prototype, prototypes,
                                  weighted_f1)
from exvo.verify.losses import LOSSES, MARGIN_LOSSES, LossConfig, make_loss, queries_and_centroids

torch.set_num_threads(1)
CLASSES = ["Amusement", "Awe", "Distress", "Fear", "Awkwardness"]
SEEN, TASK = ["Amusement", "Awe", "Distress", "Fear"], ["Amusement", "Awkwardness"]


def make_world(root, unseen_train_garbage: bool = False, seed: int = 0):
    """24 speakers × 15 clips (Train 12 / Val 6 / Test 6 unlabelled); one 8-dim cache ``feat``."""
    rng = np.random.default_rng(seed)
    n_spk, per = 24, 15
    n = n_spk * per
    cls = rng.integers(0, len(CLASSES), size=n)
    means = np.random.default_rng(99).normal(size=(len(CLASSES), 8)) * 2.0
    X = means[cls] + rng.normal(size=(n, 8))
    splits = ["Train"] * 12 + ["Val"] * 6 + ["Test"] * 6
    ids = [f"[{k:05d}]" for k in range(n)]
    if unseen_train_garbage:   # what an unseen-class Train clip holds must not matter
        for k in range(n):
            if splits[k // per] == "Train" and CLASSES[cls[k]] not in SEEN:
                X[k] = np.random.default_rng(1000 + k).normal(size=8) * 50.0
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS])
        for k in range(n):
            sp = splits[k // per]
            emo = [0.9 if e == CLASSES[cls[k]] else 0.1 for e in EMOTIONS]
            lab = [k % 4, 30, "x", *emo] if sp != "Test" else ["", "", "", *[""] * 10]
            w.writerow([ids[k], sp, f"Speaker_{k // per}", *lab])
    corpus = Corpus.from_dir(root)
    cache = root.parent / "cache"
    with CacheWriter(cache_path(cache, corpus.name, "feat"), "feat", {"extractor": "feat"}) as wr:
        for i, x in zip(corpus.ids, X):
            wr.add(i, x[None, :].astype(np.float32))
        wr.finalize(order=corpus.ids, files=[])
    return corpus, cache, np.array([CLASSES[c] for c in cls])


def _cfg(**kw):
    base = dict(features="feat", seen=SEEN, task=TASK, enrol=5, loss="namp", seeds=2, epochs=6, patience=6,
                n_per_class=4, device="cpu", curve=(1, 5), reference=False)
    base.update(kw)
    return build(VerifyConfig, base)


# ------------------------------------------------------------------ losses
def test_namp_loss_by_hand_as_the_text_intends_and_as_eq4_prints():
    """Two classes, N = 2: class 0 support (1, 0), query (1, 0); class 1 support (0, 1), query (1, 1).
    Centroids (1, 0) and (0, 1); cos(q0, ·) = (1, 0), cos(q1, ·) = (1/√2, 1/√2); w = 10, m = −0.3.
    namp (the text's intent, w·(cos − m)): S = [[13, 0], [7.071, 10.071]] →
    mean(log(1 + e^−13), log(1 + e^−3)) = 0.024295; namp-eq4 (Eq. 4 as printed, w·(cos + m)):
    S = [[7, 0], [7.071, 4.071]] → mean(log(1 + e^−7), log(1 + e^3)) = 1.524751."""
    K, N, E = 2, 2, 2
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    logits = torch.zeros(K * N, K)
    cfg = LossConfig(margin_init=0.3, scale_init=10.0, ce_weight=0.0)
    intent, printed = make_loss("namp", K, E, cfg), make_loss("namp-eq4", K, E, cfg)
    assert intent.margin().item() == pytest.approx(-0.3) and printed.margin().item() == pytest.approx(-0.3)
    assert intent(emb, logits, y, N).item() == pytest.approx(0.024295, abs=2e-6)
    assert printed(emb, logits, y, N).item() == pytest.approx(1.524751, abs=2e-6)
    # the text's NAMP raises the target logit (less discriminative), Eq. 4's lowers it (CosFace-like);
    # AMProto (m > 0, cos − m) computes Eq. 4's logits
    q, c = queries_and_centroids(emb, N)
    torch.testing.assert_close(intent.logits_(q, c), torch.tensor([[13.0, 0.0], [7.0711, 10.0711]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(printed.logits_(q, c), torch.tensor([[7.0, 0.0], [7.0711, 4.0711]]), atol=1e-4, rtol=0)
    amp = make_loss("amproto", K, E, cfg)
    torch.testing.assert_close(amp.logits_(q, c), printed.logits_(q, c))
    # + the classifier's cross-entropy (Eq. 5)
    full = make_loss("namp", K, E, LossConfig(margin_init=0.3, scale_init=10.0))
    lg = torch.randn(K * N, K)
    assert full(emb, lg, y, N).item() == pytest.approx(0.024295 + F.cross_entropy(lg, y).item(), abs=2e-6)


def test_margin_losses_on_random_batches_and_every_loss_has_a_gradient():
    K, N, E = 2, 3, 4
    emb, logits = torch.randn(K * N, E), torch.randn(K * N, K)
    y = torch.arange(K).repeat_interleave(N)
    cfg = LossConfig(ce_weight=0.0)
    amp, namp = make_loss("amproto", K, E, cfg), make_loss("namp", K, E, cfg)
    assert amp.margin().item() == pytest.approx(0.3) and namp.margin().item() == pytest.approx(-0.3)
    # the text's negative margin raises the target logit: lower loss than AMProto's on the same batch
    assert namp(emb, logits, y, N).item() < amp(emb, logits, y, N).item()
    fixed = make_loss("namp", K, E, LossConfig(margin_init=0.2, learn_margin=False))
    assert "theta" not in dict(fixed.named_parameters()) and fixed.margin().item() == pytest.approx(-0.2)
    assert fixed.margin_kind() == "fixed" and namp.margin_kind() == "learned"
    assert set(MARGIN_LOSSES) == {"amproto", "namp", "namp-eq4"}
    for name in LOSSES:   # every loss runs, is finite and has a gradient
        lf = make_loss(name, K, E, LossConfig())
        x = emb.clone().requires_grad_(True)
        out = lf(x, x @ torch.ones(E, K), y, N)
        out.backward()
        assert torch.isfinite(out) and x.grad is not None and torch.isfinite(x.grad).all(), name


@pytest.mark.parametrize("name,sign,drift", [("namp", -1, -1), ("namp-eq4", -1, 1), ("amproto", 1, -1)])
def test_margin_keeps_its_sign_and_scale_stays_positive_under_training(name, sign, drift):
    torch.manual_seed(1)
    K, N = 3, 5
    mod = VerifyModule(6, K, name, EncoderConfig(kind="mlp", hidden=16, emb=8), LossConfig())
    opt = torch.optim.Adam(mod.parameters(), lr=0.1)    # 100 x the usual step: a clamp-free margin would cross 0
    x = torch.randn(K * N, 6)
    y = torch.arange(K).repeat_interleave(N)
    ms = []
    for _ in range(200):
        opt.zero_grad()
        mod({"x": x + 0.1 * torch.randn_like(x), "y": y}, train_loss=True).backward()
        opt.step()
        with torch.no_grad():
            m, w = float(mod.criterion.margin()), float(mod.criterion.scale())
        assert sign * m > 0 and abs(m) < LossConfig().margin_max and w > 0
        ms.append(m)
    # a learned m drifts to where the target logit is largest: namp (w(cos − m), m < 0) towards −m_max,
    # namp-eq4 (w(cos + m)) and amproto (w(cos − m), m > 0) towards 0
    assert drift * (ms[-1] - sign * 0.3) > 0.05


def test_the_learned_margin_is_trained_by_the_verify_optimiser():
    """θ (m = −m_max·sigmoid(θ)) is a parameter of the module the framework's optimiser steps, it
    has a non-zero gradient, and one Adam step at the verify lr (1e-3) moves θ by ≈ lr."""
    from exvo.learn.framework import make_optimizer

    torch.manual_seed(0)
    K, N = 3, 4
    mod = VerifyModule(6, K, "namp", EncoderConfig(kind="mlp", hidden=16, emb=8), LossConfig())
    cfg = VerifyConfig.__dataclass_fields__["train"].default_factory()
    opt = make_optimizer(cfg, list(mod.parameters()))
    theta = mod.criterion.theta
    assert any(p is theta for g in opt.param_groups for p in g["params"])
    before = float(theta.detach())
    x, y = torch.randn(K * N, 6), torch.arange(K).repeat_interleave(N)
    mod({"x": x, "y": y}, train_loss=True).backward()
    assert theta.grad is not None and float(theta.grad) < 0      # the loss falls as θ (so |m|) grows
    opt.step()
    assert float(theta.detach()) - before == pytest.approx(cfg.lr, rel=0.05)


# ------------------------------------------------------------------ episodes, enrolment, verification
def test_episodic_batches_hold_n_clips_of_each_class_in_order():
    data = {"x": torch.arange(20.0)[:, None]}
    by_class = [np.array([0, 1, 2]), np.arange(3, 20)]          # class 0 smaller than N: wraps round
    s = episodic_sampler(data, by_class, 4)
    batches = list(s(torch.Generator().manual_seed(0), 1))
    assert len(batches) == 5                                  # ceil(17 / 4)
    for b in batches:
        assert b["y"].tolist() == [0] * 4 + [1] * 4
        rows = b["x"][:, 0].long().numpy()
        assert set(rows[:4]) <= {0, 1, 2} and set(rows[4:]) <= set(range(3, 20))
        assert len(set(rows[4:])) == 4                         # no repeat within a class's epoch


def test_dominant_class_and_weighted_f1():
    emo = np.array([[0.1] * 10, [0.0] * 10, [np.nan] * 10])
    emo[0, 4] = 0.9
    emo[1, 7] = 0.2
    assert dominant_class(emo).tolist() == [4, 7, -1]
    # known answer: class 0 P=2/3 R=1 F1=.8 (2 clips); class 1 P=1 R=.5 F1=2/3 (2 clips)
    assert weighted_f1([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx((0.8 * 2 + 2 / 3 * 2) / 4)


def test_prototypes_are_the_means_of_enrolled_embeddings_and_a_copy_of_an_enrolled_clip_gets_its_class():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 6))
    labels = rng.integers(0, 3, size=30)
    en = draw_enrolment(np.random.default_rng(1), labels, np.arange(30), [0, 2], 3)
    assert len(en) == 6 and set(labels[en[:3]]) == {0} and set(labels[en[3:]]) == {2}
    P = prototypes(emb[en], labels[en], [0, 2])
    np.testing.assert_allclose(P[0], emb[en[:3]].mean(0))
    np.testing.assert_allclose(P[1], emb[en[3:]].mean(0))
    # one enrolled clip per class: the prototype is that clip, so its copy as a query is assigned its class
    one = draw_enrolment(np.random.default_rng(2), labels, np.arange(30), [0, 1, 2], 1)
    P1 = prototypes(emb[one], labels[one], [0, 1, 2])
    assert nearest_prototype(emb[one], P1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="fewer than --enrol 50"):
        draw_enrolment(np.random.default_rng(1), labels, np.arange(30), [0], 50)


# ------------------------------------------------------------------ the protocol
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("verify") / "corp")


def test_verify_recognises_the_unseen_class_and_writes_the_run(world, tmp_path):
    corpus, cache, _ = world
    res = verify(corpus, _cfg(reference=True), cache, tmp_path / "runs", echo=lambda m: None)
    m = res.metrics
    assert res.run_dir == tmp_path / "runs" / "verify" / res.run_dir.name
    assert m["unseen"] == ["Awkwardness"] and m["enrol"] == 5 and m["chance_uar"] == 0.5
    assert "held-out half" in m["queries"]["split"]             # Test has no labels here
    assert m["uar"]["mean"] > 0.8                               # well separated synthetic classes
    assert all(r["margin"] < 0 and r["scale"] > 0 for r in m["per_seed"])
    assert set(m["np_curve"]) == {"1", "5"}
    assert m["all_reference"]["uar"]["mean"] > 0.8
    # queries and enrolled clips come from disjoint Val speakers, enrolled clips of the task classes
    enrolled = set(m["per_seed"][0]["enrolled"])
    lab, _ = vapi.class_labels(corpus, corpus.ids)
    pos = {i: k for k, i in enumerate(corpus.ids)}
    assert all(EMOTIONS[lab[pos[i]]] in TASK and corpus.splits[pos[i]] == "Val" for i in enrolled)
    z = np.load(res.run_dir / "embeddings.npz")
    assert z["seen_proto"].shape[0] == 4 and z["enrol_emb"].shape[0] == 10
    for f in ("config.json", "metrics.json", "history.json", "models/encoder.pt", "models/scaler.npz"):
        assert (res.run_dir / f).is_file(), f
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["kind"] == "verify" and cfg["selection"] == {"on": "folds", "parts": 5}
    # epochs chosen per seed on each of 5 speaker folds; the final encoders trained for their median
    hist = json.loads((res.run_dir / "history.json").read_text())
    fold_epochs = [e for row in hist["fold_epochs"] for e in row]
    assert len(hist["fold_epochs"]) == 5 and len(fold_epochs) == 10
    assert hist["epochs_run"] == max(1, int(np.floor(np.median(fold_epochs) + 0.5))) == m["per_seed"][0]["best_epoch"]
    # the report's figures: the N_p curve and the projection, plus one summary line per run
    from exvo.verify.figures import verify_figures

    (tmp_path / "rep").mkdir()
    made, notes = verify_figures(tmp_path / "runs" / "verify", tmp_path / "rep")
    assert [p.name for _, p in made] == ["verify_np_curve.png", "verify_projection.png"]
    assert all(p.stat().st_size > 1000 for _, p in made)
    assert len(notes) == 1 and "UAR" in notes[0] and "mean ± std over 2 seeds" in notes[0]


def test_unseen_class_clips_never_reach_training(world, tmp_path, monkeypatch):
    corpus, cache, names = world
    corpus2, cache2, _ = make_world(tmp_path / "corp", unseen_train_garbage=True)
    seen_rows = []
    real = vapi.episodic_sampler

    def spy(data, by_class, n, steps=None):
        seen_rows.append(np.concatenate(by_class))
        return real(data, by_class, n, steps)

    monkeypatch.setattr(vapi, "episodic_sampler", spy)
    r1 = verify(corpus, _cfg(seeds=1, curve=()), cache, tmp_path / "r1", name="a", echo=lambda m: None)
    r2 = verify(corpus2, _cfg(seeds=1, curve=()), cache2, tmp_path / "r2", name="a", echo=lambda m: None)
    rows = seen_rows[0]
    assert set(names[rows]) <= set(SEEN) and all(corpus.splits[r] == "Train" for r in rows)
    # the unseen-class Train clips were replaced by garbage: the trained encoder and scaler are unchanged
    a = torch.load(r1.run_dir / "models" / "encoder.pt", weights_only=True)["params"]
    b = torch.load(r2.run_dir / "models" / "encoder.pt", weights_only=True)["params"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    s1, s2 = np.load(r1.run_dir / "models" / "scaler.npz"), np.load(r2.run_dir / "models" / "scaler.npz")
    np.testing.assert_array_equal(s1["mean"], s2["mean"])


@pytest.mark.parametrize("kw,msg", [
    (dict(task=["Amusement", "Awe"]), "every class is seen"),
    (dict(task=["Amusement", "Joy"]), "'Joy' is not an emotion class"),
    (dict(seen=["Amusement"]), "at least 2 classes"),
    (dict(loss="arc"), "unknown --loss 'arc'"),
    (dict(enrol=500), "fewer than --enrol 500"),
])
def test_bad_settings_are_explained(world, tmp_path, kw, msg):
    corpus, cache, _ = world
    with pytest.raises(ValueError, match=msg):
        verify(corpus, _cfg(seeds=1, epochs=1, **kw), cache, tmp_path / "runs", echo=lambda m: None)
    assert not list((tmp_path / "runs").glob("verify/.*"))     # no half-written run left behind


def test_cli_verify_prints_json(world, tmp_path):
    from typer.testing import CliRunner

    from exvo.cli import app

    corpus, cache, _ = world
    r = CliRunner().invoke(app, ["verify", "--json", "--features", "feat", "--seen", ",".join(SEEN), "--task",
                                 ",".join(TASK), "--enrol", "3", "--seeds", "1", "--epochs", "2", "--n-per-class", "3",
                                 "--no-reference", "--device", "cpu", "--data", str(corpus.root),
                                 "--cache", str(cache), "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["loss"] == "namp" and out["margin"]["mean"] < 0 and out["all_reference"] is None
    plain = CliRunner().invoke(app, ["verify", "--features", "feat", "--seen", ",".join(SEEN), "--task", ",".join(TASK),
                                     "--enrol", "3", "--seeds", "1", "--epochs", "2", "--n-per-class", "3",
                                     "--no-reference", "--device", "cpu", "--data", str(corpus.root),
                                     "--cache", str(cache), "--runs", str(tmp_path / "runs2")])
    last = plain.stdout.strip().splitlines()[-1]
    assert plain.exit_code == 0 and f"namp on {'/'.join(TASK)}" in last
    assert f"UAR {out['uar']['mean']:.3f}" in last and "mean ± std over 1 seeds; chance UAR" in last


def test_selection_folds_hold_each_speaker_out_once_and_never_fit_on_it():
    from exvo.learn.selection import speaker_parts

    rows = np.arange(100, 160)
    spk = np.repeat([f"s{k}" for k in range(12)], 5)
    parts = speaker_parts(rows, spk, None, _cfg(folds=4).select)
    assert len(parts) == 4
    held = np.concatenate([h for _, h in parts])
    assert sorted(held.tolist()) == rows.tolist()                  # every clip held out once
    for f, h in parts:
        assert not set(spk[f - 100]) & set(spk[h - 100]) and f.size + h.size == rows.size
    (f, h), = speaker_parts(rows, spk, None, _cfg(stop_on="holdout").select)  # the one hold-out rule
    assert not set(spk[f - 100]) & set(spk[h - 100]) and h.size == 10
