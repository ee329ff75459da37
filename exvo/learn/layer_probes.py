"""Every single layer probed at once: L layers × S seeds (× K speaker folds) MLPs in one stack.

Model ``j`` is layer position ``j // (S·K)``, seed ``seeds[(j // K) % S]``, fold ``j % K``
(layer-major; within a layer the order of a learn run: seed-major, fold inner). Every model is
the head a learn run of that one layer trains (``make()``), with that run's initial weights
(``torch.manual_seed(2·seed)``) and batch order (``Generator(2·seed + 1)``): the sampler draws
model ``j``'s batches exactly as :func:`~exvo.learn.framework.shuffled_batches` (one fold) or
:func:`~exvo.learn.framework.fold_batches` (K folds) would for its run, and hands it only its
own layer, ``x[idx, layer_j]`` ``(B, F)``. So the stack trains the same models as a loop of
``exvo learn --features NAME@l`` runs (``benchmarks/bench_layers.py`` checks the scores), in
one :func:`~exvo.learn.framework.train_seeds` call: one optimiser step for all L·S·K models.

On the CPU the layers are trained in stacks of whole layers of at most :data:`STACK_PARAMS`
parameters (:func:`probe_layers`), one after the other; each stack is still one vectorised
training of layers × seeds × folds, and a model's result does not depend on its stack.

Memory: the stacked batch is ``(models, B, F)``; predictions are made in row chunks of at most
:data:`CHUNK_BYTES` of gathered inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.func import functional_call

from exvo.learn.framework import SeedFit, SeedStack, train_seeds
from exvo.learn.multitask import LossConfig, data_tensors
from exvo.learn.targets import Targets, selection_score

CHUNK_BYTES = 64 << 20
"""Largest gathered input ``(models, rows, F)`` float32 of one prediction chunk (64 MiB)."""

STACK_PARAMS = 2_000_000
"""Default parameter budget of one stack on the CPU (whole layers per stack, at least one layer).

At batch 8 a CPU step is bound by reading the weights, gradients and Adam states: measured on
the 2-core VM (``benchmarks/README.md``), the cost per Sys-2 model fell from 3 to 12-24 stacked
models at 256 dims and rose beyond ~2 M stacked parameters (1024 dims: 2.0 ms/model at 6
models, 3.0 at 48; 2048 dims: 4.2 at 3, 6.5 at 48), as the stack outgrows the caches."""


@dataclass
class Layout:
    """Which layer, seed and fold every model of the stack is."""

    positions: list[int]      # layer positions in the (n, L, F) block
    seeds: list[int]
    k: int                    # folds (1: one hold-out / Val)

    @property
    def n(self) -> int:
        return len(self.positions) * len(self.seeds) * self.k

    def of(self, j: int) -> tuple[int, int, int]:
        """``(layer position, seed, fold)`` of model ``j``."""
        S, K = len(self.seeds), self.k
        return self.positions[j // (S * K)], self.seeds[(j // K) % S], j % K

    @property
    def layer_of(self) -> list[int]:
        return [self.of(j)[0] for j in range(self.n)]

    @property
    def model_seeds(self) -> list[int]:
        return [self.of(j)[1] for j in range(self.n)]


def layer_sampler(D: dict[str, torch.Tensor], folds: list[tuple[np.ndarray, np.ndarray]], lay: Layout,
                  batch_size: int):
    """Per-model batches ``{"x": (B, F), labels}``: model ``j`` draws from its fold's fit rows and
    reads its own layer of ``D["x"]`` ``(n, L, F)``."""
    rows_t = [torch.as_tensor(f, dtype=torch.long) for f, _ in folds]
    layer_of = lay.layer_of
    if len(folds) == 1:                       # as shuffled_batches: every row, the last batch partial
        bs, steps = int(batch_size), -(-rows_t[0].numel() // int(batch_size))
    else:                                     # as fold_batches: full batches, as many as the smallest fold fills
        smallest = min(r.numel() for r in rows_t)
        bs = min(int(batch_size), smallest)
        steps = smallest // bs
    labels = {k: v for k, v in D.items() if k != "x"}

    def sample(gen: torch.Generator, epoch: int, j: int):
        r = rows_t[j % lay.k]
        perm = r[torch.randperm(r.numel(), generator=gen)]
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            yield {"x": D["x"][idx, layer_of[j]], **{k: v[idx] for k, v in labels.items()}}
    sample.per_model = True
    sample.steps_per_epoch = steps
    return sample


def stacked_outputs(stack: SeedStack, X: torch.Tensor, rows: np.ndarray, layer_of: list[int],
                    vectorise: bool = True) -> dict[str, np.ndarray]:
    """Every model's outputs on ``rows`` of ``X`` ``(n, L, F)``, each on its own layer:
    ``{name: (models, len(rows), ...)}`` (country as logits)."""
    M, F = stack.n, X.shape[-1]
    chunk = max(1, CHUNK_BYTES // (4 * M * F))
    lay = torch.as_tensor(layer_of, dtype=torch.long)
    rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    parts: dict[str, list[torch.Tensor]] = {}
    stack.base.eval()
    with torch.no_grad():
        for i in range(0, max(rows_t.numel(), 1), chunk):
            xb = X[rows_t[i:i + chunk]][:, lay].transpose(0, 1).contiguous().to(stack.device)   # (M, c, F)
            for k, v in stack.forward({"x": xb}, vectorise, stacked_batch=True).items():
                parts.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v, 1).numpy() for k, v in parts.items()}


def selection_scores(stack: SeedStack, X: torch.Tensor, t: Targets, folds: list[tuple[np.ndarray, np.ndarray]],
                     lay: Layout, vectorise: bool = True) -> np.ndarray:
    """``(models,)``: the selection S_MTL of every model on its fold's selection rows."""
    K = len(folds)
    rows = folds[0][1] if K == 1 else np.unique(np.concatenate([s for _, s in folds]))
    at = {int(r): i for i, r in enumerate(rows)}
    out = stacked_outputs(stack, X, rows, lay.layer_of, vectorise)
    pro = torch.softmax(torch.from_numpy(out["country"]), -1).numpy()
    scores = np.empty(stack.n)
    for j in range(stack.n):
        r = folds[j % K][1]
        q = np.array([at[int(v)] for v in r])
        scores[j] = selection_score(t.emotions[r], out["emotions"][j][q], t.country[r], pro[j][q].argmax(1),
                                    t.age[r], out["age"][j][q] * t.age_std + t.age_mean)
    return scores


