"""Training a task CNN the paper's way, its clip-level Val scores, and its model file.

Recipe (:class:`TrainConfig`; Idiap paper §2.2 (4)):

* data: every 250 ms window at the 10 ms hop of every training clip, shuffled
  (:mod:`exvo.extract.cnn.sampler`); window label = clip label;
* split: 90:10 of the Train speakers, per country where the corpus has countries
  (:func:`exvo.splits.holdout_split`, the one hold-out rule of exvo);
  the 10 % only give the cross-validation loss (every frame of every held-out clip);
* optimiser: cross-entropy, plain SGD (Keras' default: no momentum), lr 0.1;
* schedule (:class:`PlateauHalving`): after each epoch, if the cross-validation loss did
  not fall, the lr is halved (the paper: "halved, in the range 10^-1 to 10^-6, between
  successive epochs whenever the validation-loss stopped reducing"); training stops
  when the lr would fall below 1e-6 (17 halvings), or at ``max_epochs``;
* ours, not in paper 001: at every halving the weights and the optimiser state go back to
  the best epoch so far (never to the untrained weights: the first epoch is always kept),
  and the model returned is the best epoch's (the paper does not say which it kept);
* an epoch is one pass over all windows, or ``windows_per_epoch`` windows (whole passes
  are then split into equal steps of the schedule; every window still comes once per pass).

Clip-level decisions (the paper's Table 1): the argmax of the summed frame posteriors;
UAR = macro recall, WAR = accuracy. They are stored in the model's JSON as ``val_metrics``.
"""
from __future__ import annotations

import copy
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from exvo.audio import read_audio
from exvo.corpus import SAMPLE_RATE, AudioError, Corpus
from exvo.device import resolve_device
from exvo.extract.cnn.files import (FORMAT, LoadedModel, checkpoint_key, checkpoint_path, load_checkpoint,
                                    load_model, save_checkpoint, save_model)
from exvo.extract.cnn.labels import task_labels
from exvo.extract.cnn.model import CNNConfig, build_model, clip_logits, weights_sha256
from exvo.extract.cnn.sampler import AllFramesSampler, FramePool, fixed_chunks
from exvo.extract.zff import ZFFConfig, zff
from exvo.learn.threads import torch_threads as learn_threads
from exvo.metrics import uar
from exvo.splits import holdout_split

VERSION = "2"
SIGNALS = ("raw", "zff")
Echo = Callable[[str], None]
__all__ = ["DEFAULT_THREADS", "FORMAT", "SIGNALS", "VERSION", "Echo", "LoadedModel", "PlateauHalving", "TrainConfig",
           "clip_posteriors", "evaluate_clips", "fit", "heldout_loss", "load_model", "load_signals", "prepare_signal", "save_model",
           "torch_threads", "train_cnn"]

DEFAULT_THREADS = 1
"""Intra-op CPU threads for training and extraction unless told otherwise. One thread:
these convolutions are small, and on a 2-core machine shared with other jobs two OpenMP
threads were measured up to 40× slower than one (threads spin waiting for a descheduled
sibling). ``--workers N`` (``ExtractOptions.workers``) asks for N."""


