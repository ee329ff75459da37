"""Training pieces of the few-shot learners: enrolment-pair sampling, prediction with enrolment,
per-speaker fine-tuning and speaker normalisation.

Arrays: ``X`` ``(N, D)`` float32 standardised features (rows = corpus rows present in the
caches), ``Y`` ``(N, 10)`` emotions (NaN where unknown), ``spk`` ``(N,)`` int speaker codes.
Row indices always refer to these arrays.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.func import functional_call

from exvo.fewshot.registry import FT_LOSSES, FT_PARAMS
from exvo.learn.framework import SeedStack

Batch = dict[str, torch.Tensor]


def partner_table(rows: np.ndarray, spk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row in ``rows``: the other rows of its speaker (within ``rows``), padded.

    Returns ``(others (N, M) int64, count (N,))`` indexed by row id (rows not in ``rows``
    get count 0). A speaker with fewer than 3 clips lists the row itself too, so that a pair
    can always be drawn (it then may contain the target clip).
    """
    N = int(spk.shape[0])
    by: dict = {}
    for r in rows:
        by.setdefault(spk[r], []).append(int(r))
    M = max((len(v) for v in by.values()), default=1)
    others = np.zeros((N, M), np.int64)
    count = np.zeros(N, np.int64)
    for members in by.values():
        for r in members:
            cand = [m for m in members if m != r] if len(members) >= 3 else list(members)
            others[r, :len(cand)] = cand
            count[r] = len(cand)
    return others, count


