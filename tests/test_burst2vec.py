"""Burst2Vec (exvo.learn.burst2vec) and its per-task / oversampling sampler (exvo.learn.task_batches)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exvo.config import build
from exvo.learn.burst2vec import (AgeScale, Burst2Vec, Burst2VecConfig, label_tensors, predict_burst2vec,
                                  train_burst2vec)
from exvo.learn.task_batches import joint_cells, oversample, task_batches

TINY = dict(proj_dim=6, hidden=5, head_hidden=4)


def _batch(task: int, B: int = 8, D: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(B, D, generator=g, dtype=torch.float64),
            "emotions": torch.rand(B, 10, generator=g, dtype=torch.float64),
            "age01": torch.rand(B, generator=g, dtype=torch.float64),
            "country": torch.randint(0, 4, (B,), generator=g),
            "task": torch.full((B,), task, dtype=torch.long)}


# ------------------------------------------------------------------------------ gradient reversal
def test_eq8_signs_on_a_two_layer_toy():
    """Extractor w1 (below the GRL), discriminator w2 (above), composed as Burst2Vec composes them:
    loss = L_O(w1) + α1 · L_D(w2 · GRL_1(w1·x)) with L_O = (w1·x − y)², L_D = ½ (w2·w1·x)².
    By hand (x 2, y 0.5, w1 0.5, w2 3, α1 0.5): ∂L_O/∂w1 = 2(1 − 0.5)·2 = 2,
    ∂L_D/∂w1 = (w2 w1 x)·w2 x = 18, ∂L_D/∂w2 = (w2 w1 x)·w1 x = 3, so the extractor gets
    2 − 0.5·18 = −7 (it ascends α1 L_D, Eq. 8) and the discriminator 0.5·3 = 1.5 (it descends α1 L_D)."""
    from exvo.learn.losses import grad_reverse

    x, y, a1 = torch.tensor(2.0), torch.tensor(0.5), 0.5
    w1 = torch.tensor(0.5, requires_grad=True)
    w2 = torch.tensor(3.0, requires_grad=True)
    r = w1 * x
    loss = (r - y) ** 2 + a1 * 0.5 * (w2 * grad_reverse(r, 1.0)) ** 2
    assert loss.item() == pytest.approx(0.25 + 0.5 * 4.5)      # the GRL leaves the forward value untouched
    loss.backward()
    assert w1.grad.item() == pytest.approx(-7.0)
    assert w2.grad.item() == pytest.approx(1.5)


@pytest.mark.parametrize("task", [0, 1, 2])
def test_reversal_flips_exactly_the_adversarial_gradients(task):
    """Gradients of the training loss = the plain terms' gradients with the signs of Eq. 8 below the
    GRLs (projection, extractors) and + above them (heads, concat layers, discriminator)."""
    a1, a2 = 0.5, 0.25
    torch.manual_seed(0)
    m = Burst2Vec(6, Burst2VecConfig(alpha1=a1, alpha2=a2, **TINY)).double().train()
    batch = _batch(task)
    names, params = zip(*m.named_parameters())

    def grads(scalar):
        gs = torch.autograd.grad(scalar, params, allow_unused=True, retain_graph=True)
        return {n: (torch.zeros_like(p) if g is None else g) for n, p, g in zip(names, params, gs)}

    total = grads(m.loss(m.outputs(batch), batch))
    terms = m.loss_terms(m.outputs(batch), batch, reverse=False)
    gO, gD, gA = grads(terms["L_O"][task]), grads(terms["L_D"]), grads(terms["L_Adv"][task])
    below = ("proj.", "shared.", "specific.")
    for n in names:
        if n.startswith(below):
            want = gO[n] - a1 * gD[n] - a2 * gA[n]        # the extractors descend Eq. 8
        else:
            want = gO[n] + a1 * gD[n] + a2 * gA[n]        # the adversaries descend their own losses, weighted as Eq. 8
        torch.testing.assert_close(total[n], want, rtol=1e-10, atol=1e-12, msg=n)
    # the known answers per block: none of the checks above is vacuous
    others = [t for t in range(3) if t != task]
    nz = lambda g, prefix: any(g[n].abs().sum() > 0 for n in names if n.startswith(prefix))
    assert nz(gD, "shared.") and nz(gD, "discriminator.") and not nz(gD, "heads.")
    for t in others:
        assert nz(gA, f"specific.{t}.") and not nz(gO, f"specific.{t}.")
        torch.testing.assert_close(total[f"specific.{t}.0.weight"], -a2 * gA[f"specific.{t}.0.weight"])
        assert not nz(total, f"heads.{t}.")                 # a task-j batch trains only head j
    assert not nz(gA, "shared.") and not nz(gA, f"specific.{task}.")
    # paper Eq. 8 weighs L_D by α1 for the discriminator too (exvo ≤ 0.1 trained it at weight 1)
    torch.testing.assert_close(total["discriminator.2.weight"], a1 * gD["discriminator.2.weight"])
    # a hand-checkable sign: the discriminator's and the shared extractor's last layers see α1 L_D
    # with opposite signs through the GRL
    w = "shared.2.weight"
    torch.testing.assert_close(total[w] - gO[w], -a1 * gD[w])


# ----------------------------------------------------------------------------- α = 0 == plain MTL
def _synthetic(n=240, D=12, seed=0, task_markers=False):
    g = np.random.default_rng(seed)
    z = g.normal(size=(n, D)).astype(np.float32)
    emo = (1 / (1 + np.exp(-(z[:, :10] + 0.5 * z[:, 10:11])))).astype(np.float32)
    cou = ((z[:, 0] + z[:, 1] > 0).astype(int) + 2 * (z[:, 2] - z[:, 3] > 0)).astype(np.int64)
    age = 28 + 4 * np.tanh(z[:, 4] - z[:, 5])
    return z, emo, cou, age


def test_alpha_zero_equals_the_plain_multitask_model():
    X, emo, cou, age = _synthetic()
    cfg = build(Burst2VecConfig, alpha1=0.0, alpha2=0.0, epochs=2, patience=2, **TINY)
    adv, _ = train_burst2vec(X, np.arange(160), np.arange(160, 240), emo, cou, age, [0, 1], cfg)
    plain, _ = train_burst2vec(X, np.arange(160), np.arange(160, 240), emo, cou, age, [0, 1], cfg, adversarial=False)
    assert set(adv.stack.params) - set(plain.stack.params) == {k for k in adv.stack.params if k.startswith("discriminator.")}
    for k, v in plain.stack.params.items():
        torch.testing.assert_close(adv.stack.params[k], v, rtol=1e-6, atol=1e-7, msg=k)
    np.testing.assert_allclose(adv.history, plain.history, rtol=1e-6)
    # and the adversarial terms do change the model when switched on
    on, _ = train_burst2vec(X, np.arange(160), np.arange(160, 240), emo, cou, age, [0, 1],
                            build(Burst2VecConfig, epochs=2, patience=2, **TINY))
    assert not torch.allclose(on.stack.params["shared.0.weight"], plain.stack.params["shared.0.weight"])


# ---------------------------------------------------------------------------------- sampler
def test_per_task_batches_cover_every_row_with_equal_shapes():
    data = {"x": torch.arange(50, dtype=torch.float32)[:, None]}
    rows = {0: np.arange(0, 50), 1: np.arange(0, 20), 2: np.arange(30, 37)}
    sample = task_batches(data, rows, batch_size=8)
    batches = list(sample(torch.Generator().manual_seed(1), 1))
    assert len(batches) == 7 + 3 + 1                        # ceil(50/8) + ceil(20/8) + ceil(7/8)
    seen = {0: [], 1: [], 2: []}
    for b in batches:
        assert b["x"].shape == (8, 1) and b["task"].shape == (8,)
        t = int(b["task"][0])
        assert (b["task"] == t).all()                       # one task per batch
        np.testing.assert_array_equal(b["x"][:, 0].numpy(), b["row"].numpy())
        seen[t] += b["row"].tolist()
    for t, r in rows.items():
        assert set(seen[t]) == set(r.tolist())              # every row of the task, no other row
        assert len(seen[t]) == -(-len(r) // 8) * 8
    tasks = [int(b["task"][0]) for b in batches]
    assert tasks != sorted(tasks)                           # the tasks are interleaved
    again = [int(b["task"][0]) for b in sample(torch.Generator().manual_seed(1), 1)]
    assert again == tasks                                   # a seed's generator fixes its order


def test_joint_cells_known_answer_and_refusal():
    emo = np.zeros((3, 10)); emo[0, 3] = 1; emo[1, 9] = 1; emo[2, 0] = 1
    # 4 age ranges (edges 25, 30, 35): cell = (country·4 + range)·10 + dominant emotion
    cells = joint_cells(np.array([0, 2, 3]), np.array([24.0, 30.0, 39.0]), emo)
    np.testing.assert_array_equal(cells, [3, (2 * 4 + 2) * 10 + 9, (3 * 4 + 3) * 10 + 0])
    with pytest.raises(ValueError, match="lack one"):
        joint_cells(np.array([0, -1]), np.array([24.0, 30.0]), emo[:2])


def test_oversampling_balances_the_joint_cells():
    g = np.random.default_rng(0)
    n = 300
    # skewed like ExVo: country 2 is common, the old are rare, emotion 0 dominates
    cou = g.choice(4, n, p=[0.15, 0.15, 0.6, 0.1])
    age = np.where(g.random(n) < 0.8, g.uniform(20, 27, n), g.uniform(27, 39, n))
    emo = g.random((n, 10)) * 0.5
    emo[g.random(n) < 0.7, 0] = 1.0
    cells = joint_cells(cou, age, emo)
    rows = np.arange(n)
    before = np.unique(cells, return_counts=True)[1]
    assert before.max() > 5 * before.min()
    data = {"x": torch.zeros(n, 1)}
    sample = task_batches(data, {0: rows, 1: rows, 2: rows}, 16, cells={t: cells for t in range(3)})
    seen = {t: [] for t in range(3)}
    for b in sample(torch.Generator().manual_seed(0), 1):
        seen[int(b["task"][0])] += b["row"].tolist()
    top = before.max()
    for t in range(3):
        got = np.asarray(seen[t])
        exact = oversample(rows, cells, torch.Generator().manual_seed(5))
        assert exact.size == before.size * top
        # each epoch: every cell exactly `top` times (plus at most one batch of wrap-round)
        counts = np.unique(cells[got], return_counts=True)[1]
        assert counts.size == before.size and counts.min() >= top and counts.sum() - before.size * top < 16
        assert set(got.tolist()) == set(rows.tolist())     # every original row still appears


# ------------------------------------------------------------------ adversarial training works
def test_discriminator_falls_toward_chance_while_the_heads_learn():
    """Three tasks trained on different clips whose inputs carry a task marker (information that
    only tells the tasks apart) besides the shared content the labels depend on. Without reversal
    (α1 ≈ 0) the discriminator reads the marker from the shared representation; with α1 = 0.5 the shared
    extractor learns to hide it from the discriminator, and the heads still learn every task.
    (What it hides is hidden from this discriminator only: a fresh logistic probe on the same
    shared representation still reads the marker, ~0.95 in a trial run, as is usual for
    gradient-reversal training.)"""
    n_per, D = 150, 12
    X, emo, cou, age = _synthetic(n=3 * n_per + 150, D=D, seed=1)
    subset = np.repeat([0, 1, 2, -1], [n_per, n_per, n_per, 150])
    marker = np.eye(3, dtype=np.float32)[np.clip(subset, 0, 2)] * 3.0
    marker[subset < 0] = 1.0
    X = np.concatenate([X, marker + 0.3 * np.random.default_rng(2).normal(size=marker.shape).astype(np.float32)], 1)
    emo_l, cou_l, age_l = emo.copy(), cou.copy(), age.copy()
    emo_l[(subset != 0) & (subset >= 0)] = np.nan             # each Train clip labelled for one task only
    age_l[(subset != 1) & (subset >= 0)] = np.nan
    cou_l[(subset != 2) & (subset >= 0)] = -1
    fit_rows, sel_rows = np.arange(3 * n_per), np.arange(3 * n_per, 3 * n_per + 150)

    def run(alpha1):
        cfg = build(Burst2VecConfig, alpha1=alpha1, alpha2=0.25, epochs=25, patience=25, restore="last", proj_dim=64,
                              hidden=32, head_hidden=16, lr=3e-3, vectorise=False)
        fit, scale = train_burst2vec(X, fit_rows, sel_rows, emo_l, cou_l, age_l, [0], cfg)
        m = Burst2Vec(X.shape[1], cfg)
        m.load_state_dict({k: v[0] for k, v in fit.stack.params.items()} | {k: v[0] for k, v in fit.stack.buffers.items()})
        m.eval()
        with torch.no_grad():
            shared, _ = m.representations(torch.from_numpy(X[fit_rows]))
            acc = (m.discriminator(shared).argmax(1).numpy() == subset[fit_rows]).mean()
        e, p, a = predict_burst2vec(fit.stack, torch.from_numpy(X), sel_rows, scale)
        return acc, e[0], p[0], a[0]

    # α1 = 1e-4: the discriminator learns at weight α1, which Adam's per-parameter scaling undoes,
    # while the reversed push into the shared extractor is 1e-4 of the full one (α1 = 0 would
    # leave the discriminator untrained, Eq. 8)
    acc_plain, *_ = run(1e-4)
    acc_adv, e, p, a = run(0.5)
    assert acc_plain > 0.9                                  # the marker is easy to read ...
    assert acc_adv < 0.6 and acc_adv < acc_plain - 0.3      # ... until the reversal hides it (chance 1/3)
    from exvo.metrics import mae, mean_ccc, uar

    c, _ = mean_ccc(emo[sel_rows], e)
    assert c > 0.3                                          # every head still learns
    assert uar(cou[sel_rows], p.argmax(1)) > 0.45           # chance 0.25
    assert mae(age[sel_rows], a) < 0.8 * mae(age[sel_rows], np.full(len(sel_rows), age_l[fit_rows][subset[fit_rows] == 1].mean()))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="alpha1 must be a finite number >= 0"):
        Burst2VecConfig(alpha1=-0.5)
    with pytest.raises(ValueError, match="unknown emotion loss"):
        Burst2VecConfig(emotion_loss="l1")
    with pytest.raises(ValueError, match="has no training rows"):
        task_batches({"x": torch.zeros(3, 1)}, {0: np.arange(3), 1: np.arange(0)}, 2)


def test_age_scale_round_trip():
    s = AgeScale.fit(np.array([20.0, 39.0, np.nan, 25.0]))
    np.testing.assert_allclose(s.to01([20.0, 39.0]), [0.0, 1.0])
    np.testing.assert_allclose(s.years(s.to01([31.5])), [31.5])
    lab = label_tensors(np.full((2, 10), np.nan), np.array([-1, 3]), np.array([np.nan, 39.0]), s)
    assert torch.isfinite(lab["emotions"]).all() and lab["country"].tolist() == [0, 3]


# ------------------------------------------------------------------------- through the CLI
def test_learn_burst2vec_through_the_cli_then_predict_and_fuse(tmp_path):
    """`exvo learn --learner burst2vec` with its flags writes a normal run; `exvo predict` reloads it;
    `exvo fuse --mean` over two Burst2Vec runs (Table 2's "Ensemble" rows) averages them."""
    import json

    from typer.testing import CliRunner

    from exvo.cli import app
    from exvo.predictions import load_seed_predictions
    from test_learn import make_corpus, write_cache

    corpus, z = make_corpus(tmp_path / "corp")
    rng = np.random.default_rng(0)
    write_cache(tmp_path / "cache", corpus, "lin", np.concatenate([z, rng.normal(size=(len(corpus), 3))], 1)[:, None])
    common = ["--data", str(corpus.root), "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    fast = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--threads", "1",
            "--opt", "proj_dim=8", "--opt", "hidden=8", "--opt", "head_hidden=8"]
    r = CliRunner().invoke(app, ["learn", "-f", "lin", "--learner", "burst2vec", "--alpha1", "0.3", "--oversample",
                                 "--emotion-loss", "mse", "--seeds", "2", *fast, *common])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "lin_burst2vec"
    cfg = json.loads((run / "config.json").read_text())
    lc = cfg["learner_config"]
    assert (lc["alpha1"], lc["alpha2"], lc["oversample"], lc["emotion_loss"], lc["age_loss"]) == (0.3, 0.25, True, "mse", "mae")
    # its own settings, explicit ones on top, recorded as what trained the run
    assert (lc["train"]["epochs"], lc["train"]["batch_size"], lc["train"]["lr"]) == (1, 16, 1e-4) and cfg["train"] == lc["train"]
    assert load_seed_predictions(run, "Val").emotions.shape[0] == 2
    assert [s["best_epoch"] for s in json.loads((run / "metrics.json").read_text())["per_seed"]] in ([0, 0], [0, 1], [1, 0], [1, 1])
    r = CliRunner().invoke(app, ["predict", str(run), "--split", "Val", *common[:4]])
    assert r.exit_code == 0, r.output
    from exvo.predictions import Predictions, load_split

    again, saved = Predictions.read(r.output.strip().split()[-1]), load_split(run, "Val")
    np.testing.assert_allclose(again.take(saved.ids).emotions, saved.emotions, rtol=1e-5, atol=1e-6)
    r = CliRunner().invoke(app, ["learn", "-f", "lin", "--learner", "burst2vec", "--alpha1", "0", "--alpha2", "0",
                                 "--name", "noadv", "--seeds", "1", *fast, *common])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["fuse", "--mean", "lin_burst2vec", "noadv", "--name", "ens", *common[:2], *common[4:]])
    assert r.exit_code == 0, r.output
    # fusion is seed by seed: with 2 and 1 seeds, seed 0 of each is paired and the extra seed is left out
    a, b = (load_seed_predictions(tmp_path / "runs" / n, "Val").seed(0) for n in ("lin_burst2vec", "noadv"))
    ens = load_split(tmp_path / "runs" / "ens", "Val")
    np.testing.assert_allclose(ens.take(a.ids).emotions, (a.emotions + b.take(a.ids).emotions) / 2, rtol=1e-6)
    r = CliRunner().invoke(app, ["learn", "-f", "lin", "--learner", "mlp", "--alpha1", "0.5", *common])
    assert r.exit_code == 2 and "learner 'mlp' has no option 'alpha1'" in r.output