def _torch():
    import torch

    return torch


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op threads (None or 0: :data:`DEFAULT_THREADS`), then restore."""
    with learn_threads(int(n) if n else DEFAULT_THREADS):
        yield


def prepare_signal(wav: np.ndarray, signal: str, zff_config: ZFFConfig | None = None) -> np.ndarray:
    """Model input for one clip: ``wav`` ``(n,)`` 16 kHz → ``(n,)`` float32 raw or ZFF signal.

    ZFF is computed on the whole clip (so the trend-removal window sees all of it) and
    has unit RMS per clip; the raw waveform is passed unchanged (loudness is informative).
    """
    if signal == "raw":
        return np.asarray(wav, dtype=np.float32)
    if signal == "zff":
        return zff(wav, SAMPLE_RATE, zff_config or ZFFConfig())
    raise ValueError(f"unknown input signal {signal!r}; expected one of {SIGNALS}")


# =========================================================================== schedule
class PlateauHalving:
    """The paper's learning-rate schedule: halve when the cross-validation loss stops falling.

    Only the lr: going back to the best weights at each halving is :func:`fit`'s (ours, not
    the paper's; see the module docstring).

    ``step(loss)`` after each epoch returns whether ``loss`` improved on the best so far
    by more than ``improvement`` (relative); if not, ``lr`` is halved. ``done`` once
    ``lr < lr_min``: with 0.1 and 1e-6 the last lr used is 0.1 / 2**16 ≈ 1.5e-6.
    """

    def __init__(self, lr_start: float, lr_min: float, best: float = float("inf"), improvement: float = 1e-4):
        if not 0 < lr_min <= lr_start:
            raise ValueError(f"need 0 < lr_min <= lr_start, got lr_start={lr_start}, lr_min={lr_min}")
        self.lr, self.lr_min, self.best, self.improvement = float(lr_start), float(lr_min), float(best), improvement

    @property
    def done(self) -> bool:
        return self.lr < self.lr_min

    def step(self, loss: float) -> bool:
        better = bool(np.isfinite(loss) and (not np.isfinite(self.best) or loss < self.best - self.improvement * abs(self.best)))
        if better:
            self.best = float(loss)
        else:
            self.lr /= 2
        return better


@dataclass
class TrainConfig:
    """Training settings (saved with the model); see the module docstring.

    ``frames_per_chunk``: consecutive frames per sampled chunk (1 = window-level shuffling);
    ``batch_chunks``: chunks per SGD step (a step sees up to ``frames_per_chunk × batch_chunks``
    windows); ``windows_per_epoch``: None = one pass over all windows per epoch.
    ``grad_clip``: gradient-norm clip, a guard against the first large steps at lr 0.1
    (not in the paper); ``bn_windows``: ``sinc`` only, see :func:`_recalibrate_bn`.
    """

    seed: int = 0
    frames_per_chunk: int = 16
    batch_chunks: int = 16
    windows_per_epoch: int | None = None
    lr_start: float = 0.1
    lr_min: float = 1e-6
    momentum: float = 0.0
    grad_clip: float = 5.0
    max_epochs: int | None = None
    heldout_fraction: float = 0.1
    improvement: float = 1e-4
    bn_windows: int = 4096


# =========================================================================== data
def _countries(corpus: Corpus, rows: np.ndarray) -> np.ndarray | None:
    """The clips' countries for a country-stratified split; None (one stratum) when no country has
    2 speakers to split (a corpus without countries, or a small crossfit fold)."""
    c, spk = corpus.country[rows], corpus.speakers[rows]
    per = [np.unique(spk[c == k]).size for k in np.unique(c[c >= 0])]
    return c if per and max(per) >= 2 else None


def load_signals(corpus: Corpus, rows: Sequence[int], signal: str, zcfg: ZFFConfig | None, echo: Echo,
                 what: str, bar: bool = True, dtype=np.float16) -> tuple[list[np.ndarray], list[int]]:
    """Decode and convert ``rows`` to ``dtype``; unreadable clips are reported and skipped.

    Returns ``(signals, kept rows)``.
    """
    from tqdm import tqdm

    out, kept = [], []
    for r in tqdm(rows, desc=f"load {what}", unit="clip", disable=not (bar and sys.stderr.isatty()), leave=False):
        try:
            wav, note = read_audio(corpus.audio_path(corpus.ids[r]))
        except AudioError as e:
            echo(f"  skipped {corpus.ids[r]} ({what}): {e.reason}")
            continue
        if note:
            echo(f"  note {corpus.ids[r]} ({what}): {note}")
        out.append(prepare_signal(wav, signal, zcfg).astype(dtype, copy=False))
        kept.append(int(r))
    return out, kept


def _frame_loss(model, pool: FramePool, clips, first, count, k: int, device: str):
    """Mean cross-entropy over the valid frames of a batch of chunks, and the number of frames."""
    torch = _torch()
    x = torch.from_numpy(pool.segments(clips, first, k)).to(device)
    logits, _ = model.frame_logits(x)                                   # (B, k, C)
    mask = torch.from_numpy(np.arange(k)[None, :] < count[:, None]).to(device)
    y = torch.from_numpy(pool.y[clips]).to(device)[:, None].expand(-1, k)
    loss = torch.nn.functional.cross_entropy(logits[mask], y[mask])
    return loss, logits[mask], y[mask]


def heldout_loss(model, pool: FramePool, device: str, k: int = 64, batch: int = 16) -> float:
    """Cross-entropy averaged over every frame of every clip of ``pool`` (eval mode)."""
    torch = _torch()
    b = fixed_chunks(pool.n_frames, k)
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for a in range(0, b.clips.size, batch):
            s = slice(a, a + batch)
            loss, _, y = _frame_loss(model, pool, b.clips[s], b.first[s], b.count[s], k, device)
            tot += float(loss) * y.numel()
            n += y.numel()
    return tot / max(n, 1)


def _recalibrate_bn(model, pool: FramePool, seed: int, n_windows: int, k: int, device: str) -> None:
    """Re-estimate BatchNorm statistics (``sinc`` only) for the current weights.

    The running averages kept during training lag behind the weights ("precise BN"). The
    chunks are the same after every epoch, so the held-out loss moves only when the
    weights do.
    """
    torch = _torch()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if not bns:
        return
    old = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None            # cumulative average over the batches below
    s = AllFramesSampler(pool.n_frames, k, 16, seed=seed)
    model.train()
    with torch.no_grad():
        for b in s.epoch(n_windows):
            if b.clips.size >= 2:
                model.frame_logits(torch.from_numpy(pool.segments(b.clips, b.first, k)).to(device))
    for m, mo in zip(bns, old):
        m.momentum = mo
    model.eval()


def fit(model, train: FramePool, held: FramePool, cfg: TrainConfig, device: str, echo: Echo,
        resume: Path | None = None, key: str = "") -> list[dict]:
    """Train ``model`` in place (ends at the best cross-validation checkpoint); returns per-epoch history.

    At every lr halving the weights and optimiser state go back to the best epoch: our rule,
    not paper 001's (it only halves the lr), kept because at lr 0.1 an epoch that raised the
    cross-validation loss otherwise becomes the start of every later, smaller step.

    With ``resume`` (a path), the state after every epoch is saved there, and a training
    killed after epoch k goes on from epoch k + 1 with the very weights, optimiser, schedule,
    sampler position and random state it had: the result is bit-identical to an uninterrupted
    run (same device and thread count). ``key``: the settings a checkpoint must have been
    written with (:func:`~exvo.extract.cnn.files.checkpoint_key`).
    """
    torch = _torch()
    k = cfg.frames_per_chunk
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_start, momentum=cfg.momentum)
    sampler = AllFramesSampler(train.n_frames, k, cfg.batch_chunks, seed=cfg.seed)
    # The untrained weights are no candidate (as with Keras' ModelCheckpoint, the first epoch
    # is always kept): on a few held-out speakers a trained CNN can have a higher loss than
    # the random one, and selecting the random one returned an extractor at chance.
    sched = PlateauHalving(cfg.lr_start, cfg.lr_min, float("inf"), cfg.improvement)
    best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    epoch, history = 0, []
    per_epoch = cfg.windows_per_epoch or train.total_frames
    saved = load_checkpoint(resume, key, echo) if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        best_state = (saved["best_model"], saved["best_opt"])
        sched.lr, sched.best = saved["lr"], saved["best"]
        sampler.restore(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        epoch, history = int(saved["epoch"]), list(saved["history"])
        echo(f"  resuming after epoch {epoch} from {resume} (lr {sched.lr:.2e}, best cv loss {sched.best:.4f})")
    else:
        echo(f"  {train.total_frames} training windows ({per_epoch} per epoch), {held.total_frames} cross-validation "
             f"windows; loss before training {heldout_loss(model, held, device):.4f} "
             f"(chance {np.log(model.cfg.n_classes):.4f})")
    while not sched.done and (cfg.max_epochs is None or epoch < cfg.max_epochs):
        epoch += 1
        rec = _epoch(model, opt, sampler, train, held, cfg, device, epoch, per_epoch)
        improved = sched.step(rec["heldout_loss"])
        rec["improved"] = improved
        history.append(rec)
        echo(f"  epoch {epoch:3d} lr {rec['lr']:.2e}: train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.3f}, "
             f"cv loss {rec['heldout_loss']:.4f}{' *' if improved else ''} [{rec['seconds']:.1f} s, "
             f"{rec['windows_per_s']:.0f} windows/s]")
        if improved:
            best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        else:  # plateau: back to the best weights, smaller steps
            model.load_state_dict(best_state[0])
            opt.load_state_dict(best_state[1])
            for g in opt.param_groups:
                g["lr"] = sched.lr
        if resume is not None:
            save_checkpoint(resume, key, {"model": model.state_dict(), "opt": opt.state_dict(),
                                          "best_model": best_state[0], "best_opt": best_state[1],
                                          "lr": sched.lr, "best": sched.best, "sampler": sampler.state(),
                                          "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": history})
    model.load_state_dict(best_state[0])
    model.eval()
    return history


def _epoch(model, opt, sampler: AllFramesSampler, train: FramePool, held: FramePool, cfg: TrainConfig,
           device: str, epoch: int, per_epoch: int) -> dict:
    """One epoch of SGD, then the BatchNorm recalibration and the cross-validation loss: its record."""
    from tqdm import tqdm

    torch = _torch()
    k = cfg.frames_per_chunk
    t0 = time.perf_counter()
    model.train()
    lr = float(opt.param_groups[0]["lr"])
    tot, correct, n = 0.0, 0, 0
    bar = tqdm(total=per_epoch, desc=f"epoch {epoch}", unit="win", leave=False, disable=not sys.stderr.isatty())
    for b in sampler.epoch(cfg.windows_per_epoch):
        if b.n_windows < 2 and model.cfg.batch_norm:   # BatchNorm needs two values per channel
            continue
        loss, logits, y = _frame_loss(model, train, b.clips, b.first, b.count, k, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tot += float(loss.detach()) * y.numel()
        correct += int((logits.argmax(1) == y).sum())
        n += y.numel()
        bar.update(y.numel())
    bar.close()
    train_s = time.perf_counter() - t0
    _recalibrate_bn(model, train, cfg.seed, cfg.bn_windows, k, device)
    held_loss = heldout_loss(model, held, device)
    return dict(epoch=epoch, lr=lr, windows=n, train_loss=tot / max(n, 1), train_acc=correct / max(n, 1),
                heldout_loss=held_loss, improved=False, seconds=time.perf_counter() - t0,
                windows_per_s=n / max(train_s, 1e-9))


def clip_posteriors(model, corpus: Corpus, rows: Sequence[int], signal: str, zcfg: ZFFConfig | None, device: str,
                    echo: Echo) -> tuple[list[int], list[np.ndarray], np.ndarray]:
    """The CNN's own clip decisions (the paper's Table 1): every frame's softmax, summed over the clip.

    Returns ``(kept rows, frame logits per clip ((n_frames, C) each), clip posteriors (n_kept, C))``;
    a clip's posterior is the sum of its frame posteriors divided by its frame count (a
    distribution whose argmax is the paper's clip decision). Unreadable clips are reported and
    left out of ``kept rows``.
    """
    torch = _torch()
    kept, logits, post = [], [], []
    for r in rows:   # one clip at a time: Val of the real corpus does not fit in RAM as float32
        sig, ok = load_signals(corpus, [r], signal, zcfg, echo, "evaluation", bar=False, dtype=np.float32)
        if not ok:
            continue
        lg = clip_logits(model, sig[0], device)
        p = torch.softmax(torch.from_numpy(lg), dim=1).numpy()
        kept.append(int(r)), logits.append(lg), post.append(p.sum(0) / len(p))
    C = int(model.cfg.n_classes)
    return kept, logits, (np.stack(post) if post else np.zeros((0, C)))


def evaluate_clips(model, corpus: Corpus, rows: Sequence[int], labels: np.ndarray, signal: str,
                   zcfg: ZFFConfig | None, device: str, echo: Echo) -> dict:
    """Window-level (every 10 ms frame) and clip-level (argmax of summed frame posteriors,
    :func:`clip_posteriors`) UAR and WAR."""
    kept, logits, post = clip_posteriors(model, corpus, rows, signal, zcfg, device, echo)
    if not kept:
        return {}
    ct, cp = [int(labels[r]) for r in kept], post.argmax(1).tolist()
    wt = np.concatenate([np.full(len(lg), labels[r]) for r, lg in zip(kept, logits)])
    wp = np.concatenate([lg.argmax(1) for lg in logits])
    return {"n_clips": len(ct), "n_windows": int(wt.size),
            "window_uar": uar(wt, wp), "window_war": float(np.mean(wt == wp)),
            "clip_uar": uar(ct, cp), "clip_war": float(np.mean(np.array(ct) == np.array(cp)))}


# =========================================================================== one model
def train_cnn(corpus: Corpus, label_column: str, signal: str, out_path: str | Path, *,
              epochs: int | None = None, device: str = "auto", seed: int = 0, arch: str = "paper",
              model_config: dict | None = None, train_config: TrainConfig | None = None,
              zff_config: ZFFConfig | None = None, evaluate: bool = True, rows: Sequence[int] | None = None,
              echo: Echo = print, extra_meta: dict | None = None, threads: int | None = None) -> Path:
    """Train a CNN on the Train split of ``corpus`` (or on ``rows``) and save it to ``out_path`` (+ ``.json``).

    ``label_column``: see :func:`~exvo.extract.cnn.labels.task_labels`. ``epochs`` caps
    training (None: until lr < 1e-6). ``model_config``: overrides of :class:`CNNConfig`
    fields. ``rows``: corpus rows to train on (default: every labelled Train clip);
    crossfit passes Train minus one fold of speakers. Reports Val window/clip UAR and
    WAR when Val has labels. Same seed, same weights (on one device and thread count).
    """
    with torch_threads(threads):
        return _train_cnn(corpus, label_column, signal, out_path, epochs=epochs, device=device, seed=seed, arch=arch,
                          model_config=model_config, train_config=train_config, zff_config=zff_config,
                          evaluate=evaluate, rows=rows, echo=echo, extra_meta=extra_meta)


def _train_cnn(corpus, label_column, signal, out_path, *, epochs, device, seed, arch, model_config, train_config,
               zff_config, evaluate, rows, echo, extra_meta) -> Path:
    torch = _torch()
    if signal not in SIGNALS:
        raise ValueError(f"--input must be one of {SIGNALS}, got {signal!r}")
    dev = resolve_device(device)
    tcfg = train_config or TrainConfig()
    tcfg = TrainConfig(**{**asdict(tcfg), "seed": seed, "max_epochs": epochs if epochs is not None else tcfg.max_epochs})
    if tcfg.max_epochs is not None and tcfg.max_epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {tcfg.max_epochs}")
    zcfg = (zff_config or ZFFConfig()) if signal == "zff" else None
    labels = task_labels(corpus, label_column)
    tr_rows = np.asarray(corpus.indices("Train") if rows is None else rows, dtype=np.int64)
    tr_rows = tr_rows[labels.y[tr_rows] >= 0]
    if tr_rows.size == 0:
        raise ValueError(f"{corpus.root} has no labelled Train clips for {label_column!r}; "
                         "the task CNN trains on the Train split of the corpus")
    mcfg = CNNConfig(**{"arch": arch, **(model_config or {}), "n_classes": len(labels.classes)})
    t_start = time.perf_counter()
    echo(f"training {Path(out_path).stem}: {signal} CNN ({mcfg.arch}) on {corpus.name} Train ({tr_rows.size} clips), "
         f"labels {labels.source} ({len(labels.classes)} classes"
         f"{f', {labels.n_ties} ties broken by File_ID' if labels.n_ties else ''}), device {dev}, seed {seed}")
    sigs, kept = load_signals(corpus, tr_rows, signal, zcfg, echo, "Train")
    kept = np.asarray(kept, dtype=np.int64)
    pos = np.arange(kept.size)
    held = np.isin(pos, holdout_split(pos, corpus.speakers[kept], _countries(corpus, kept), tcfg.heldout_fraction,
                                      seed)[1])
    ys = labels.y[kept]
    train_pool = FramePool([s for s, h in zip(sigs, held) if not h], ys[~held], mcfg.window, mcfg.hop)
    held_pool = FramePool([s for s, h in zip(sigs, held) if h], ys[held], mcfg.window, mcfg.hop)
    del sigs
    echo(f"  {len(train_pool)} clips for training, {len(held_pool)} for cross-validation "
         f"({np.unique(corpus.speakers[kept][held]).size} speaker(s))")
    meta = {
        "format": FORMAT, "code_version": VERSION, "signal": signal, "classes": labels.classes,
        "label_column": labels.source, "trained_on": corpus.name,
        "model_config": mcfg.to_json(), "train_config": asdict(tcfg),
        "zff_config": zcfg.to_json() if zcfg else None, **(extra_meta or {}),
    }
    torch.manual_seed(seed)
    model = build_model(mcfg).to(dev)
    rms = train_pool.rms()
    with torch.no_grad():
        model.input_scale.fill_(1.0 / rms if rms > 0 else 1.0)
    resume = checkpoint_path(out_path)      # each epoch's state: a killed training goes on from there
    key = checkpoint_key(meta, [corpus.ids[r] for r in kept[~held]], [corpus.ids[r] for r in kept[held]])
    history = fit(model, train_pool, held_pool, tcfg, dev, echo, resume=resume, key=key)
    train_seconds = time.perf_counter() - t_start
    del train_pool, held_pool
    metrics = {}
    val_rows = corpus.indices("Val")
    val_rows = val_rows[labels.y[val_rows] >= 0]
    if evaluate and val_rows.size:
        t0 = time.perf_counter()
        metrics = evaluate_clips(model, corpus, val_rows, labels.y, signal, zcfg, dev, echo)
        metrics["seconds"] = time.perf_counter() - t0
        echo(f"  Val ({metrics.get('n_clips', 0)} clips): window UAR {metrics.get('window_uar', float('nan')):.3f} "
             f"WAR {metrics.get('window_war', float('nan')):.3f} | clip UAR {metrics.get('clip_uar', float('nan')):.3f} "
             f"WAR {metrics.get('clip_war', float('nan')):.3f} (chance UAR {1 / len(labels.classes):.3f})")
    model = model.cpu()
    info = {**meta, "weights_sha256": weights_sha256(model), "train_seconds": train_seconds,
            "speakers_seen": sorted(set(corpus.speakers[kept].tolist())),
            "n_train_clips": int((~held).sum()), "n_heldout_clips": int(held.sum()), "label_ties": labels.n_ties,
            "epochs_run": len(history), "best_heldout_loss": min([h["heldout_loss"] for h in history], default=None),
            "history": history, "val_metrics": metrics, "device": dev}
    save_model(model, meta, info, out_path)
    resume.unlink(missing_ok=True)          # the model is whole: its checkpoint has served
    echo(f"  saved {out_path} ({train_seconds:.1f} s of training, {len(history)} epochs)")
    return Path(out_path)
