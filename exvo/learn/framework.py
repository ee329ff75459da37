"""The stage-2 learner framework: any ``nn.Module`` + its loss, S seeds trained at once with autograd.

A learner is

* a :class:`LearnerModule`: ``outputs(batch)`` takes a dict of tensors for ONE seed
  (``{"x": (B, D), ...}``) and returns a dict of output tensors (``(B, ...)``), and
  ``loss(outputs, batch)`` returns that seed's scalar training loss (learned loss weights are
  module parameters, so they train like any other and the loss sees them as ``self.…``);
* a module factory ``make() -> LearnerModule``;
* a selection score ``select(outputs, rows) -> float`` (higher is better) computed on the
  selection rows after each epoch, for early stopping and best-epoch restore.

:func:`train_seeds` builds one module per seed (seed ``k``'s initial weights drawn under
``torch.manual_seed(2k)``, its batch order from ``torch.Generator().manual_seed(2k + 1)``),
stacks their parameters along a leading seed dimension (``torch.func.stack_module_state``)
and trains them with one public optimiser. The forward + loss of all seeds runs as one
``torch.func.vmap(functional_call)`` (``vectorise=True``) or as a loop over seeds
(``vectorise=False``, for modules ``vmap`` cannot run, e.g. ``nn.GRU``). Adam and AdamW are
elementwise and seeds never share a term of the summed loss, so training S seeds together
equals training them one by one (tested). Each seed keeps its own best-epoch snapshot and
patience counter; the loop ends when every seed has stopped. A stopped seed's snapshot is
final, whatever the others still do.

Nothing here is written by hand for the backward pass: a new learner is one module and its
loss terms (see ``docs/learners.md``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from exvo.config import TrainConfig

Batch = dict[str, torch.Tensor]
Sampler = Callable[[torch.Generator, int], Iterator[Batch]]




def init_seed(seed: int) -> int:
    return 2 * int(seed)


def order_seed(seed: int) -> int:
    return 2 * int(seed) + 1


class LearnerModule(nn.Module):
    """Base class of stage-2 models: implement ``outputs`` and ``loss``; never a backward."""

    def outputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch, train_loss: bool = False):
        out = self.outputs(batch)
        return self.loss(out, batch) if train_loss else out


class SeedStack:
    """S copies of one module: ``params``/``buffers`` are ``{name: (S, *shape)}`` tensors.

    ``base`` is a weightless (``meta``) copy of the module that ``functional_call`` runs with
    one seed's slice of the stacked tensors.
    """

    def __init__(self, base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 seeds: list[int]):
        self.base, self.params, self.buffers, self.seeds = base, params, buffers, list(seeds)

    @classmethod
    def build(cls, make: Callable[[], nn.Module], seeds: list[int], device: str | torch.device = "cpu") -> "SeedStack":
        mods = []
        for s in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed(s))
                mods.append(make().to(device))
        params, buffers = stack_module_state(mods)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        base = copy.deepcopy(mods[0]).to("meta")
        return cls(base, params, buffers, seeds)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def one(self, j: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return {k: v[j] for k, v in self.params.items()}, {k: v[j] for k, v in self.buffers.items()}

    def run(self, fn: Callable[[dict, dict, Batch], object], batch: Batch, vectorise: bool, stacked_batch: bool = True):
        """Apply ``fn(params_j, buffers_j, batch_j)`` for every seed j; outputs stacked along dim 0.

        ``stacked_batch``: the batch tensors carry a leading seed dimension; otherwise every seed
        sees the same batch.
        """
        if vectorise:
            in_b = 0 if stacked_batch else None
            return vmap(fn, in_dims=(0, 0, in_b), randomness="different")(self.params, self.buffers, batch)
        outs = [fn(*self.one(j), {k: v[j] for k, v in batch.items()} if stacked_batch else batch)
                for j in range(self.n)]
        if isinstance(outs[0], dict):
            return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}
        return torch.stack(outs)

    def forward(self, batch: Batch, vectorise: bool = True, stacked_batch: bool = False) -> dict[str, torch.Tensor]:
        """Outputs of every seed: ``{name: (S, B, ...)}``."""
        def fn(p, b, x):
            return functional_call(self.base, (p, b), (x,))
        return self.run(fn, batch, vectorise, stacked_batch)

    def state_dict(self) -> dict:
        return {"seeds": self.seeds,
                "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "buffers": {k: v.detach().cpu() for k, v in self.buffers.items()}}

    @classmethod
    def from_state(cls, make: Callable[[], nn.Module], state: dict, device: str | torch.device = "cpu") -> "SeedStack":
        base = make().to("meta")
        want = {k for k, _ in base.named_parameters()}
        if want != set(state["params"]):
            raise ValueError(f"saved parameters {sorted(state['params'])} do not match the module's {sorted(want)}; "
                             "was the run saved with other learner settings?")
        return cls(base, {k: v.to(device) for k, v in state["params"].items()},
                   {k: v.to(device) for k, v in state["buffers"].items()}, state["seeds"])


def shuffled_batches(data: Batch, rows: np.ndarray, batch_size: int) -> Sampler:
    """The default sampler: one ``randperm`` of ``rows`` per epoch, consecutive batches of ``batch_size``.

    The returned sampler has ``steps_per_epoch`` (used by per-step learning-rate schedules).
    """
    rows_t = torch.as_tensor(rows, dtype=torch.long)

    def sample(gen: torch.Generator, epoch: int) -> Iterator[Batch]:
        perm = rows_t[torch.randperm(rows_t.numel(), generator=gen)]
        for i in range(0, perm.numel(), batch_size):
            idx = perm[i:i + batch_size]
            yield {k: v[idx] for k, v in data.items()}
    sample.steps_per_epoch = -(-rows_t.numel() // int(batch_size))
    return sample


def fold_batches(data: Batch, rows: list[np.ndarray], batch_size: int, steps: int | None = None) -> Sampler:
    """A per-model sampler for models trained on different rows (``rows[j]``: model j's fit rows):
    every epoch a fresh ``randperm`` of model j's rows, of which the first ``steps × batch_size``
    form ``steps`` full batches — by default as many as the smallest row set fills — so that
    every model's batch has the same shape at every step (what stacking needs). Rows left out
    differ from epoch to epoch. A model trained alone with ``rows=[its rows]`` and the stack's
    ``steps`` draws the same batches as in the stack."""
    rows_t = [torch.as_tensor(r, dtype=torch.long) for r in rows]
    smallest = min(r.numel() for r in rows_t)
    if smallest < 1:
        raise ValueError("a fold has no rows to fit on")
    bs = min(int(batch_size), smallest)
    steps = smallest // bs if steps is None else int(steps)
    if steps * bs > smallest:
        raise ValueError(f"{steps} batches of {bs} need {steps * bs} rows; the smallest fold has {smallest}")

    def sample(gen: torch.Generator, epoch: int, j: int) -> Iterator[Batch]:
        r = rows_t[j]
        perm = r[torch.randperm(r.numel(), generator=gen)]
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            yield {k: v[idx] for k, v in data.items()}
    sample.per_model = True
    sample.steps_per_epoch = steps
    return sample


def _stack_batches(batches: list[Batch]) -> Batch:
    keys = batches[0].keys()
    out = {}
    for k in keys:
        shapes = {tuple(b[k].shape) for b in batches}
        if len(shapes) != 1:
            raise ValueError(f"the sampler gave seeds batches of different shapes for {k!r}: {sorted(shapes)}; "
                             "a sampler must give every seed the same batch shape at each step")
        out[k] = torch.stack([b[k] for b in batches])
    return out


@dataclass
class SeedFit:
    """``best_epoch``: per seed, the epoch whose weights were kept (the best one, or the last with
    ``restore="last"``); 0 means the initial weights (no epoch improved on them)."""

    stack: SeedStack
    best_epoch: list[int]
    history: list[list[float]]          # (epochs, S) selection scores
    train_loss: list[list[float]]       # (epochs, S) mean training loss
    epochs_run: int
    seconds_per_epoch: float
    notes: list[str] = field(default_factory=list)


def make_optimizer(cfg: TrainConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """Adam / AdamW with the documented ``fused=True`` implementation where this torch and device
    have it (one kernel for all tensors: at batch 8 the default ``foreach`` step cost more than
    forward and backward together on CPU, see ``benchmarks/README.md``), else the default."""
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    try:
        return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_seeds(make: Callable[[], LearnerModule], sampler: Sampler, evaluate: Callable[[SeedStack], np.ndarray], seeds: list[int],
                cfg: TrainConfig, device: str | torch.device = "cpu",
                progress: Callable[[int, np.ndarray], None] | None = None,
                grad_fn: Callable[[dict[str, torch.Tensor], Batch], torch.Tensor] | None = None) -> SeedFit:
    """Train one ``make()`` module per seed; return the restored (best or last) stack.

    ``sampler(generator, epoch)`` yields one seed's batches (each seed has its own generator);
    ``evaluate(stack) -> (S,)`` selection scores, higher is better (called in eval mode,
    without gradients). The learning rate follows ``cfg.lr * cfg.lr_factor(t)`` with ``t`` the
    fractional epoch, per step when the sampler has ``steps_per_epoch``, else per epoch.

    ``grad_fn(params, batch) -> (S,)`` is an optional replacement for autograd: it returns the
    per-seed losses of the stacked batch and sets ``.grad`` of every parameter in ``params``
    (``None`` for parameters the loss does not use), e.g. an optional hand-derived fast path
    that must be tested equal to the autograd one (:mod:`exvo.learn.mlp_fast`).
    """
    stack = SeedStack.build(make, seeds, device)
    S = stack.n
    opt = make_optimizer(cfg, list(stack.params.values()))
    gens = [torch.Generator().manual_seed(order_seed(s)) for s in seeds]
    keep = {k: v.detach().clone() for k, v in stack.params.items()}
    best = np.full(S, -np.inf)
    kept_epoch = [0] * S
    waited = np.zeros(S, dtype=int)
    active = np.ones(S, dtype=bool)
    history, train_loss = [], []

    def fn(p, b, batch):
        return functional_call(stack.base, (p, b), (batch,), {"train_loss": True})

    t0 = time.perf_counter()
    epoch = 0
    steps = getattr(sampler, "steps_per_epoch", None)
    scheduled = float(cfg.warmup_epochs) > 0 or cfg.decay != "none"
    for epoch in range(1, int(cfg.epochs) + 1):
        stack.base.train()
        # a per-model sampler (speaker folds) draws model j's batches from its own rows
        iters = [sampler(g, epoch, j) if getattr(sampler, "per_model", False) else sampler(g, epoch)
                 for j, g in enumerate(gens)]
        tot, nb = torch.zeros(S), 0
        for batches in zip(*iters):
            batch = {k: v.to(device) for k, v in _stack_batches(list(batches)).items()}
            if scheduled:
                t = epoch - 1 + (nb / steps if steps else 0.0)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * cfg.lr_factor(t)
            opt.zero_grad(set_to_none=True)
            if grad_fn is None:
                per_seed = stack.run(fn, batch, cfg.vectorise)
                per_seed.sum().backward()
            else:
                with torch.no_grad():
                    per_seed = grad_fn(stack.params, batch)
            opt.step()
            tot += per_seed.detach().cpu()
            nb += 1
        stack.base.eval()
        with torch.no_grad():
            score = np.asarray(evaluate(stack), dtype=np.float64).reshape(S)
        history.append(score.tolist())
        train_loss.append((tot / max(nb, 1)).tolist())
        improved = active & (score > best + cfg.min_delta)
        waited = np.where(improved, 0, waited + active)
        best = np.where(improved, score, best)
        snap = improved if cfg.restore == "best" else active
        for j in np.flatnonzero(snap):
            kept_epoch[j] = epoch
        if snap.any():
            m = torch.as_tensor(snap, device=stack.device)
            for k, v in stack.params.items():
                keep[k] = torch.where(m.view(-1, *([1] * (v.dim() - 1))), v.detach(), keep[k])
        if progress is not None:
            progress(epoch, score)
        active &= waited < cfg.patience
        if not active.any():
            break
    seconds = (time.perf_counter() - t0) / max(epoch, 1)
    stack.params = {k: v.requires_grad_(False) for k, v in keep.items()}
    return SeedFit(stack, kept_epoch, history, train_loss, epoch, seconds)


def predict_each(stack: SeedStack, data: Batch, rows: list[np.ndarray], eval_batch: int = 4096,
                 vectorise: bool = True) -> list[dict[str, np.ndarray]]:
    """Model ``j``'s outputs on its own ``rows[j]`` only (e.g. the held-out rows of its speaker
    fold): ``[{name: (len(rows[j]), ...)}]``, one per model. One stacked pass: every model gets a
    batch of its own rows (the shorter row lists padded by repeating rows, whose outputs are
    dropped), ``eval_batch`` rows per step over all models together, so a stack of S models on
    K folds reads each row once per model that holds it, not S times."""
    if len(rows) != stack.n:
        raise ValueError(f"predict_each needs one row list per model: {len(rows)} lists for {stack.n} models")
    stack.base.eval()
    n = max(len(r) for r in rows)
    idx = torch.as_tensor(np.stack([np.resize(np.asarray(r, dtype=np.int64), n) for r in rows]))    # (S, n)
    step = max(1, int(eval_batch) // stack.n)
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, n, step):
            cols = idx[:, i:i + step]
            out = stack.forward({k: v[cols].to(stack.device) for k, v in data.items()}, vectorise, stacked_batch=True)
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().cpu())
    full = {k: torch.cat(v, 1).numpy() for k, v in parts.items()}
    return [{k: v[j, :len(r)] for k, v in full.items()} for j, r in enumerate(rows)]


def predict(stack: SeedStack, data: Batch, rows: np.ndarray, eval_batch: int = 4096,
            vectorise: bool = True) -> dict[str, np.ndarray]:
    """Outputs of every seed on ``rows`` of ``data``: ``{name: (S, len(rows), ...)}`` numpy arrays."""
    stack.base.eval()
    rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, max(rows_t.numel(), 1), eval_batch):
            idx = rows_t[i:i + eval_batch]
            out = stack.forward({k: v[idx].to(stack.device) for k, v in data.items()}, vectorise, stacked_batch=False)
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v, 1).numpy() for k, v in parts.items()}
