"""Task-specific raw-waveform and ZFF-waveform CNNs: train on a corpus, embed with the bottleneck.

Extractors ``raw_exvo_er``, ``zff_exvo_er``, ``raw_exvo_cr``, ``zff_exvo_cr``: a small CNN
is trained end to end on 250 ms windows (4000 samples at 16 kHz) of the raw waveform or
of its zero-frequency-filtered version (:mod:`exvo.extract.zff`) to classify the clip's
hard label (ER: argmax of the 10 emotion intensities; CR: country), on the Train split
of the corpus being extracted. Its 10-unit bottleneck, taken *before* its ReLU, is the
frame-level feature; the window slides with a 10 ms hop (160 samples) and the clip's
embedding is mean ‖ std (ddof = 0) over frames: ``(1, 20)`` float32.

Model (defaults in :class:`CNNConfig`)::

    (B, 4000) ─ SincConv 32 learnable band-pass filters × 101 taps ─ maxpool 4 ─ BN ─ ReLU
              ─ Conv 32×5 ─ maxpool 4 ─ BN ─ ReLU ─ Conv 32×5 ─ maxpool 2 ─ BN ─ ReLU
              ─ Conv 32×5 ─ maxpool 5 ─ BN ─ ReLU ─ flatten (32×23) ─ FC 10 (embedding)
              ─ ReLU ─ FC n_classes          (≈ 23 k parameters)

The sinc layer is smaller than SincNet's 80 × 251 so that an epoch costs seconds on two
CPU cores (its backward pass dominates the cost); cutoffs are parametrised in kHz so
that plain SGD moves them. All convolutions are "valid" (no padding) and the product of
the pooling factors (160) equals the hop, so every frame's feature map is an exact slice
of the feature map of the whole clip: extraction runs the convolutions once per clip
(in chunks for long clips) and applies the FC layer as a strided convolution, ~25×
cheaper than running the 4000-sample frames one by one, with identical numbers
(checked in tests).

Training (:class:`TrainConfig`): a speaker-disjoint 90:10 split of Train, cross-entropy,
SGD with momentum; each epoch draws ``windows_per_clip`` random windows per clip (window
label = clip label). The held-out loss (fixed windows) is measured before training and
after each epoch; whenever it does not improve, the weights go back to the best
checkpoint and the learning rate is halved; training stops when it falls below 1e-6
(from 1e-1), or at the optional epoch cap. The best checkpoint is kept. Val window-level
and clip-level (mean posterior over frames) UAR and WAR are printed and stored. After
each epoch the BatchNorm statistics are re-estimated for the current weights, so the
eval-mode network is the one that was trained. On CPU everything runs on
:data:`DEFAULT_THREADS` intra-op thread(s) unless ``--workers N`` says otherwise.

Files: built-in extractors keep their model per corpus in
``<cache>/<corpus>/models/<name>.pt`` (+ ``<name>.json``: configs, history, metrics),
trained on first use and reused afterwards. :func:`train_custom_cnn` trains on any
labelled corpus and any label column and saves ``<cache>/models/<name>.pt``; that name
then works as an extractor on any corpus (resolved through
:func:`exvo.extract.base.add_resolver`). The cache config holds the sha256 of the
weights, so a retrained model never mixes with embeddings of the old one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from exvo.corpus import SAMPLE_RATE, AudioError, Corpus, load_audio
from exvo.device import resolve_device
from exvo.extract.base import ClipResult, ExtractOptions, Extractor, add_resolver, mean_std, register
from exvo.extract.zff import ZFFConfig, zff
from exvo.metrics import COUNTRIES, EMOTIONS, uar

FORMAT = "exvo-waveform-cnn/1"
VERSION = "1"
SIGNALS = ("raw", "zff")
BUILTIN: dict[str, tuple[str, str]] = {   # name -> (signal, task)
    "raw_exvo_er": ("raw", "er"),
    "zff_exvo_er": ("zff", "er"),
    "raw_exvo_cr": ("raw", "cr"),
    "zff_exvo_cr": ("zff", "cr"),
}
EMOTION_LABEL = "emotion"
"""Pseudo label column: the argmax of the 10 emotion intensities (the ER task)."""

Echo = Callable[[str], None]


def _torch():
    import torch

    return torch


DEFAULT_THREADS = 1
"""Intra-op CPU threads for training and extraction unless told otherwise. One thread:
these convolutions are small, and on a 2-core machine shared with other jobs two OpenMP
threads were measured up to 40× slower than one (threads spin waiting for a descheduled
sibling). ``--workers N`` (``ExtractOptions.workers``) asks for N."""


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op threads (None or 0: :data:`DEFAULT_THREADS`), then restore."""
    torch = _torch()
    old = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else DEFAULT_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# =========================================================================== signals
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


