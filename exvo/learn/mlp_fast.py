"""Optional fast path of the MLP: its gradient derived by hand with public torch ops.

Same parameters (the :class:`~exvo.learn.mlp.MultitaskMLP` names, stacked ``(S, …)``), same
trainer (:func:`exvo.learn.framework.train_seeds` with ``grad_fn``), same optimiser; only
the forward + backward of one step is written out with batched GEMMs instead of
``vmap`` + autograd, which at batch 8 spends most of its time on per-op overhead. It covers
the baseline's losses (emotions summed MSE, age MSE, country CE; uncertainty or mean
combination); any other setting trains through autograd. Tested equal to autograd
(``tests/test_learn.py``); enable with ``--opt fast_path=true``.

Per seed, with ``B`` clips, slope ``α`` = 0.01 and ``ρ(v) = 1 if v > 0 else α``::

    z1 = x W1ᵀ + b1      n1 = LN(z1)   y1 = γ1 n1 + β1   a1 = lrelu(y1)     (same for layer 2)
    head h: u = a2 Vhᵀ + ch   g = lrelu(u)   o = g Uhᵀ + dh
    dL/do: emotions 2(σ(o) − y)σ'(o)/B · w_e, country (softmax(o) − onehot)/B · w_c,
           age 2(o − y)/B · w_a, with w = ½e^(−s) (uncertainty) or ⅓ (mean)
    LayerNorm backward: dz = r (dn − mean(dn) − n · mean(dn · n)),  dn = γ · dy,  r = 1/σ
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from exvo.learn.mlp import LN_EPS
from exvo.learn.multitask import LossConfig

SLOPE = 0.01


def supports(loss: LossConfig) -> bool:
    return loss.emotions == "mse" and loss.age == "mse" and loss.combine in ("uncertainty", "mean")


def _lin(x, W, b):
    return torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2))


def _ln(z):
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    r = torch.rsqrt((zc * zc).mean(-1, keepdim=True) + LN_EPS)
    return zc * r, r


def _ln_back(dy, n, r, g):
    dn = dy * g.unsqueeze(1)
    return r * (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True))


def _rho(v):
    return torch.where(v > 0, 1.0, SLOPE)


def make_grad_fn(loss: LossConfig):
    """``grad_fn(params, batch) -> (S,)`` for :func:`exvo.learn.framework.train_seeds`."""
    if not supports(loss):
        raise ValueError(f"the MLP fast path covers emotions mse, age mse, uncertainty|mean; got {loss}")
    uncertainty = loss.combine == "uncertainty"

    def grad_fn(p: dict[str, torch.Tensor], batch) -> torch.Tensor:
        x, ye, yc, ya = batch["x"], batch["emotions"], batch["country"], batch["age"]
        S, B = x.shape[0], x.shape[1]
        z1 = _lin(x, p["trunk.0.weight"], p["trunk.0.bias"])
        n1, r1 = _ln(z1)
        y1 = torch.addcmul(p["trunk.1.bias"].unsqueeze(1), n1, p["trunk.1.weight"].unsqueeze(1))
        a1 = F.leaky_relu(y1, SLOPE)
        z2 = _lin(a1, p["trunk.3.weight"], p["trunk.3.bias"])
        n2, r2 = _ln(z2)
        y2 = torch.addcmul(p["trunk.4.bias"].unsqueeze(1), n2, p["trunk.4.weight"].unsqueeze(1))
        a2 = F.leaky_relu(y2, SLOPE)
        us, gs, outs = [], [], []
        for h in range(3):
            u = _lin(a2, p[f"heads.{h}.0.weight"], p[f"heads.{h}.0.bias"])
            g = F.leaky_relu(u, SLOPE)
            us.append(u); gs.append(g); outs.append(_lin(g, p[f"heads.{h}.2.weight"], p[f"heads.{h}.2.bias"]))
        emo = torch.sigmoid(outs[0])
        logp = torch.log_softmax(outs[1], -1)
        age = outs[2][..., 0]
        onehot = F.one_hot(yc, logp.shape[-1]).to(x.dtype)
        L = torch.stack([((emo - ye) ** 2).mean(1).sum(-1), -(logp * onehot).sum(-1).mean(1),
                         ((age - ya) ** 2).mean(1)], 1)                                   # (S, 3)
        s = p["log_vars"]
        if uncertainty:
            w = 0.5 * torch.exp(-s)
            total = (w * L + 0.5 * s).sum(1)
            s.grad = 0.5 - w * L
        else:
            w = torch.full_like(L, 1.0 / 3.0)
            total = L.mean(1)
            s.grad = None
        d = [(2.0 / B) * (emo - ye) * emo * (1 - emo) * w[:, 0, None, None],
             (torch.exp(logp) - onehot) / B * w[:, 1, None, None],
             ((2.0 / B) * (age - ya) * w[:, 2, None]).unsqueeze(-1)]
        da2 = torch.zeros_like(a2)
        for h in range(3):
            p[f"heads.{h}.2.weight"].grad = torch.bmm(d[h].transpose(1, 2), gs[h])
            p[f"heads.{h}.2.bias"].grad = d[h].sum(1)
            du = torch.bmm(d[h], p[f"heads.{h}.2.weight"]) * _rho(us[h])
            p[f"heads.{h}.0.weight"].grad = torch.bmm(du.transpose(1, 2), a2)
            p[f"heads.{h}.0.bias"].grad = du.sum(1)
            da2.baddbmm_(du, p[f"heads.{h}.0.weight"])
        dy2 = da2 * _rho(y2)
        p["trunk.4.weight"].grad = (dy2 * n2).sum(1)
        p["trunk.4.bias"].grad = dy2.sum(1)
        dz2 = _ln_back(dy2, n2, r2, p["trunk.4.weight"])
        p["trunk.3.weight"].grad = torch.bmm(dz2.transpose(1, 2), a1)
        p["trunk.3.bias"].grad = dz2.sum(1)
        dy1 = torch.bmm(dz2, p["trunk.3.weight"]) * _rho(y1)
        p["trunk.1.weight"].grad = (dy1 * n1).sum(1)
        p["trunk.1.bias"].grad = dy1.sum(1)
        dz1 = _ln_back(dy1, n1, r1, p["trunk.1.weight"])
        p["trunk.0.weight"].grad = torch.bmm(dz1.transpose(1, 2), x)
        p["trunk.0.bias"].grad = dz1.sum(1)
        return total

    return grad_fn