def minus_losses(stack: SeedStack, D: dict[str, torch.Tensor], folds, lay: Layout) -> np.ndarray:
    """``(models,)``: minus every model's own training loss on all its selection rows at once (one
    model at a time: the loss of a CCC emotion term is not a sum over row chunks)."""
    out = np.empty(stack.n)
    for j in range(stack.n):
        layer, _, k = lay.of(j)
        sel = torch.as_tensor(folds[k][1], dtype=torch.long, device=D["x"].device)
        batch = {"x": D["x"][sel, layer], **{n: v[sel] for n, v in D.items() if n != "x"}}
        out[j] = -float(functional_call(stack.base, stack.one(j), (batch,), {"train_loss": True}))
    return out


def train_probes(make: Callable[[], torch.nn.Module], X: np.ndarray, t: Targets,
                 folds: list[tuple[np.ndarray, np.ndarray]], lay: Layout, train, monitor: str,
                 device: str = "cpu", echo: Callable[[str], None] = print) -> tuple[SeedFit, dict[str, torch.Tensor]]:
    """Train every (layer, seed, fold) model of ``lay`` on ``X`` ``(n, L, F)`` at once; early stopping
    per model on its fold's selection rows (``monitor`` ``score`` | ``loss``, as a learn run).
    Returns the fit (restored models) and the tensors it trained on."""
    if X.ndim != 3:
        raise ValueError(f"the layer probes need features (n, L, F), got shape {X.shape}")
    for fit_rows, sel in folds:
        if fit_rows.size == 0 or sel.size == 0:
            raise ValueError(f"nothing to train on: {fit_rows.size} fit rows and {sel.size} selection rows")
    D = data_tensors(X, t, torch.device(device))
    vec = bool(train.vectorise)

    def evaluate(stack: SeedStack) -> np.ndarray:
        if monitor == "loss":
            return minus_losses(stack, D, folds, lay)
        return selection_scores(stack, D["x"], t, folds, lay, vec)

    def progress(epoch: int, score: np.ndarray) -> None:
        per = score.reshape(len(lay.positions), -1).mean(1)
        echo(f"  epoch {epoch:2d}: {'−loss' if monitor == 'loss' else 'selection score'} per layer (mean over "
             "seeds) " + " ".join(f"{s:.3f}" for s in per))

    sampler = layer_sampler(D, folds, lay, train.batch_size)
    fit = train_seeds(make, sampler, evaluate, lay.model_seeds, train, torch.device(device), progress)
    return fit, D