# =========================================================================== model
@dataclass
class CNNConfig:
    """Architecture. Lengths in samples at ``sample_rate`` Hz; ``pools`` one per conv layer.

    ``hop`` must be a multiple of ``prod(pools)`` (frame feature maps are then slices of
    the clip's feature map).
    """

    n_classes: int
    n_filters: int = 32
    filter_len: int = 101
    channels: tuple[int, ...] = (32, 32, 32)
    kernel: int = 5
    pools: tuple[int, ...] = (4, 4, 2, 5)
    bottleneck: int = 10
    window: int = 4000
    hop: int = 160
    sample_rate: int = SAMPLE_RATE
    min_low_hz: float = 30.0
    min_band_hz: float = 50.0

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.pools = tuple(int(p) for p in self.pools)
        if self.n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.n_classes}")
        if len(self.pools) != len(self.channels) + 1:
            raise ValueError(f"need one pool per conv layer: {len(self.channels) + 1} (sinc + {len(self.channels)}), "
                             f"got pools={self.pools}")
        if self.hop % int(np.prod(self.pools)):
            raise ValueError(f"hop {self.hop} must be a multiple of the total pooling {int(np.prod(self.pools))} "
                             "(frame feature maps must align with the clip's)")
        if self.filter_len % 2 == 0:
            raise ValueError(f"sinc filter length must be odd (symmetric filters), got {self.filter_len}")

    @classmethod
    def from_dict(cls, d: dict) -> "CNNConfig":
        return cls(**d)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def _build_model(cfg: CNNConfig):
    torch = _torch()
    nn = torch.nn

    class SincConv1d(nn.Module):
        """Learnable band-pass filters (SincNet-style): ``(B, 1, n)`` → ``(B, n_filters, n - len + 1)``.

        Filter k passes ``[low_k, high_k]`` Hz: the Hamming-windowed difference of two
        ideal low-pass sincs, unit gain in the pass band. ``low = min_low + |a| kHz``,
        ``high = low + min_band + |b| kHz`` (clamped to Nyquist), initialised on the mel scale.
        """

        def __init__(self):
            super().__init__()
            sr, n = cfg.sample_rate, cfg.n_filters
            top = sr / 2 - (cfg.min_low_hz + cfg.min_band_hz)
            edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.min_low_hz), _hz_to_mel(top), n + 1))
            self.low_khz = nn.Parameter(torch.tensor((edges[:-1] - cfg.min_low_hz) / 1000.0, dtype=torch.float32))
            self.band_khz = nn.Parameter(torch.tensor(np.diff(edges) / 1000.0, dtype=torch.float32))
            half = (cfg.filter_len - 1) // 2
            self.register_buffer("t", torch.arange(-half, half + 1, dtype=torch.float32) / sr, persistent=False)
            self.register_buffer("win", torch.hamming_window(cfg.filter_len, periodic=False), persistent=False)

        def cutoffs(self):
            """``(low, high)`` in Hz, each ``(n_filters,)``."""
            low = cfg.min_low_hz + 1000.0 * self.low_khz.abs()
            high = torch.clamp(low + cfg.min_band_hz + 1000.0 * self.band_khz.abs(), max=cfg.sample_rate / 2)
            return low, high

        def filters(self):
            """``(n_filters, filter_len)`` impulse responses."""
            low, high = self.cutoffs()
            t = self.t[None, :]
            centre = t == 0
            ts = torch.where(centre, torch.ones_like(t), t)
            two_pi = 2 * np.pi
            h = (torch.sin(two_pi * high[:, None] * ts) - torch.sin(two_pi * low[:, None] * ts)) / (np.pi * ts * cfg.sample_rate)
            h = torch.where(centre, 2 * (high - low)[:, None] / cfg.sample_rate, h)
            return h * self.win

        def forward(self, x):
            return torch.nn.functional.conv1d(x, self.filters()[:, None, :])

    class WaveformCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = cfg
            self.sinc = SincConv1d()
            self.front = nn.Sequential(nn.MaxPool1d(cfg.pools[0]), nn.BatchNorm1d(cfg.n_filters), nn.ReLU())
            layers, c_in = [], cfg.n_filters
            for c, p in zip(cfg.channels, cfg.pools[1:]):
                layers.append(nn.Sequential(nn.Conv1d(c_in, c, cfg.kernel), nn.MaxPool1d(p), nn.BatchNorm1d(c), nn.ReLU()))
                c_in = c
            self.convs = nn.Sequential(*layers)
            n = cfg.window - cfg.filter_len + 1
            n //= cfg.pools[0]
            for p in cfg.pools[1:]:
                n = (n - cfg.kernel + 1) // p
            if n < 1:
                raise ValueError(f"window {cfg.window} too short for filters/pools {cfg}")
            self.span = n                                  # feature-map positions per window
            self.step = cfg.hop // int(np.prod(cfg.pools))  # positions per hop
            self.fc = nn.Linear(c_in * n, cfg.bottleneck)
            self.out = nn.Linear(cfg.bottleneck, cfg.n_classes)

        def feature_map(self, x):
            """``(B, n_samples)`` → ``(B, C, T)`` (valid convolutions)."""
            return self.convs(self.front(self.sinc(x[:, None, :])))

        def forward(self, x):
            """``(B, window)`` → ``(logits (B, n_classes), embedding (B, bottleneck))`` (pre-ReLU)."""
            emb = self.fc(self.feature_map(x).flatten(1))
            return self.out(torch.relu(emb)), emb

        def frame_embeddings(self, x):
            """``(B, n)`` with ``n >= window`` → ``(B, n_frames, bottleneck)``, frames every ``hop`` samples.

            ``n_frames = 1 + (n - window) // hop``; equals running :meth:`forward` on each frame.
            """
            n_frames = 1 + (x.shape[-1] - cfg.window) // cfg.hop
            fm = self.feature_map(x)
            w = self.fc.weight.view(cfg.bottleneck, -1, self.span)
            e = torch.nn.functional.conv1d(fm, w, self.fc.bias, stride=self.step)
            if e.shape[-1] < n_frames:  # cannot happen with valid convs + aligned pools
                raise RuntimeError(f"feature map gives {e.shape[-1]} frames, expected {n_frames}")
            return e[:, :, :n_frames].transpose(1, 2)

    return WaveformCNN()


