"""The learner framework (``exvo.learn.framework``) and shared loss terms (``exvo.learn.losses``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exvo.config import TrainConfig
from exvo.learn import losses
from exvo.learn.framework import LearnerModule, SeedStack, predict, predict_each, shuffled_batches, train_seeds


# ------------------------------------------------------------------------------------------ losses
def test_ccc_loss_known_answer():
    t = torch.tensor([[0.0], [1.0], [2.0]])
    # mean_t 1, mean_p 2, cov 4/3, var_t 2/3, var_p 8/3: CCC = (8/3) / (2/3 + 8/3 + 1) = 8/13
    assert losses.batch_ccc(2 * t, t).item() == pytest.approx(8 / 13, abs=1e-6)
    assert losses.ccc_loss(2 * t, t).item() == pytest.approx(5 / 13, abs=1e-6)
    assert losses.ccc_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_combine_known_answers():
    L = torch.tensor([1.0, 2.0, 4.0])
    s = torch.tensor([0.0, np.log(2.0), -1.0])
    # ½e^0·1 + ½·0 + ½·½·2 + ½ln2 + ½e·4 − ½
    want = 0.5 + 0.5 + 0.5 * np.log(2.0) + 2 * np.e - 0.5
    assert losses.combine(L, "uncertainty", log_vars=s).item() == pytest.approx(want, rel=1e-6)
    assert losses.combine(L, "mean").item() == pytest.approx(7 / 3)
    assert losses.combine(L, "fixed", weights=torch.tensor([1.0, 0.5, 0.25])).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="needs the learned log_vars"):
        losses.combine(L, "uncertainty")


def test_gradient_reversal_flips_only_the_gradient_below_it():
    # y = w2 · GRL_λ(w1 · x): dy/dw2 = w1·x (unchanged), dy/dw1 = −λ·w2·x (reversed, scaled)
    x, lam = torch.tensor(3.0), 0.5
    w1 = torch.tensor(2.0, requires_grad=True)
    w2 = torch.tensor(-1.5, requires_grad=True)
    y = w2 * losses.grad_reverse(w1 * x, lam)
    assert y.item() == pytest.approx(-1.5 * 2.0 * 3.0)          # identity in the forward pass
    y.backward()
    assert w2.grad.item() == pytest.approx(2.0 * 3.0)
    assert w1.grad.item() == pytest.approx(-lam * -1.5 * 3.0)


def test_gradient_reversal_runs_under_vmap():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    out = torch.func.vmap(lambda a: (losses.grad_reverse(a * 3.0, 1.0) ** 2))(w)
    out.sum().backward()
    # d/dw (3w)² = 18w, reversed
    np.testing.assert_allclose(w.grad.numpy(), [-18.0, -36.0])


# --------------------------------------------------------------------------------------- framework
class TwoHead(LearnerModule):
    def __init__(self, d: int = 6):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, 16), nn.LayerNorm(16), nn.LeakyReLU())
        self.reg = nn.Linear(16, 2)
        self.cls = nn.Linear(16, 3)
        self.log_vars = nn.Parameter(torch.zeros(2))

    def outputs(self, batch):
        z = self.trunk(batch["x"])
        return {"reg": torch.sigmoid(self.reg(z)), "cls": self.cls(z)}

    def loss(self, out, batch):
        parts = torch.stack([losses.mse_sum(out["reg"], batch["y"]), losses.cross_entropy(out["cls"], batch["c"])])
        return losses.combine(parts, "uncertainty", log_vars=self.log_vars)


@pytest.fixture(scope="module")
def toy():
    g = np.random.default_rng(0)
    X = g.normal(size=(120, 6)).astype(np.float32)
    y = 1 / (1 + np.exp(-X[:, :2]))
    c = (X[:, 2] > 0.5).astype(np.int64) + (X[:, 3] > 0.5)
    data = {"x": torch.from_numpy(X), "y": torch.from_numpy(y.astype(np.float32)), "c": torch.from_numpy(c)}
    return data, np.arange(80), np.arange(80, 120)


def _fit(toy, seeds, **kw):
    data, tr, va = toy

    def evaluate(stack):
        out = stack.forward({k: v[va] for k, v in data.items()}, kw.get("vectorise", True))
        return -((out["reg"] - data["y"][va]) ** 2).mean((1, 2)).numpy()
    cfg = TrainConfig(epochs=kw.pop("epochs", 6), patience=kw.pop("patience", 2), batch_size=8, **kw)
    return train_seeds(TwoHead, shuffled_batches(data, tr, 8), evaluate, seeds, cfg)


def test_seeds_at_once_equal_one_by_one(toy):
    both = _fit(toy, [0, 1, 2])
    for j, s in enumerate([0, 1, 2]):
        one = _fit(toy, [s])
        assert one.best_epoch[0] == both.best_epoch[j]
        np.testing.assert_allclose(np.array(one.history)[:, 0], np.array(both.history)[:len(one.history), j],
                                   rtol=1e-5, atol=1e-6)
        for k, v in one.stack.params.items():
            np.testing.assert_allclose(v[0].numpy(), both.stack.params[k][j].numpy(), rtol=1e-5, atol=1e-6)


def test_vmap_equals_the_loop_over_seeds(toy):
    a = _fit(toy, [0, 1], vectorise=True)
    b = _fit(toy, [0, 1], vectorise=False)
    for k in a.stack.params:
        np.testing.assert_allclose(a.stack.params[k].numpy(), b.stack.params[k].numpy(), rtol=1e-5, atol=1e-6)


def test_restores_the_best_epoch_per_seed_and_learns(toy):
    data, tr, va = toy
    fit = _fit(toy, [0, 1], epochs=8, patience=8)
    out = predict(fit.stack, data, va)
    final = -((out["reg"] - data["y"][va].numpy()) ** 2).mean((1, 2))
    hist = np.array(fit.history)
    np.testing.assert_allclose(final, hist.max(0), rtol=1e-5)
    assert [int(np.argmax(hist[:, j])) + 1 for j in range(2)] == fit.best_epoch
    assert (hist[-1] > hist[0]).all()          # it learns


def test_restore_last_keeps_the_stopping_epoch(toy):
    fit = _fit(toy, [0], epochs=5, patience=50, restore="last")
    assert fit.best_epoch == [5] and fit.epochs_run == 5


def test_saved_stack_reloads(toy, tmp_path):
    data, _, va = toy
    fit = _fit(toy, [3, 4], epochs=2)
    torch.save(fit.stack.state_dict(), tmp_path / "m.pt")
    again = SeedStack.from_state(TwoHead, torch.load(tmp_path / "m.pt", weights_only=True))
    assert again.seeds == [3, 4]
    a, b = predict(fit.stack, data, va), predict(again, data, va)
    np.testing.assert_array_equal(a["cls"], b["cls"])
    with pytest.raises(ValueError, match="do not match the module's"):
        SeedStack.from_state(lambda: TwoHead(7).trunk, torch.load(tmp_path / "m.pt", weights_only=True))


def test_sampler_with_uneven_shapes_is_refused(toy):
    data, tr, va = toy

    def sampler(gen, epoch):
        n = 4 + int(torch.randint(0, 3, (1,), generator=gen))
        yield {k: v[:n] for k, v in data.items()}
    with pytest.raises(ValueError, match="same batch shape"):
        train_seeds(TwoHead, sampler, lambda s: np.zeros(s.n), [0, 1, 2, 3, 4], TrainConfig(epochs=1))


def test_learning_rate_schedule_known_answers(toy):
    cfg = TrainConfig(epochs=10, warmup_epochs=2.0, decay="cosine")
    assert cfg.lr_factor(0.0) == pytest.approx(1e-3)           # floored, never 0
    assert cfg.lr_factor(1.0) == pytest.approx(0.5)            # half-way through the warm-up
    assert cfg.lr_factor(2.0) == pytest.approx(1.0)            # cosine starts at 1 ...
    assert cfg.lr_factor(6.0) == pytest.approx(0.5)            # ... is ½ half-way (epoch 2 + 8/2) ...
    assert cfg.lr_factor(10.0) == pytest.approx(0.0, abs=1e-12)  # ... and 0 at the last epoch
    assert TrainConfig().lr_factor(3.7) == 1.0
    with pytest.raises(ValueError, match="unknown learning-rate decay 'step'"):
        TrainConfig(decay="step")
    # the trainer applies it per step: the optimiser ends at the schedule's value for the last step
    seen = []
    orig = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)
    torch.optim.Adam.step = spy
    try:
        _fit(toy, [0], epochs=2, patience=5, warmup_epochs=1.0, decay="cosine", lr=0.01)
    finally:
        torch.optim.Adam.step = orig
    steps = len(seen) // 2                                     # 80 rows / batch 8 = 10 steps per epoch
    assert steps == 10
    np.testing.assert_allclose(seen[:3], [0.01 * 1e-3, 0.01 * 0.1, 0.01 * 0.2], rtol=1e-6)
    np.testing.assert_allclose(seen[steps + 5], 0.01 * 0.5 * (1 + np.cos(np.pi * 0.5)), rtol=1e-6)


@pytest.mark.parametrize("vectorise", [True, False])
def test_each_model_on_its_own_rows_equals_every_model_on_all_rows(toy, vectorise):
    data, _, _ = toy
    stack = _fit(toy, [0, 1, 2]).stack
    rows = [np.arange(80, 120), np.array([5, 3, 99]), np.arange(0, 120, 7)]      # uneven lengths: padded
    each = predict_each(stack, data, rows, eval_batch=7, vectorise=vectorise)   # several steps of 2 rows per model
    for j, r in enumerate(rows):
        full = predict(stack, data, r)
        assert set(each[j]) == {"reg", "cls"} and each[j]["reg"].shape == (len(r), 2)
        for k in ("reg", "cls"):
            np.testing.assert_allclose(each[j][k], full[k][j], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one row list per model: 2 lists for 3 models"):
        predict_each(stack, data, rows[:2])
