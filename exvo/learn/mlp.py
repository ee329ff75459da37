"""The ExVo multitask MLP, with every seed trained at once.

Network (the official ExVo 2022 baseline, ``HumeAI/competitions`` ExVo-MultiTask ``models.py``)::

    trunk   Linear(D, h1) → LayerNorm → LeakyReLU → Linear(h1, h2) → LayerNorm → LeakyReLU
    heads   emotion  Linear(h2, hh) → LeakyReLU → Linear(hh, 10) → sigmoid
            country  Linear(h2, hh) → LeakyReLU → Linear(hh, 4)    (logits)
            age      Linear(h2, hh) → LeakyReLU → Linear(hh, 1)    (standardised years)

``sys1`` is (h1, h2, hh) = (128, 64, 32), the baseline; ``sys2`` doubles it: (256, 128, 64).

Loss (per batch of B clips, as the baseline's ``train.py``)::

    L_emo = Σ_j mean_b (ŷ_bj − y_bj)²      the 10 per-emotion MSEs, summed
    L_cou = mean_b CE(logits_b, country_b)
    L_age = mean_b (â_b − a_b)²            (B,) vs (B,) on standardised age; the baseline
                                           compares (B, 1) with (B,), which broadcasts to (B, B)
    uncertainty:  Σ_i ½ exp(−s_i) L_i + ½ s_i   with learned s (= log σ²) initialised to −0.33,
                  exactly the baseline's ``1/(2 exp(logsigma)) L + logsigma/2`` (Kendall et al. 2018)
    mean:         (L_emo + L_cou + L_age) / 3

Optimiser: Adam, lr 1e-3, L2 weight decay 1e-4 on every parameter (as the baseline's
``torch.optim.Adam(..., weight_decay=0.0001)``), batch 8, up to 20 epochs. Early stopping
(patience 5) on the Val *selection score* (S_MTL with CCC/UAR floored at 1e-3, see
``targets.selection_score``), and the best epoch's weights are restored — the baseline
monitors the weighted Val loss and keeps the last epoch.

Seeds. Seed ``k`` draws its initial weights from ``torch.Generator().manual_seed(2k)`` and
its batch order from ``manual_seed(2k + 1)`` (one ``randperm`` per epoch). All S seeds
live in one set of tensors with a leading seed dimension, ``(S, ...)``, inside one flat
buffer; forward and backward are written out by hand with ``torch.bmm`` (no autograd
graph per step) and one fused Adam step updates every seed. Seeds never interact (Adam is
elementwise), so training S seeds together equals training them one by one; each seed
keeps its own best-epoch snapshot and stops counting when its patience runs out (the
loop ends once every seed has stopped).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from exvo.device import resolve_device
from exvo.learn.targets import N_COUNTRIES, selection_score

ARCHS = {"sys1": (128, 64, 32), "sys2": (256, 128, 64)}
N_EMO = 10
HEADS = (("emo", N_EMO), ("cou", N_COUNTRIES), ("age", 1))
SLOPE = 0.01        # LeakyReLU default
LN_EPS = 1e-5       # LayerNorm default
S_INIT = -0.33      # the baseline's initial log-variances
LOSSES = ("uncertainty", "mean")


@dataclass
class MLPConfig:
    """Training settings. ``eval_batch``: rows per chunk when predicting (memory bound only)."""

    arch: str = "sys2"
    loss: str = "uncertainty"
    epochs: int = 20
    patience: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    eval_batch: int = 4096
    threads: int = 0      # CPU threads for the training steps; 0 = torch's default (all cores)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown MLP arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        for k in ("epochs", "patience", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


def param_shapes(dim: int, arch: str) -> dict[str, tuple[int, ...]]:
    """Per-seed parameter shapes; weights are stored (in, out). Order = flat-buffer order."""
    h1, h2, hh = ARCHS[arch]
    shapes = {"w1": (dim, h1), "b1": (h1,), "g1": (h1,), "e1": (h1,),
              "w2": (h1, h2), "b2": (h2,), "g2": (h2,), "e2": (h2,),
              # the three heads' first layers side by side: columns [emo | cou | age]
              "hw": (h2, 3 * hh), "hb": (3 * hh,)}
    for name, k in HEADS:
        shapes[f"{name}_w"] = (hh, k)
        shapes[f"{name}_b"] = (k,)
    shapes["s"] = (3,)
    return shapes


def init_seed(dim: int, arch: str, seed: int) -> dict[str, torch.Tensor]:
    """Initial weights of one seed (nn.Linear's default U(±1/√fan_in), LayerNorm 1/0, s = −0.33)."""
    g = torch.Generator().manual_seed(2 * int(seed))
    h1, h2, hh = ARCHS[arch]

    def u(shape, fan_in):
        b = 1.0 / math.sqrt(fan_in)
        return torch.rand(shape, generator=g, dtype=torch.float32) * (2 * b) - b

    p = {"w1": u((dim, h1), dim), "b1": u((h1,), dim), "g1": torch.ones(h1), "e1": torch.zeros(h1),
         "w2": u((h1, h2), h1), "b2": u((h2,), h1), "g2": torch.ones(h2), "e2": torch.zeros(h2)}
    hw, hb = [], []
    for _ in HEADS:
        hw.append(u((h2, hh), h2)); hb.append(u((hh,), h2))
    p["hw"], p["hb"] = torch.cat(hw, 1), torch.cat(hb)
    for name, k in HEADS:
        p[f"{name}_w"] = u((hh, k), hh)
        p[f"{name}_b"] = u((k,), hh)
    p["s"] = torch.full((3,), S_INIT)
    return p


class SeedStack:
    """Parameters of S seeds: one flat buffer, named ``(S, *shape)`` views into it."""

    def __init__(self, dim: int, arch: str, n_seeds: int, device="cpu"):
        self.dim, self.arch, self.S = dim, arch, n_seeds
        self.shapes = param_shapes(dim, arch)
        sizes = {k: n_seeds * math.prod(s) for k, s in self.shapes.items()}
        self.flat = torch.zeros(sum(sizes.values()), device=device)
        self.p = self._views(self.flat)

    def _views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        out, off = {}, 0
        for k, s in self.shapes.items():
            n = self.S * math.prod(s)
            out[k] = buf[off:off + n].view(self.S, *s)
            off += n
        return out

    @classmethod
    def from_seeds(cls, dim: int, arch: str, seeds, device="cpu") -> "SeedStack":
        st = cls(dim, arch, len(seeds), device)
        for j, sd in enumerate(seeds):
            for k, v in init_seed(dim, arch, sd).items():
                st.p[k][j].copy_(v)
        return st

    def state_dict(self) -> dict:
        return {"dim": self.dim, "arch": self.arch, "S": self.S, "flat": self.flat.detach().cpu().clone()}

    @classmethod
    def from_state(cls, state: dict, device="cpu") -> "SeedStack":
        st = cls(int(state["dim"]), state["arch"], int(state["S"]), device)
        st.flat.copy_(state["flat"].to(device))
        return st

    def seed(self, j: int) -> dict[str, torch.Tensor]:
        return {k: v[j] for k, v in self.p.items()}


def _ln(z: torch.Tensor, g: torch.Tensor, e: torch.Tensor):
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    r = torch.rsqrt((zc * zc).mean(-1, keepdim=True) + LN_EPS)
    n = zc * r
    return torch.addcmul(e.unsqueeze(1), n, g.unsqueeze(1)), n, r


def _lrelu(y):
    return torch.nn.functional.leaky_relu(y, SLOPE)


def forward(p: dict[str, torch.Tensor], x: torch.Tensor, z1: torch.Tensor | None = None, keep: bool = False):
    """``x`` ``(S, B, D)`` (or precomputed ``z1`` ``(S, B, h1)``) → emotions ``(S,B,10)`` in [0,1],
    country logits ``(S,B,4)``, standardised age ``(S,B)``; with ``keep`` also the activations."""
    if z1 is None:
        z1 = torch.baddbmm(p["b1"].unsqueeze(1), x, p["w1"])
    y1, n1, r1 = _ln(z1, p["g1"], p["e1"])
    a1 = _lrelu(y1)
    y2, n2, r2 = _ln(torch.baddbmm(p["b2"].unsqueeze(1), a1, p["w2"]), p["g2"], p["e2"])
    a2 = _lrelu(y2)
    u = torch.baddbmm(p["hb"].unsqueeze(1), a2, p["hw"])
    h = _lrelu(u)
    hh = h.shape[-1] // 3
    outs = [torch.baddbmm(p[f"{name}_b"].unsqueeze(1), h[..., j * hh:(j + 1) * hh], p[f"{name}_w"])
            for j, (name, _) in enumerate(HEADS)]
    emo = torch.sigmoid(outs[0])
    res = (emo, outs[1], outs[2][..., 0])
    if keep:
        return res, dict(y1=y1, n1=n1, r1=r1, a1=a1, y2=y2, n2=n2, r2=r2, a2=a2, u=u, h=h)
    return res


# the kernel autograd uses for LeakyReLU's backward: dy where y > 0, else SLOPE * dy
_LRELU_BACK = torch.ops.aten.leaky_relu_backward.default
_LN_BACK = torch.ops.aten.native_layer_norm_backward.default
# columns of the packed labels / outputs / output gradients of one clip:
# [10 emotions | 4 countries (one-hot label, probabilities out) | standardised age]
_EMO, _COU, _AGE = slice(0, N_EMO), slice(N_EMO, N_EMO + N_COUNTRIES), N_EMO + N_COUNTRIES
N_PACK = N_EMO + N_COUNTRIES + 1


def pack_labels(ye: torch.Tensor, yc: torch.Tensor, ya: torch.Tensor) -> torch.Tensor:
    """``(..., 10)`` emotions, ``(...)`` int64 country, ``(...)`` age → ``(..., 15)`` float32
    ``[emotions | country one-hot | age]``, the label layout :func:`loss_and_grad` works in."""
    oh = torch.nn.functional.one_hot(yc.long(), N_COUNTRIES).to(ye.dtype)
    return torch.cat([ye, oh, ya.unsqueeze(-1).to(ye.dtype)], -1)


class _StepCache:
    """Views, buffers and constants of :func:`loss_and_grad` for one :class:`SeedStack`.

    A training step at batch 8 costs little arithmetic but ~100 small torch calls; building
    the views (unsqueeze/transpose/slice), the block-diagonal head matrix and the constant
    loss matrices once removes most of that per-call overhead. The three heads' second
    layers run as one GEMM with a block-diagonal ``(S, 3hh, 15)`` matrix whose off-diagonal
    zeros add exact zeros, so the outputs equal the three separate products."""

    def __init__(self, st: SeedStack):
        p, S = st.p, st.S
        hh = ARCHS[st.arch][2]
        self.flat = st.flat
        kw = dict(dtype=st.flat.dtype, device=st.flat.device)
        self.u = {k: p[k].unsqueeze(1) for k in ("b1", "g1", "e1", "b2", "g2", "e2", "hb")}
        self.w2T, self.hwT = p["w2"].transpose(1, 2), p["hw"].transpose(1, 2)
        self.h1, self.h2 = [p["g1"].shape[-1]], [p["g2"].shape[-1]]
        self.W = torch.zeros(S, 3 * hh, N_PACK, **kw)      # block-diagonal head layer
        self.b = torch.zeros(S, 1, N_PACK, **kw)
        self.WT = self.W.transpose(1, 2)
        self.dW = torch.zeros(S, 3 * hh, N_PACK, **kw)
        self.db = torch.zeros(S, N_PACK, **kw)
        self.blocks, c0 = [], 0
        for j, (name, k) in enumerate(HEADS):
            rows, cols = slice(j * hh, (j + 1) * hh), slice(c0, c0 + k)
            self.blocks.append((f"{name}_w", f"{name}_b", self.W[:, rows, cols], self.b[:, 0, cols],
                                self.dW[:, rows, cols], self.db[:, cols]))
            c0 += k
        self.per_batch: dict = {}

    def batch(self, S: int, B: int, loss: str):
        """Buffers and constants for batches of ``B`` clips (the last batch may be shorter)."""
        key = (B, loss)
        if key not in self.per_batch:
            kw = dict(dtype=self.flat.dtype, device=self.flat.device)
            O = torch.zeros(S, B, N_PACK, **kw)
            R = torch.zeros(S, B, N_PACK, **kw)
            Q = torch.zeros(S, B, N_PACK, **kw)
            d = torch.zeros(S, B, N_PACK, **kw)
            # L (S, 3) = Q.view(S, B*15) @ M: the batch means of the squared emotion/age
            # errors and of −log p(label) (stored in Q's country columns)
            M = torch.zeros(B, N_PACK, 3, **kw)
            M[:, _EMO, 0], M[:, _COU, 1], M[:, _AGE, 2] = 1.0 / B, -1.0 / B, 1.0 / B
            # dLoss/d(output) = (output − label) * (w @ Mc) [* σ' for the emotions]
            Mc = torch.zeros(3, N_PACK, **kw)
            Mc[0, _EMO], Mc[1, _COU], Mc[2, _AGE] = 2.0 / B, 1.0 / B, 2.0 / B
            wmean = torch.full((S, 3), 1.0 / 3.0, **kw)
            half = torch.full((S, 3), 0.5, **kw)
            self.per_batch[key] = dict(O=O, O_emo=O[..., _EMO], O_cou=O[..., _COU], R=R, Q=Q,
                                       Q_cou=Q[..., _COU], d=d, d_emo=d[..., _EMO],
                                       M=M.view(B * N_PACK, 3), Mc=Mc, wmean=wmean, half=half)
        return self.per_batch[key]


def _step_cache(st: SeedStack) -> _StepCache:
    c = getattr(st, "_step_cache", None)
    if c is None or c.flat is not st.flat:
        c = st._step_cache = _StepCache(st)
    return c


def loss_and_grad(st: SeedStack, grad: dict[str, torch.Tensor], x, ye, yc, ya, loss: str) -> torch.Tensor:
    """Fill ``grad`` (views shaped like ``st.p``) with d(combined loss)/d(params) of every seed.

    ``x`` ``(S, B, D)``, ``ye`` ``(S, B, 10)``, ``yc`` ``(S, B)`` int64, ``ya`` ``(S, B)``.
    Returns the per-seed combined loss ``(S,)``. Hand-written backward of :func:`forward`.
    """
    return loss_and_grad_packed(st, grad, x, pack_labels(ye, yc, ya), loss)


def loss_and_grad_packed(st: SeedStack, grad: dict[str, torch.Tensor], x: torch.Tensor, Y: torch.Tensor,
                         loss: str) -> torch.Tensor:
    """:func:`loss_and_grad` with the labels packed by :func:`pack_labels`: ``Y`` ``(S, B, 15)``."""
    p, c = st.p, _step_cache(st)
    S, B = x.shape[0], x.shape[1]
    k = c.batch(S, B, loss)
    u = c.u
    for wk, bk, Wv, bv, _, _ in c.blocks:
        Wv.copy_(p[wk])
        bv.copy_(p[bk])
    # forward; LayerNorm without affine by the native kernel, then each seed's γ, β
    z1 = torch.baddbmm(u["b1"], x, p["w1"])
    n1, mu1, r1 = torch.native_layer_norm(z1, c.h1, None, None, LN_EPS)
    y1 = torch.addcmul(u["e1"], n1, u["g1"])
    a1 = torch._C._nn.leaky_relu(y1, SLOPE)
    z2 = torch.baddbmm(u["b2"], a1, p["w2"])
    n2, mu2, r2 = torch.native_layer_norm(z2, c.h2, None, None, LN_EPS)
    y2 = torch.addcmul(u["e2"], n2, u["g2"])
    a2 = torch._C._nn.leaky_relu(y2, SLOPE)
    hu = torch.baddbmm(u["hb"], a2, p["hw"])
    h = torch._C._nn.leaky_relu(hu, SLOPE)
    O = torch.baddbmm(c.b, h, c.W, out=k["O"])          # [emotion logits | country logits | age]
    logp = torch.log_softmax(k["O_cou"], -1)
    k["O_emo"].sigmoid_()
    torch.exp(logp, out=k["O_cou"])                     # O = [emotions | probabilities | age]
    # losses (S, 3): squared errors of emotions and age, −log p(label) for the country
    R = torch.sub(O, Y, out=k["R"])
    Q = torch.mul(R, R, out=k["Q"])
    torch.mul(logp, Y.narrow(-1, N_EMO, N_COUNTRIES), out=k["Q_cou"])
    L = torch.mm(Q.view(S, -1), k["M"])
    s = p["s"]
    if loss == "uncertainty":
        w = torch.exp(-s).mul_(0.5)
        wL = w * L
        torch.sub(k["half"], wL, out=grad["s"])
        total = torch.add(wL, s, alpha=0.5).sum(1)
    else:
        w = k["wmean"]
        total = (w * L).sum(1)
        grad["s"].zero_()
    # backward: d (S, B, 15) = dLoss/d(head outputs before sigmoid/softmax)
    d = torch.mul(R, torch.mm(w, k["Mc"]).unsqueeze(1), out=k["d"])
    k["d_emo"].mul_(torch.addcmul(k["O_emo"], k["O_emo"], k["O_emo"], value=-1.0))   # σ' = σ − σ²
    torch.bmm(h.transpose(1, 2), d, out=c.dW)
    torch.sum(d, 1, out=c.db)
    for wk, bk, _, _, dWv, dbv in c.blocks:
        grad[wk].copy_(dWv)
        grad[bk].copy_(dbv)
    du = _LRELU_BACK(torch.bmm(d, c.WT), hu, SLOPE, False)
    torch.bmm(a2.transpose(1, 2), du, out=grad["hw"])
    torch.sum(du, 1, out=grad["hb"])
    dy2 = _LRELU_BACK(torch.bmm(du, c.hwT), y2, SLOPE, False)
    torch.sum(dy2 * n2, 1, out=grad["g2"])
    torch.sum(dy2, 1, out=grad["e2"])
    dz2 = _LN_BACK(dy2 * u["g2"], z2, c.h2, mu2, r2, None, None, [True, False, False])[0]
    torch.bmm(a1.transpose(1, 2), dz2, out=grad["w2"])
    torch.sum(dz2, 1, out=grad["b2"])
    dy1 = _LRELU_BACK(torch.bmm(dz2, c.w2T), y1, SLOPE, False)
    torch.sum(dy1 * n1, 1, out=grad["g1"])
    torch.sum(dy1, 1, out=grad["e1"])
    dz1 = _LN_BACK(dy1 * u["g1"], z1, c.h1, mu1, r1, None, None, [True, False, False])[0]
    torch.bmm(x.transpose(1, 2), dz1, out=grad["w1"])
    torch.sum(dz1, 1, out=grad["b1"])
    return total


@torch.no_grad()
def predict(st: SeedStack, X: torch.Tensor, rows: torch.Tensor | np.ndarray, eval_batch: int = 4096):
    """Every seed's outputs for ``X[rows]``: emotions ``(S,n,10)``, country probabilities
    ``(S,n,4)``, standardised age ``(S,n)`` (float32 numpy). Rows are read in chunks; the
    first layer of all seeds is one GEMM ``(chunk, D) @ (D, S*h1)``."""
    p = st.p
    S, D, h1 = p["w1"].shape
    w1cat = p["w1"].permute(1, 0, 2).reshape(D, S * h1)
    b1cat = p["b1"].reshape(S * h1)
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    emo, pro, age = [], [], []
    for k in range(0, len(rows), eval_batch):
        x = X[rows[k:k + eval_batch].to(X.device)]
        z1 = torch.addmm(b1cat, x, w1cat).view(-1, S, h1).transpose(0, 1)
        e, c, a = forward(p, None, z1=z1)
        emo.append(e); pro.append(torch.softmax(c, -1)); age.append(a)
    cat = lambda xs, shape: (torch.cat(xs, 1) if xs else torch.zeros(shape)).cpu().numpy()
    return cat(emo, (S, 0, N_EMO)), cat(pro, (S, 0, N_COUNTRIES)), cat(age, (S, 0))


@dataclass
class MLPFit:
    """Result of :func:`train_mlp`. ``history[e]`` = per-seed Val selection score after epoch e+1."""

    stack: SeedStack
    seeds: list[int]
    best_epoch: list[int]
    best_score: list[float]
    history: list[list[float]] = field(default_factory=list)
    train_loss: list[list[float]] = field(default_factory=list)
    epochs_run: int = 0
    seconds_per_epoch: list[float] = field(default_factory=list)       # wall clock
    cpu_seconds_per_epoch: list[float] = field(default_factory=list)   # process CPU time


def train_mlp(X: np.ndarray | torch.Tensor, train_rows: np.ndarray, val_rows: np.ndarray,
              emotions: np.ndarray, country: np.ndarray, age_z: np.ndarray, age_mean: float, age_std: float,
              seeds, cfg: MLPConfig, device: str = "cpu", echo: Callable[[str], None] | None = None,
              progress: bool = False) -> MLPFit:
    """Train one model per seed on ``X[train_rows]``, early-stopping on ``X[val_rows]``.

    ``X`` ``(n, D)`` float32 (not copied: the tensor shares its memory); labels are indexed
    by the same rows: ``emotions`` ``(n, 10)``, ``country`` ``(n,)``, ``age_z`` ``(n,)``
    standardised with ``age_mean``/``age_std`` (years). Returns the best-epoch weights.
    """
    from tqdm import tqdm

    dev = torch.device(resolve_device(device))
    seeds = [int(s) for s in seeds]
    S = len(seeds)
    Xt = torch.from_numpy(X) if isinstance(X, np.ndarray) else X
    Xt = Xt.to(dev)
    E = torch.as_tensor(np.nan_to_num(emotions), dtype=torch.float32, device=dev)
    C = torch.as_tensor(np.where(country < 0, 0, country), dtype=torch.long, device=dev)
    A = torch.as_tensor(np.nan_to_num(age_z), dtype=torch.float32, device=dev)
    Y = pack_labels(E, C, A)                                # (n, 15): one gather per step for all labels
    tr = torch.as_tensor(train_rows, dtype=torch.long, device=dev)
    D = Xt.shape[1]
    st = SeedStack.from_seeds(D, cfg.arch, seeds, dev)
    gflat = torch.zeros_like(st.flat)
    grad = st._views(gflat)
    opt = torch.optim.Adam([st.flat], lr=cfg.lr, weight_decay=cfg.weight_decay,
                           **({"fused": True} if _fused_ok(dev) else {}))
    st.flat.grad = gflat
    step = _adam_step(opt, st.flat)
    best = st.flat.detach().clone()
    best_views = st._views(best)
    gens = [torch.Generator().manual_seed(2 * s + 1) for s in seeds]
    val_e, val_c, val_a = emotions[val_rows], country[val_rows], age_z[val_rows] * age_std + age_mean
    fit = MLPFit(st, seeds, [0] * S, [-math.inf] * S)
    bad = [0] * S
    n, B = len(train_rows), cfg.batch_size
    threads = torch.get_num_threads()
    for epoch in range(cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)
        order = tr[perm]                                        # (S, n) rows of X
        losses = torch.zeros(S, device=dev)
        # measured on a quiet 2-core machine: 2 threads make a 5-seed Sys-2 step 1.5x faster
        # (the fused Adam pass over all seeds' weights splits well); on a CPU shared with
        # other jobs OpenMP spin-waits can stall, so the thread count is a setting
        if dev.type == "cpu" and cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        try:
            with torch.no_grad():
                for k in tqdm(range(0, n, B), disable=not progress, desc=f"epoch {epoch + 1}", leave=False):
                    r = order[:, k:k + B]
                    losses.add_(loss_and_grad_packed(st, grad, Xt[r], Y[r], cfg.loss), alpha=r.shape[1])
                    step()
        finally:
            torch.set_num_threads(threads)
        emo, pro, age = predict(st, Xt, val_rows, cfg.eval_batch)
        scores = [selection_score(val_e, emo[j], val_c, pro[j].argmax(1), val_a, age[j] * age_std + age_mean)
                  for j in range(S)]
        improved = [j for j in range(S) if bad[j] < cfg.patience and scores[j] > fit.best_score[j]]
        for j in range(S):
            if j in improved:
                fit.best_score[j], fit.best_epoch[j], bad[j] = scores[j], epoch + 1, 0
                for k, v in st.p.items():
                    best_views[k][j].copy_(v[j])
            elif bad[j] < cfg.patience:
                bad[j] += 1
        fit.history.append(scores)
        fit.train_loss.append((losses / n).tolist())
        fit.epochs_run = epoch + 1
        fit.seconds_per_epoch.append(time.perf_counter() - t0)
        fit.cpu_seconds_per_epoch.append(time.process_time() - c0)
        if echo:
            echo(f"  epoch {epoch + 1:2d}: Val score " + " ".join(f"{s:.3f}" for s in scores)
                 + f"  ({fit.seconds_per_epoch[-1]:.1f} s)")
        if all(b >= cfg.patience for b in bad):
            break
    st.flat.grad = None
    with torch.no_grad():
        st.flat.copy_(best)
    return fit


def _adam_step(opt: torch.optim.Adam, param: torch.Tensor) -> Callable[[], None]:
    """``opt.step`` for one fused Adam over one flat tensor, minus the ~0.2 ms of Python
    bookkeeping ``Optimizer.step`` spends per call (a 5-seed Sys-2 step is ~3 ms).

    The first call goes through ``opt.step()`` (which creates the state); later calls do what
    torch's ``_fused_adam`` does for a single tensor: step += 1, then ``torch._fused_adam_``
    with the group's settings, on the same state tensors, so ``opt`` stays consistent. Falls
    back to ``opt.step`` when the optimizer is not fused or the kernel is missing."""
    group = opt.param_groups[0]
    kernel = getattr(torch, "_fused_adam_", None)
    if (not group.get("fused") or kernel is None or len(opt.param_groups) != 1
            or len(group["params"]) != 1 or group["params"][0] is not param
            or group["amsgrad"] or group.get("decoupled_weight_decay") or group.get("differentiable")
            or group.get("capturable") or isinstance(group["lr"], torch.Tensor)):
        return opt.step

    use_kernel = True

    def step():
        nonlocal use_kernel
        state = opt.state.get(param)
        if not state or not use_kernel:
            opt.step()
            return
        state["step"] += 1
        try:
            kernel([param], [param.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
                   amsgrad=False, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                   weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])
        except TypeError:
            # a torch whose private kernel takes other arguments (raised before any update):
            # undo the count and stay on the public path from now on
            state["step"] -= 1
            use_kernel = False
            opt.step()

    return step


def _fused_ok(dev: torch.device) -> bool:
    # fused Adam exists on CPU since torch 2.4; older torches fall back to the default
    try:
        torch.optim.Adam([torch.zeros(1, device=dev, requires_grad=True)], fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False