def build_model(cfg: CNNConfig):
    """A fresh :class:`torch.nn.Module` for ``cfg`` (seed torch before calling for reproducibility)."""
    return _build_model(cfg)


def weights_sha256(model) -> str:
    """sha256 over parameter/buffer names, shapes and float32 bytes (independent of file layout)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        a = v.detach().cpu().contiguous().numpy()
        h.update(f"{k}:{a.dtype}:{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def clip_embeddings(model, x: np.ndarray, device: str = "cpu", chunk_frames: int = 256) -> tuple[np.ndarray, str | None]:
    """Frame embeddings of one clip's model input ``x`` ``(n,)`` → ``((n_frames, bottleneck) float32, note)``.

    Clips shorter than the window are zero-padded to it (one frame) and get a note.
    Long clips go through the convolutions ``chunk_frames`` frames at a time.
    """
    torch = _torch()
    cfg = model.cfg
    note = None
    if x.size < cfg.window:
        note = (f"padded: {x.size / cfg.sample_rate:.3f} s is shorter than the CNN's "
                f"{cfg.window / cfg.sample_rate:.3f} s window; zero-padded to it")
        x = np.pad(x, (0, cfg.window - x.size))
    n_frames = 1 + (x.size - cfg.window) // cfg.hop
    out = []
    with torch.no_grad():
        for a in range(0, n_frames, chunk_frames):
            b = min(n_frames, a + chunk_frames)
            seg = torch.from_numpy(np.ascontiguousarray(x[a * cfg.hop: (b - 1) * cfg.hop + cfg.window], dtype=np.float32))
            out.append(model.frame_embeddings(seg[None].to(device))[0].float().cpu().numpy())
    return np.concatenate(out), note


def clip_logits(model, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """``(n_frames, n_classes)`` logits of one clip's model input (frames as in :func:`clip_embeddings`)."""
    torch = _torch()
    e, _ = clip_embeddings(model, x, device)
    with torch.no_grad():
        return model.out(torch.relu(torch.from_numpy(e).to(device))).cpu().numpy()


# =========================================================================== labels
@dataclass
class Labels:
    """Hard labels of every corpus row: ``y`` ``(n_clips,)`` int, -1 where missing; ``classes`` names."""

    y: np.ndarray
    classes: list[str]
    source: str          # "emotion" (argmax), "Country", or a CSV column