def seed_selection_scores(t: Targets, rows: np.ndarray, emo: np.ndarray, pro: np.ndarray,
                          agez: np.ndarray) -> np.ndarray:
    """``(S,)`` selection S_MTL of ``(S, len(rows), …)`` predictions (country probabilities) on ``rows``."""
    return np.array([selection_score(t.emotions[rows], emo[j], t.country[rows], pro[j].argmax(1), t.age[rows],
                                     agez[j] * t.age_std + t.age_mean) for j in range(len(emo))])


def layer_groups(n_layers: int, models_per_layer: int, params_per_model: int, budget: int | None) -> list[list[int]]:
    """Consecutive layer positions, as many per stack as ``budget`` parameters hold (≥ 1; None: all)."""
    per = n_layers if not budget else max(1, int(budget) // max(1, models_per_layer * params_per_model))
    return [list(range(a, min(a + per, n_layers))) for a in range(0, n_layers, per)]


def probe_layers(make: Callable[[], torch.nn.Module], X: np.ndarray, t: Targets,
                 folds: list[tuple[np.ndarray, np.ndarray]], seeds: list[int], train, monitor: str,
                 train_rows: np.ndarray, val_rows: np.ndarray, budget: int | None = STACK_PARAMS,
                 device: str = "cpu", echo: Callable[[str], None] = print) -> list[dict]:
    """Every layer of ``X`` ``(n, L, F)`` probed: per layer position ``{"train_score": mean over seeds
    of the selection S_MTL on the selection rows (K folds: of the out-of-fold Train predictions),
    "best_epoch": per model, "val": (emotions (S, n_val, 10), country proba (S, n_val, 4),
    standardised age (S, n_val))}`` — the fold models' mean with K folds."""
    from exvo.learn.folds import fold_of

    L, K, S = X.shape[1], len(folds), len(seeds)
    n_par = sum(p.numel() for p in make().parameters())
    groups = layer_groups(L, S * K, n_par, budget)
    out: list[dict] = []
    for g, pos in enumerate(groups):
        lay = Layout(pos, seeds, K)
        echo(f"  stack {g + 1}/{len(groups)}: layers at {pos[0]}..{pos[-1]} × {S} seeds"
             + (f" × {K} folds" if K > 1 else "") + f" = {lay.n} models of {n_par:,} parameters")
        fit, D = train_probes(make, X, t, folds, lay, train, monitor, device, lambda m: None)

        def per_model(rows: np.ndarray):
            o = stacked_outputs(fit.stack, D["x"], rows, lay.layer_of)
            pro = torch.softmax(torch.from_numpy(o["country"]), -1).numpy()
            return [a.reshape(len(pos), S, K, *a.shape[1:]) for a in (o["emotions"], pro, o["age"])]

        if K == 1:
            tr_score = selection_scores(fit.stack, D["x"], t, folds, lay).reshape(len(pos), S).mean(1)
        else:                                 # out of fold: each Train row from the model that held it out
            f, idx = fold_of(train_rows, folds), np.arange(len(train_rows))
            e, p, a = (v[:, :, f, idx] for v in per_model(train_rows))
            tr_score = [seed_selection_scores(t, train_rows, e[i], p[i], a[i]).mean() for i in range(len(pos))]
        e, p, a = (v.mean(2) for v in per_model(val_rows))          # the fold ensemble (one fold: itself)
        epochs = np.asarray(fit.best_epoch).reshape(len(pos), S * K)
        out += [{"train_score": float(tr_score[i]), "best_epoch": epochs[i].tolist(), "val": (e[i], p[i], a[i])}
                for i in range(len(pos))]
    return out


def mlp_maker(dim: int, arch: str, loss: LossConfig) -> Callable[[], torch.nn.Module]:
    """The head of a learn run with ``--learner mlp --arch arch`` on one ``dim``-wide layer."""
    from exvo.learn.mlp import MultitaskMLP

    return lambda: MultitaskMLP(dim, arch, loss)
