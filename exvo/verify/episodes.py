"""Classes, episodic batches, enrolment and nearest-prototype verification (paper 004, Alg. 1).

* A clip's class is its dominant emotion: the argmax of its 10 intensities (as the task
  CNNs' ER labels), −1 where the intensities are unknown.
* :func:`episodic_sampler`: each step draws ``N`` clips of every one of the ``K`` classes
  (without replacement within an epoch of each class, reshuffled when a class runs out),
  in class order, so every seed gets batches of the same shape ``(K·N, …)``.
* Enrolment: ``N_p`` clips per task class; the prototype is the mean of their embeddings
  (Alg. 1, "Enroll"); a query goes to the prototype of highest cosine similarity, i.e.
  the smallest cosine distance (Alg. 1, "Verify").
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from exvo.learn.framework import Batch, Sampler
from exvo.metrics import EMOTIONS


def parse_classes(text: str | Sequence[str], what: str) -> list[str]:
    """``"Amusement,Awe"`` → ``["Amusement", "Awe"]``, case-insensitive names of the 10 emotions."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    lookup = {e.lower(): e for e in EMOTIONS}
    out = []
    for t in items:
        if t.lower() not in lookup:
            raise ValueError(f"{what}: {t!r} is not an emotion class; choose among {', '.join(EMOTIONS)}")
        out.append(lookup[t.lower()])
    if len(set(out)) != len(out) or not out:
        raise ValueError(f"{what}: give distinct emotion names, comma-separated (got {text!r})")
    return out


def dominant_class(emotions: np.ndarray) -> np.ndarray:
    """``(n, 10)`` intensities → ``(n,)`` index into ``EMOTIONS`` of the largest; −1 for rows with NaN."""
    emotions = np.asarray(emotions, dtype=np.float64)
    ok = np.isfinite(emotions).all(axis=1)
    return np.where(ok, np.nan_to_num(emotions, nan=-1.0).argmax(axis=1), -1).astype(np.int64)


def episodic_sampler(data: Batch, rows_by_class: Sequence[np.ndarray], n_per_class: int,
                     steps: int | None = None) -> Sampler:
    """Sampler for :func:`exvo.learn.framework.train_seeds`: batches of ``N`` rows of each class.

    ``data`` tensors are indexed by row; the batch gets ``y`` = position of the class in
    ``rows_by_class``. ``steps`` per epoch default: enough for the largest class to be seen once.
    """
    N = int(n_per_class)
    pools = [torch.as_tensor(np.asarray(r), dtype=torch.long) for r in rows_by_class]
    if any(p.numel() == 0 for p in pools):
        raise ValueError("every class of an episodic batch needs at least one clip")
    n_steps = int(steps) if steps else max(1, -(-max(p.numel() for p in pools) // N))
    y = torch.arange(len(pools)).repeat_interleave(N)

    def sample(gen: torch.Generator, epoch: int) -> Iterator[Batch]:
        orders = [p[torch.randperm(p.numel(), generator=gen)] for p in pools]
        pos = [0] * len(pools)
        for _ in range(n_steps):
            idx = []
            for k, p in enumerate(pools):
                take, got = [], 0
                while got < N:              # small classes wrap round with a fresh shuffle
                    if pos[k] == p.numel():
                        orders[k] = p[torch.randperm(p.numel(), generator=gen)]
                        pos[k] = 0
                    m = min(N - got, p.numel() - pos[k])
                    take.append(orders[k][pos[k]:pos[k] + m])
                    pos[k] += m
                    got += m
                idx.append(torch.cat(take))
            idx = torch.cat(idx)
            yield {**{k: v[idx] for k, v in data.items()}, "y": y}
    return sample


def prototypes(emb: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``(n, E)`` embeddings → ``(len(classes), E)``: the mean embedding of each class's rows."""
    out = []
    for c in classes:
        sel = labels == c
        if not sel.any():
            raise ValueError(f"no enrolled clip of class {c}; cannot make its prototype")
        out.append(emb[sel].mean(axis=0))
    return np.stack(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


def nearest_prototype(emb: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """``(n, E)``, ``(C, E)`` → ``(n,)`` index of the prototype at the smallest cosine distance."""
    return cosine(emb, protos).argmax(axis=1)


def draw_enrolment(rng: np.random.Generator, labels: np.ndarray, pool: np.ndarray, classes: Sequence[int],
                   n_enrol: int) -> np.ndarray:
    """``n_enrol`` rows of each class, drawn without replacement from the rows ``pool``."""
    picks = []
    for c in classes:
        cand = pool[labels[pool] == c]
        if cand.size < n_enrol:
            raise ValueError(f"only {cand.size} clip(s) of {EMOTIONS[c]} are available to enrol, fewer than "
                             f"--enrol {n_enrol}; enrol fewer clips")
        picks.append(rng.choice(cand, size=n_enrol, replace=False))
    return np.concatenate(picks)


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``(n,)`` true and predicted classes → F1 per class, averaged with weights = class support
    (``sklearn.metrics.f1_score(average="weighted")``: a class only in ``y_pred`` weighs 0)."""
    from sklearn.metrics import f1_score      # here, not at the top: importing exvo stays light

    if len(y_true) == 0:                      # sklearn raises on empty input; exvo has always given 0
        return 0.0
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))