def task_labels(corpus: Corpus, label_column: str) -> Labels:
    """Class labels from ``label_column``: ``"emotion"`` (argmax of the 10 intensities),
    ``"Country"`` (names of the 4 codes) or any other column of ``data_info.csv`` (strings;
    empty cells are unlabelled)."""
    if label_column == EMOTION_LABEL and EMOTION_LABEL not in corpus.extra:
        ok = np.isfinite(corpus.emotions).all(axis=1)
        y = np.where(ok, np.nan_to_num(corpus.emotions).argmax(axis=1), -1)
        return Labels(y.astype(np.int64), list(EMOTIONS), EMOTION_LABEL)
    if label_column == "Country":
        return Labels(corpus.country.astype(np.int64), list(COUNTRIES), "Country")
    if label_column in ("Subject_ID", "File_ID", "Split"):
        raise ValueError(f"--label-column {label_column!r} cannot be a class label here (training holds out whole "
                         "speakers and needs a label shared across them)")
    if label_column not in corpus.extra:
        cols = sorted(corpus.extra) + ["Country", EMOTION_LABEL]
        raise ValueError(f"label column {label_column!r} not found in {corpus.root}/data_info.csv; "
                         f"available: {', '.join(cols)}")
    raw = np.array([str(v).strip() for v in corpus.extra[label_column]], dtype=object)
    classes = sorted({v for v in raw if v})
    if len(classes) < 2:
        raise ValueError(f"label column {label_column!r} has {len(classes)} distinct non-empty value(s); "
                         "a classifier needs at least 2")
    pos = {c: k for k, c in enumerate(classes)}
    y = np.array([pos.get(v, -1) for v in raw], dtype=np.int64)
    return Labels(y, classes, label_column)


# =========================================================================== training
@dataclass
class TrainConfig:
    """Training settings (saved with the model).

    ``windows_per_clip``: random 250 ms windows per Train clip per epoch.
    ``max_epochs``: optional cap (None: until the lr falls below ``lr_min``).
    ``heldout_speakers``: fraction of Train speakers held out for model selection.
    ``heldout_windows``: fixed, evenly spaced windows per held-out clip.
    ``bn_windows``: see :func:`_recalibrate_bn`.
    """

    seed: int = 0
    windows_per_clip: int = 1
    batch_size: int = 32
    lr_start: float = 0.1
    lr_min: float = 1e-6
    momentum: float = 0.9
    grad_clip: float = 5.0
    max_epochs: int | None = None
    heldout_speakers: float = 0.1
    heldout_windows: int = 4
    improvement: float = 1e-4       # relative decrease of the held-out loss that counts as better
    bn_windows: int = 256           # fixed training windows that re-estimate BatchNorm statistics after each epoch