def draw_pairs(rows: torch.Tensor, others: torch.Tensor, count: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Two distinct same-speaker enrolment rows for each of ``rows`` ``(B,)`` → ``(B, 2)``."""
    c = count[rows]
    u = torch.rand(rows.numel(), 2, generator=gen)
    i1 = (u[:, 0] * c).long().clamp(max=c - 1)
    i2 = (u[:, 1] * (c - 1).clamp(min=1)).long().clamp(max=(c - 2).clamp(min=0))
    i2 = torch.where((i2 >= i1) & (c > 1), i2 + 1, i2)
    o = others[rows]
    return torch.stack([o.gather(1, i1[:, None])[:, 0], o.gather(1, i2[:, None])[:, 0]], 1)


def train_sampler(X: torch.Tensor, Y: torch.Tensor, spk_code: torch.Tensor, rows: np.ndarray, batch_size: int,
                  enrol: bool, lam: Callable[[int], float], spk: np.ndarray) -> Callable[[torch.Generator, int], Iterator[Batch]]:
    """Shuffled training batches: ``x, y, spk`` (code among the fit speakers), ``lam`` and, with
    enrolment, ``enr (B, 2, D)`` of two random other clips of the same speaker and ``enr_y`` their
    mean label. Batches smaller than 2 clips are dropped (a CCC needs a spread)."""
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    others, count = (torch.from_numpy(a) for a in partner_table(rows, spk))

    def sample(gen: torch.Generator, epoch: int) -> Iterator[Batch]:
        perm = rows_t[torch.randperm(rows_t.numel(), generator=gen)]
        lv = float(lam(epoch))
        for i in range(0, perm.numel(), batch_size):
            idx = perm[i:i + batch_size]
            if idx.numel() < 2:
                continue
            b = {"x": X[idx], "y": Y[idx], "spk": spk_code[idx], "lam": torch.full((idx.numel(),), lv)}
            if enrol:
                pair = draw_pairs(idx, others, count, gen)
                b["enr"] = X[pair]
                b["enr_y"] = Y[pair].mean(1)
            yield b
    return sample


def predict_rows(stack: SeedStack, X: torch.Tensor, rows: np.ndarray, enr_rows: np.ndarray | None = None,
                 vectorise: bool = True, chunk: int = 4096, params: dict | None = None) -> np.ndarray:
    """Emotions of every seed on ``rows``: ``(S, len(rows), 10)``; ``enr_rows`` ``(len(rows), K)`` the
    enrolment clips of each row (enrolment models). ``params`` replaces the stack's weights."""
    stack.base.eval()
    p = stack.params if params is None else params
    rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    enr_t = None if enr_rows is None else torch.as_tensor(np.asarray(enr_rows), dtype=torch.long)
    out = []
    tmp = SeedStack(stack.base, p, stack.buffers, stack.seeds)
    with torch.no_grad():
        for i in range(0, rows_t.numel(), chunk):
            b = {"x": X[rows_t[i:i + chunk]]}
            if enr_t is not None:
                b["enr"] = X[enr_t[i:i + chunk]]
            out.append(tmp.forward(b, vectorise, stacked_batch=False)["emo"].float())
    if not out:
        return np.zeros((stack.n, 0, 10), np.float32)
    return torch.cat(out, 1).numpy()


def episode_enrolment(episodes) -> tuple[np.ndarray, np.ndarray]:
    """``(query rows, their enrolment rows (n, K))``: every query clip enrols with its speaker's support."""
    q = [e.query for e in episodes]
    enr = [np.repeat(e.support[None, :], e.query.size, 0) for e in episodes]
    return (np.concatenate(q) if q else np.zeros(0, np.int64),
            np.concatenate(enr) if enr else np.zeros((0, 2), np.int64))




def _tuned(names, which: str) -> list[str]:
    if which not in FT_PARAMS:
        raise ValueError(f"unknown --ft-params {which!r}; choose one of {list(FT_PARAMS)}")
    if which == "all":
        return list(names)
    if which == "head":
        return [k for k in names if k.startswith("f.")]
    last = max(int(k.split(".")[1]) for k in names if k.startswith("f.") and k.endswith(".bias"))
    return [f"f.{last}.bias"]


def finetune_episodes(stack: SeedStack, X: torch.Tensor, episodes, rows_of, steps: int = 1, lr: float = 1e-4,
                      weight_decay: float = 0.0, loss: str = "mse", enrol: bool = False,
                      vectorise: bool = True, tune: str = "all") -> np.ndarray:
    """The official baseline's personalisation, done right: for each speaker, copy the trained
    weights (every seed), take ``steps`` AdamW steps at ``lr`` on its support clips, predict its
    query clips, and drop the copy, so the next speaker starts from the original weights again.

    ``rows_of(episode)`` gives the feature rows of ``(support, query)`` (corpus rows → X rows).
    Dropout is off during the steps (2 clips; a deterministic update). ``loss``: ``mse`` (the
    baseline's) or ``ccc`` (1 − CCC over the 2 clips). ``tune``: which weights move (:data:`FT_PARAMS`).
    Returns ``(S, n_query, 10)`` in episode order.
    """
    if loss not in FT_LOSSES:
        raise ValueError(f"unknown fine-tuning loss {loss!r}; choose one of {FT_LOSSES}")
    if steps < 0:
        raise ValueError(f"--ft-steps must be >= 0, got {steps}")
    stack.base.eval()
    original = {k: v.detach() for k, v in stack.params.items()}
    tuned = _tuned(original, tune)
    preds = []
    for ep in episodes:
        sup, qry = rows_of(ep)
        params = {k: v.clone().requires_grad_(k in tuned) for k, v in original.items()}
        opt = torch.optim.AdamW([params[k] for k in tuned], lr=lr, weight_decay=weight_decay)
        batch = {"x": X[torch.as_tensor(sup)], "y": torch.as_tensor(ep.support_y, dtype=X.dtype)}
        if enrol:
            batch["enr"] = X[torch.as_tensor(np.repeat(sup[None, :], sup.size, 0))]

        def fn(p, b, bt):
            y = functional_call(stack.base, (p, b), (bt,))["emo"]
            if loss == "mse":
                return ((y - bt["y"]) ** 2).mean()
            from exvo.learn.losses import ccc_loss
            return ccc_loss(y, bt["y"])

        tmp = SeedStack(stack.base, params, stack.buffers, stack.seeds)
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            tmp.run(fn, batch, vectorise, stacked_batch=False).sum().backward()
            opt.step()
        enr = np.repeat(sup[None, :], qry.size, 0) if enrol else None
        preds.append(predict_rows(stack, X, qry, enr, vectorise, params={k: v.detach() for k, v in params.items()}))
    return np.concatenate(preds, 1) if preds else np.zeros((stack.n, 0, 10), np.float32)


def centre_speakers(X: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Speaker normalisation: for each ``(reference rows, rows)`` group subtract the mean of the
    reference (support) rows' features from the group's rows. Returns a new array.

    Two support clips give a usable mean but no usable spread, so only the location is
    normalised (the scale stays the global Train standardisation).
    """
    out = X.copy()
    for ref, rows in groups:
        out[rows] = X[rows] - X[ref].mean(0, keepdims=True)
    return out
