"""Named protocols for ``exvo learn --preset NAME``; explicit options override a preset's values.

* ``default`` — ours: the ExVo MLP (Sys-2) with the baseline's optimiser (Adam, lr 1e-3, L2
  1e-4, batch 8, ≤ 20 epochs, patience 5) and uncertainty-weighted losses, but models chosen
  honestly: 5 speaker folds of Train, each fold model early-stopped (best epoch restored) on
  its own held-out speakers by the selection S_MTL, predictions = the mean of the fold
  models, out-of-fold Train predictions kept as the run's estimate (docs/selection.md); Val
  labels never influence a model. On the demo corpus its Val S_MTL was −0.006 to +0.012 from
  Val-stopping's (†), one hold-out's −0.008 to −0.020 (benchmarks/README.md, "Speaker folds").
* ``paper`` — Idiap (Dutta et al. 2022, papers/001): the mean of the three losses, Sys-1 /
  Sys-2 widths (``--arch``, default sys2), and the official baseline's early stopping: on the
  Val loss, an improvement must exceed 0.1, patience 5, the last epoch is kept. Val scores
  are optimistic (†).
* ``baseline`` — the official ExVo-MultiTask code (Baird et al. 2022, papers/002): Sys-1,
  uncertainty weighting of the losses (learned log-variances from −0.33), Adam lr 1e-3 with
  weight decay 1e-4, batch 8, ≤ 20 epochs, early stopping on the Val loss (delta 0.1,
  patience 5, last epoch kept). Its flaws are not copied (DESIGN.md): init and order are
  seeded, age is (B,) vs (B,), every seed is reported (mean ± std), never the best one. †.
* ``fast`` — ``default`` with the large-batch schedule: batch 256, lr 8e-3 (8×, about √32
  for Adam), 2 warm-up epochs then cosine decay over ≤ 30 epochs, patience 6; it reached the
  batch-8 Val score within one seed-std on the demo corpus and on the benchmark's features
  (``benchmarks/README.md``).
"""
from __future__ import annotations

COMMON = dict(arch="sys2", loss="uncertainty", emotion_loss="mse", age_loss="mse", loss_weights=(1.0, 1.0, 1.0),
              epochs=20, patience=5, batch_size=8, lr=1e-3, weight_decay=1e-4, optimizer="adam",
              stop_on="holdout", monitor="score", min_delta=0.0, restore="best", warmup_epochs=0.0, decay="none")

PRESETS: dict[str, dict] = {
    "default": COMMON | dict(stop_on="folds"),
    "paper": COMMON | dict(loss="mean", stop_on="val", monitor="loss", min_delta=0.1, restore="last"),
    "baseline": COMMON | dict(arch="sys1", stop_on="val", monitor="loss", min_delta=0.1, restore="last"),
    "fast": COMMON | dict(stop_on="folds", batch_size=256, lr=8e-3, epochs=30, patience=6, warmup_epochs=2.0,
                          decay="cosine"),
}

HELP = {
    "default": "ours: Sys-2, uncertainty weights, 5 speaker folds of Train (best epoch per fold, fold ensemble, out-of-fold estimate; honest Val)",
    "paper": "Idiap (001): mean of the 3 losses, stop on Val loss (delta 0.1, patience 5), last epoch kept (Val †)",
    "baseline": "official ExVo baseline code: Sys-1, uncertainty weights, stop on Val loss, last epoch kept (Val †)",
    "fast": "default with the large-batch schedule (batch 256, scaled lr, warm-up + cosine, more epochs)",
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {tuple(PRESETS)}")
    return dict(PRESETS[name])