class _Pool:
    """Model inputs of a set of clips, one float16 buffer (halves RAM: ExVo Train ≈ 1.4 GB).

    Clips shorter than the window are zero-padded to it.
    """

    def __init__(self, signals: list[np.ndarray], labels: np.ndarray, window: int):
        lens = np.array([max(s.size, window) for s in signals], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(lens)[:-1]))
        self.lens = lens
        self.data = np.zeros(int(lens.sum()), dtype=np.float16)
        for o, s in zip(self.offsets, signals):
            self.data[o: o + s.size] = s
        self.y = np.asarray(labels, dtype=np.int64)
        self.window = window

    def __len__(self) -> int:
        return len(self.y)

    def windows(self, clips: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """``(B, window)`` float32 of clip ``clips[i]`` from sample ``starts[i]``."""
        idx = (self.offsets[clips] + starts)[:, None] + np.arange(self.window)
        return self.data[idx].astype(np.float32)

    def random_starts(self, clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.lens[clips] - self.window + 1)

    def even_starts(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` evenly spaced windows per clip → ``(clips, starts)``."""
        clips, starts = [], []
        for c, n in enumerate(self.lens):
            m = min(k, 1 + (n - self.window) // (self.window // 2))
            s = np.linspace(0, n - self.window, m).round().astype(np.int64)
            clips.append(np.full(m, c)), starts.append(s)
        return np.concatenate(clips), np.concatenate(starts)


def _load_signals(corpus: Corpus, rows: np.ndarray, signal: str, zcfg: ZFFConfig | None,
                  echo: Echo, what: str, bar: bool = True, dtype=np.float32) -> tuple[list[np.ndarray], list[int]]:
    """Decode and convert ``rows`` to ``dtype``; unreadable clips are reported and skipped.

    Returns ``(signals, kept rows)``.
    """
    import sys

    from tqdm import tqdm

    out, kept = [], []
    for r in tqdm(rows, desc=f"load {what}", unit="clip", disable=not (bar and sys.stderr.isatty()), leave=False):
        try:
            wav = load_audio(corpus.audio_path(corpus.ids[r]))
        except AudioError as e:
            echo(f"  skipped {corpus.ids[r]} ({what}): {e.reason}")
            continue
        out.append(prepare_signal(wav, signal, zcfg).astype(dtype, copy=False))
        kept.append(int(r))
    return out, kept


def _heldout_split(speakers: np.ndarray, frac: float, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over rows: True for rows of the held-out speakers (≥ 1 speaker, < all).

    With ``labels``, speakers are drawn round-robin over their majority label, and the
    held-out set gets at least one speaker per label while that leaves ≥ 75 % of the
    speakers for training: on a small corpus (30 speakers, 4 countries) a plain 10 %
    draw of 3 speakers cannot show every class, and model selection then ignores some.
    """
    spk = np.unique(speakers)
    if spk.size < 2:
        raise ValueError(f"training needs Train clips from at least 2 speakers (a speaker-disjoint held-out "
                         f"set), found {spk.size}")
    rng = np.random.default_rng([seed, 90_10])
    n = max(1, int(round(frac * spk.size)))
    order = rng.permutation(spk)
    if labels is not None:
        major = {s: np.bincount(labels[speakers == s]).argmax() for s in order}
        groups = [[s for s in order if major[s] == c] for c in rng.permutation(sorted(set(major.values())))]
        order = np.array([g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)])
        n = max(n, min(len(groups), spk.size // 4))
    n = min(spk.size - 1, n)
    held = order[:n]
    return np.isin(speakers, held)


def _evaluate_loss(model, pool: _Pool, clips, starts, device, batch: int = 128) -> float:
    torch = _torch()
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for a in range(0, len(clips), batch):
            c, s = clips[a: a + batch], starts[a: a + batch]
            x = torch.from_numpy(pool.windows(c, s)).to(device)
            logits, _ = model(x)
            y = torch.from_numpy(pool.y[c]).to(device)
            tot += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            n += len(c)
    return tot / max(n, 1)


def _recalibrate_bn(model, pool: _Pool, clips: np.ndarray, starts: np.ndarray, device: str, batch: int = 64) -> None:
    """Re-estimate BatchNorm statistics for the current weights from the given training windows.

    The running averages kept during training lag behind the weights ("precise BN");
    with few steps per epoch the eval-mode network then differs from the trained one.
    The windows are the same after every epoch, so the held-out loss moves only when
    the weights do (random windows would add noise to model selection).
    """
    torch = _torch()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if not bns:
        return
    old = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None            # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for a in range(0, len(clips), batch):
            if len(clips[a: a + batch]) >= 2:
                model(torch.from_numpy(pool.windows(clips[a: a + batch], starts[a: a + batch])).to(device))
    for m, mo in zip(bns, old):
        m.momentum = mo
    model.eval()


def fit(model, train: _Pool, held: _Pool, cfg: TrainConfig, device: str, echo: Echo) -> list[dict]:
    """Train ``model`` in place (ends at the best held-out checkpoint); returns per-epoch history."""
    import copy

    torch = _torch()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_start, momentum=cfg.momentum)
    h_clips, h_starts = held.even_starts(cfg.heldout_windows)
    bn_rng = np.random.default_rng([cfg.seed, 0])
    bn_clips = bn_rng.integers(0, len(train), max(2, min(cfg.bn_windows, len(train) * cfg.windows_per_clip)))
    bn_starts = train.random_starts(bn_clips, bn_rng)
    best = _evaluate_loss(model, held, h_clips, h_starts, device)
    best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    lr, epoch, history = cfg.lr_start, 0, []
    echo(f"  held-out loss before training {best:.4f} (chance: {np.log(model.cfg.n_classes):.4f})")
    while lr >= cfg.lr_min and (cfg.max_epochs is None or epoch < cfg.max_epochs):
        epoch += 1
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        clips = rng.permutation(np.repeat(np.arange(len(train)), cfg.windows_per_clip))
        starts = train.random_starts(clips, rng)
        model.train()
        tot, correct = 0.0, 0
        for a in range(0, len(clips), cfg.batch_size):
            c, s = clips[a: a + cfg.batch_size], starts[a: a + cfg.batch_size]
            if len(c) < 2:   # BatchNorm needs two windows
                continue
            x = torch.from_numpy(train.windows(c, s)).to(device)
            y = torch.from_numpy(train.y[c]).to(device)
            logits, _ = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            tot += float(loss.detach()) * len(c)
            correct += int((logits.argmax(1) == y).sum())
        _recalibrate_bn(model, train, bn_clips, bn_starts, device)
        held_loss = _evaluate_loss(model, held, h_clips, h_starts, device)
        improved = bool(np.isfinite(held_loss) and held_loss < best - cfg.improvement * abs(best))
        rec = dict(epoch=epoch, lr=lr, train_loss=tot / len(clips), train_acc=correct / len(clips),
                   heldout_loss=held_loss, improved=improved, seconds=time.perf_counter() - t0)
        history.append(rec)
        echo(f"  epoch {epoch:3d} lr {lr:.2e}: train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.3f}, "
             f"held-out loss {held_loss:.4f}{' *' if improved else ''} [{rec['seconds']:.1f} s]")
        if improved:
            best = held_loss
            best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        else:  # plateau: back to the best weights, smaller steps
            model.load_state_dict(best_state[0])
            opt.load_state_dict(best_state[1])
            lr /= 2
            for g in opt.param_groups:
                g["lr"] = lr
    model.load_state_dict(best_state[0])
    model.eval()
    return history


def evaluate_clips(model, corpus: Corpus, rows: Sequence[int], labels: np.ndarray, signal: str,
                   zcfg: ZFFConfig | None, device: str, echo: Echo) -> dict:
    """Window-level (every 10 ms frame) and clip-level (mean posterior) UAR and WAR on ``rows``."""
    torch = _torch()
    wt, wp, ct, cp, kept = [], [], [], [], []
    for r in rows:   # one clip at a time: Val of the real corpus does not fit in RAM as float32
        sig, ok = _load_signals(corpus, np.asarray([r]), signal, zcfg, echo, "evaluation", bar=False)
        if not ok:
            continue
        kept.append(r)
        lg = clip_logits(model, sig[0], device)
        p = torch.softmax(torch.from_numpy(lg), dim=1).numpy()
        wt.append(np.full(len(lg), labels[r])), wp.append(lg.argmax(1))
        ct.append(labels[r]), cp.append(int(p.mean(0).argmax()))
    if not kept:
        return {}
    wt, wp = np.concatenate(wt), np.concatenate(wp)
    return {"n_clips": len(kept), "n_windows": int(wt.size),
            "window_uar": uar(wt, wp), "window_war": float(np.mean(wt == wp)),
            "clip_uar": uar(ct, cp), "clip_war": float(np.mean(np.array(ct) == np.array(cp)))}


def train_cnn(corpus: Corpus, label_column: str, signal: str, out_path: str | Path, *,
              epochs: int | None = None, device: str = "auto", seed: int = 0,
              model_config: dict | None = None, train_config: TrainConfig | None = None,
              zff_config: ZFFConfig | None = None, evaluate: bool = True,
              echo: Echo = print, extra_meta: dict | None = None, threads: int | None = None) -> Path:
    """Train a CNN on the Train split of ``corpus`` and save it to ``out_path`` (+ ``.json``).

    ``label_column``: see :func:`task_labels`. ``epochs`` caps training (None: until
    lr < 1e-6). ``model_config``: overrides of :class:`CNNConfig` fields. Reports Val
    window/clip UAR and WAR when Val has labels. Same seed, same weights (on one device
    and thread count). ``threads``: CPU intra-op threads (None: :data:`DEFAULT_THREADS`).
    """
    with torch_threads(threads):
        return _train_cnn(corpus, label_column, signal, out_path, epochs=epochs, device=device, seed=seed,
                          model_config=model_config, train_config=train_config, zff_config=zff_config,
                          evaluate=evaluate, echo=echo, extra_meta=extra_meta)


def _train_cnn(corpus, label_column, signal, out_path, *, epochs, device, seed, model_config, train_config,
               zff_config, evaluate, echo, extra_meta) -> Path:
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
    tr_rows = corpus.indices("Train")
    tr_rows = tr_rows[labels.y[tr_rows] >= 0]
    if tr_rows.size == 0:
        raise ValueError(f"{corpus.root} has no labelled Train clips for {label_column!r}; "
                         "the task CNN trains on the Train split of the corpus")
    mcfg = CNNConfig(**{**(model_config or {}), "n_classes": len(labels.classes)})
    t_start = time.perf_counter()
    echo(f"training {Path(out_path).stem}: {signal} CNN on {corpus.name} Train ({tr_rows.size} clips), "
         f"labels {labels.source} ({len(labels.classes)} classes), device {dev}, seed {seed}")
    held_mask = _heldout_split(corpus.speakers[tr_rows], tcfg.heldout_speakers, seed, labels.y[tr_rows])
    sigs, kept = _load_signals(corpus, tr_rows, signal, zcfg, echo, "Train", dtype=np.float16)
    kept_mask = np.isin(tr_rows, kept)
    held_mask = held_mask[kept_mask]
    ys = labels.y[np.asarray(kept)]
    train_pool = _Pool([s for s, h in zip(sigs, held_mask) if not h], ys[~held_mask], mcfg.window)
    held_pool = _Pool([s for s, h in zip(sigs, held_mask) if h], ys[held_mask], mcfg.window)
    del sigs
    echo(f"  {len(train_pool)} clips for training, {len(held_pool)} held out "
         f"({np.unique(corpus.speakers[np.asarray(kept)][held_mask]).size} speaker(s))")
    torch.manual_seed(seed)
    model = build_model(mcfg).to(dev)
    history = fit(model, train_pool, held_pool, tcfg, dev, echo)
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
    meta = {
        "format": FORMAT, "code_version": VERSION, "signal": signal, "classes": labels.classes,
        "label_column": labels.source, "trained_on": corpus.name,
        "model_config": asdict(mcfg), "train_config": asdict(tcfg),
        "zff_config": zcfg.to_json() if zcfg else None, **(extra_meta or {}),
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    torch.save({**meta, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, out)
    info = {**meta, "weights_sha256": weights_sha256(model), "train_seconds": train_seconds,
            "epochs_run": len(history), "best_heldout_loss": min([h["heldout_loss"] for h in history], default=None),
            "history": history, "val_metrics": metrics, "device": dev}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    echo(f"  saved {out} ({train_seconds:.1f} s of training, {len(history)} epochs)")
    return out


@dataclass
class LoadedModel:
    model: object
    meta: dict
    sha256: str
    path: Path


def load_model(path: str | Path) -> LoadedModel:
    """Load a saved CNN (CPU, eval mode); a wrong or damaged file raises ``ValueError`` saying so."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trained CNN at {path}; train it with `exvo train-cnn` or `exvo extract`")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable exvo CNN ({type(e).__name__}: {e}); delete it and retrain") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path} is not an exvo waveform CNN (format {d.get('format') if isinstance(d, dict) else '?'}, "
                         f"expected {FORMAT}); delete it and retrain")
    mcfg = CNNConfig.from_dict(d["model_config"])
    model = build_model(mcfg)
    model.load_state_dict(d["state_dict"])
    model.eval()
    meta = {k: v for k, v in d.items() if k != "state_dict"}
    return LoadedModel(model, meta, weights_sha256(model), path)


# =========================================================================== extractor
class WaveformCNNExtractor(Extractor):
    """Frame-level bottleneck of a trained raw/ZFF CNN, pooled to mean ‖ std: ``(1, 2 * 10)``.

    Built-in names train on the extracted corpus in :meth:`prepare`; custom names load
    ``model_path`` (trained by :func:`train_custom_cnn`).
    """

    version = VERSION

    def __init__(self, name: str, opts: ExtractOptions, signal: str | None = None, task: str | None = None,
                 model_path: Path | None = None, echo: Echo | None = None):
        self.name = name
        self.opts = opts
        self.signal = signal
        self.task = task
        self.model_path = Path(model_path) if model_path is not None else None
        self.echo = echo or _stderr_echo
        self.loaded: LoadedModel | None = None
        self.device = "cpu"

    # ------------------------------------------------------------ model
    def prepare(self, corpus: Corpus, cache_dir: Path) -> None:
        if self.task is not None:   # built-in: one model per corpus, trained on its Train split
            path = Path(cache_dir) / corpus.name / "models" / f"{self.name}.pt"
            if not path.is_file():
                train_cnn(corpus, EMOTION_LABEL if self.task == "er" else "Country", self.signal, path,
                          epochs=self.opts.train_epochs, device=self.opts.device, seed=self.opts.seed,
                          echo=self.echo, extra_meta={"extractor": self.name}, threads=self.opts.workers)
            else:
                self.echo(f"{self.name}: using the trained model {path} (delete it to retrain)")
            self.model_path = path
        self._load()

    def _load(self) -> None:
        if self.loaded is not None:
            return
        if self.model_path is None:
            raise RuntimeError(f"{self.name}: call prepare(corpus, cache_dir) first (it trains or finds the model)")
        self.loaded = load_model(self.model_path)
        sig = self.loaded.meta["signal"]
        if self.signal is not None and sig != self.signal:
            raise ValueError(f"{self.model_path} is a {sig} CNN but {self.name} expects {self.signal}; delete it and retrain")
        self.signal = sig
        self.device = resolve_device(self.opts.device)
        self.loaded.model.to(self.device)

    def _zff_config(self) -> ZFFConfig | None:
        z = self.loaded.meta.get("zff_config")
        return ZFFConfig(**z) if z else None

    def config(self) -> dict:
        self._load()
        m = self.loaded.meta
        mc = m["model_config"]
        return {
            "family": "waveform_cnn", "code_version": VERSION, "signal": m["signal"],
            "classes": m["classes"], "label_column": m["label_column"], "trained_on": m["trained_on"],
            "weights_sha256": self.loaded.sha256, "model_config": mc, "zff_config": m.get("zff_config"),
            "sample_rate": mc["sample_rate"], "frame_samples": mc["window"], "hop_samples": mc["hop"],
            "embedding": f"pre-activation {mc['bottleneck']}-unit bottleneck per frame",
            "pooling": "mean||std (ddof=0) over frames", "short_clips": "zero-padded to one frame",
        }

    # ------------------------------------------------------------ embedding
    def embed_with_note(self, wav: np.ndarray) -> tuple[np.ndarray, str | None]:
        """``wav`` ``(n,)`` 16 kHz → ``((1, 2 * bottleneck) float32, note or None)``."""
        self._load()
        x = prepare_signal(wav, self.signal, self._zff_config())
        with torch_threads(self.opts.workers):
            frames, note = clip_embeddings(self.loaded.model, x, self.device)
        return mean_std(frames)[None, :], note

    def embed(self, wav: np.ndarray) -> np.ndarray:
        return self.embed_with_note(wav)[0]

    def run(self, items: Sequence[tuple[str, Path]]) -> Iterator[ClipResult]:
        self._load()
        for cid, path in items:
            try:
                wav = load_audio(path)
            except AudioError as e:
                yield ClipResult(cid, error=e.reason)
                continue
            sec = wav.size / SAMPLE_RATE
            try:
                emb, note = self.embed_with_note(wav)
            except Exception as e:  # one bad clip must not stop the run
                yield ClipResult(cid, error=f"{type(e).__name__}: {e}", seconds=sec)
                continue
            yield ClipResult(cid, embedding=emb, seconds=sec, note=note)


def _stderr_echo(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


@register(*BUILTIN, help={
    n: f"{sig} waveform CNN trained on this corpus's Train split for "
       f"{'emotion' if task == 'er' else 'country'} ({task.upper()}); 20 dims"
    for n, (sig, task) in BUILTIN.items()})
def _make_builtin(name: str, opts: ExtractOptions) -> Extractor:
    signal, task = BUILTIN[name]
    return WaveformCNNExtractor(name, opts, signal=signal, task=task)


_SAFE = re.compile(r"[A-Za-z0-9_.@-]+")


def custom_model_path(cache_dir: str | Path, name: str) -> Path:
    """Where :func:`train_custom_cnn` keeps model ``name``: ``<cache>/models/<name>.pt``."""
    if not _SAFE.fullmatch(name):
        raise ValueError(f"CNN name {name!r} must be a safe file name (letters, digits, _ . @ -)")
    return Path(cache_dir) / "models" / f"{name}.pt"


@add_resolver
def _resolve_custom(name: str, cache_dir: Path | None):
    """Factory for a custom CNN saved under ``<cache>/models/<name>.pt`` (default cache: ./cache)."""
    if not _SAFE.fullmatch(name):
        return None
    path = custom_model_path(cache_dir if cache_dir is not None else Path("cache"), name)
    if not path.is_file():
        return None

    def factory(n: str, opts: ExtractOptions) -> Extractor:
        return WaveformCNNExtractor(n, opts, model_path=path)

    return factory


def train_custom_cnn(corpus: Corpus, *, name: str, label_column: str, signal: str = "raw",
                     cache_dir: str | Path = "cache", epochs: int | None = None, device: str = "auto",
                     seed: int = 0, echo: Echo = print, model_config: dict | None = None,
                     train_config: TrainConfig | None = None, threads: int | None = None) -> Path:
    """Train a raw/ZFF CNN on ``corpus`` (any layout-conforming corpus, any label column) and
    save it as extractor ``name`` in ``<cache>/models/<name>.pt``; returns that path.

    The model records its input signal and class names; ``exvo extract --model NAME``
    (with the same ``--cache``) then embeds any corpus with it.
    """
    from exvo.extract.base import names

    if name in names():
        raise ValueError(f"{name!r} is a built-in extractor; choose another name for a custom CNN (e.g. {signal}_mytask)")
    path = custom_model_path(cache_dir, name)
    if path.exists():
        echo(f"note: replacing {path}; caches extracted with the old model will be refused (their weights hash differs)")
    return train_cnn(corpus, label_column, signal, path, epochs=epochs, device=device, seed=seed,
                     model_config=model_config, train_config=train_config, echo=echo,
                     extra_meta={"extractor": name}, threads=threads)
