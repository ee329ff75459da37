"""The task CNN: architecture, the sliced whole-clip forward pass, weights hash, filter responses.

Two architectures (``CNNConfig.arch``); both take 250 ms windows (4000 samples at 16 kHz)
of the raw or ZFF waveform, end in a 10-unit fully connected layer whose output *before*
its ReLU is the frame embedding, then a ReLU and the output layer (softmax in the loss).

``paper`` (default; the Idiap paper's "four convolutional layers followed by a fully
connected layer with ten nodes", all ReLU). The paper gives no kernel sizes; we follow
Idiap's sub-segmental raw-waveform CNNs: a first layer of ~2 ms kernels (30 samples)
with a 10-sample stride, then 7-tap layers::

    (B, 4000) ─ ×input_scale ─ Conv 32×30 /10 ─ maxpool 2 ─ BN ─ ReLU
              ─ [Conv 32×7 ─ maxpool 2 ─ BN ─ ReLU] × 3 ─ flatten (32×19) ─ FC 10 (embedding)
              ─ ReLU ─ FC n_classes                       (≈ 29 k parameters)

BatchNorm after each convolution is not in the paper. Without it (``batch_norm=False``:
conv, ReLU, pool) the ER CNNs learn, but on the demo corpus the CR CNNs did not leave
chance: train loss 1.37-1.38 (chance 1.386) for 6 all-frames epochs while the lr was
halved to 3e-3; with it the raw CR cross-validation loss fell from 1.38 to 0.55 in 2
epochs (benchmarks/README.md).

``sinc`` (the SincNet-style front end exvo shipped first)::

    (B, 4000) ─ ×input_scale ─ SincConv 32 band-pass × 101 taps ─ maxpool 4 ─ BN ─ ReLU
              ─ [Conv 32×5 ─ maxpool p ─ BN ─ ReLU] × 3 (p = 4, 2, 5) ─ FC 10 ─ ReLU ─ FC n_classes

``input_scale`` is one number fixed before training (1 / RMS of the training signals)
so that SGD at lr 0.1 sees O(1) inputs without normalising clips one by one (loudness
stays informative).

Slicing. All convolutions are "valid", only the first has a stride, and the total
down-sampling (stride × pools = 160) divides the 10 ms hop, so the feature map of
every frame is an exact slice of the feature map of a longer segment.
:meth:`frame_embeddings` runs the convolutions once over a segment and applies the FC
layer as a strided convolution: ``k`` consecutive frames cost about
``(4000 + (k-1)·160) / 4000`` windows instead of ``k``. Training (on chunks of
consecutive frames) and extraction use this same path; tests check it equals running
every 4000-sample frame through :meth:`forward`.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
import numpy as np

from exvo.corpus import SAMPLE_RATE

ARCHS = ("paper", "sinc")
_DEFAULTS = {
    "paper": dict(channels=(32, 32, 32, 32), kernels=(30, 7, 7, 7), stride=10, pools=(2, 2, 2, 2), batch_norm=True),
    "sinc": dict(channels=(32, 32, 32, 32), kernels=(101, 5, 5, 5), stride=1, pools=(4, 4, 2, 5), batch_norm=True),
}


def arch_defaults(arch: str) -> dict:
    """The layer settings ``arch`` uses for fields left at None (JSON-able)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _DEFAULTS[arch].items()}


def _torch():
    import torch

    return torch


@dataclass
class CNNConfig:
    """Architecture (saved with the model). Lengths in samples at ``sample_rate`` Hz.

    ``channels``/``kernels``/``pools``: one per conv layer (the first is the sinc layer for
    ``arch="sinc"``); ``stride``: of the first layer only. ``None`` fields take the
    defaults of ``arch`` (see the module docstring). ``hop`` must be a multiple of
    ``stride × prod(pools)``.
    """

    n_classes: int
    arch: str = "paper"
    channels: tuple[int, ...] | None = None
    kernels: tuple[int, ...] | None = None
    stride: int | None = None
    pools: tuple[int, ...] | None = None
    batch_norm: bool | None = None
    bottleneck: int = 10
    window: int = 4000
    hop: int = 160
    sample_rate: int = SAMPLE_RATE
    min_low_hz: float = 30.0      # sinc only: lowest cutoff
    min_band_hz: float = 50.0     # sinc only: narrowest band

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown CNN architecture {self.arch!r}; expected one of {ARCHS}")
        for k, v in _DEFAULTS[self.arch].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        self.channels = tuple(int(c) for c in self.channels)
        self.kernels = tuple(int(c) for c in self.kernels)
        self.pools = tuple(int(p) for p in self.pools)
        self.stride, self.batch_norm = int(self.stride), bool(self.batch_norm)
        if self.n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.n_classes}")
        if not len(self.channels) == len(self.kernels) == len(self.pools):
            raise ValueError(f"need one channel count, kernel and pool per conv layer; got channels={self.channels}, "
                             f"kernels={self.kernels}, pools={self.pools}")
        if self.hop % self.downsampling:
            raise ValueError(f"hop {self.hop} must be a multiple of the total pooling {self.downsampling} "
                             "(frame feature maps must align with the clip's)")
        if self.arch == "sinc" and self.kernels[0] % 2 == 0:
            raise ValueError(f"sinc filter length must be odd (symmetric filters), got {self.kernels[0]}")
        if self.span < 1:
            raise ValueError(f"window {self.window} too short for kernels {self.kernels} and pools {self.pools}")

    @property
    def downsampling(self) -> int:
        """Input samples per position of the last feature map."""
        return int(self.stride * np.prod(self.pools))

    @property
    def span(self) -> int:
        """Positions of the last feature map that one window covers."""
        n = (self.window - self.kernels[0]) // self.stride + 1
        n //= self.pools[0]
        for k, p in zip(self.kernels[1:], self.pools[1:]):
            n = (n - k + 1) // p
        return n

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CNNConfig":
        return cls(**d)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def _build(cfg: CNNConfig):
    torch = _torch()
    nn = torch.nn

    class SincConv1d(nn.Module):
        """Learnable band-pass filters (SincNet-style): ``(B, 1, n)`` → ``(B, n_filters, n - len + 1)``.

        Filter k passes ``[low_k, high_k]`` Hz: the Hamming-windowed difference of two
        ideal low-pass sincs, unit gain in the pass band. ``low = min_low + |a| kHz``,
        ``high = low + min_band + |b| kHz`` (clamped to Nyquist), initialised on the mel
        scale; kHz units so that plain SGD moves the cutoffs.
        """

        def __init__(self):
            super().__init__()
            sr, n, flen = cfg.sample_rate, cfg.channels[0], cfg.kernels[0]
            top = sr / 2 - (cfg.min_low_hz + cfg.min_band_hz)
            edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.min_low_hz), _hz_to_mel(top), n + 1))
            self.low_khz = nn.Parameter(torch.tensor((edges[:-1] - cfg.min_low_hz) / 1000.0, dtype=torch.float32))
            self.band_khz = nn.Parameter(torch.tensor(np.diff(edges) / 1000.0, dtype=torch.float32))
            half = (flen - 1) // 2
            self.register_buffer("t", torch.arange(-half, half + 1, dtype=torch.float32) / sr, persistent=False)
            self.register_buffer("win", torch.hamming_window(flen, periodic=False), persistent=False)

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

    def block(conv, c, p):
        # sinc keeps its original order (pool, BN, ReLU); paper: conv, ReLU, pool (as Keras stacks)
        if cfg.batch_norm:
            return nn.Sequential(conv, nn.MaxPool1d(p), nn.BatchNorm1d(c), nn.ReLU())
        return nn.Sequential(conv, nn.ReLU(), nn.MaxPool1d(p))

    class WaveformCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = cfg
            self.register_buffer("input_scale", torch.ones(()))
            c0 = cfg.channels[0]
            first = SincConv1d() if cfg.arch == "sinc" else nn.Conv1d(1, c0, cfg.kernels[0], stride=cfg.stride)
            layers, c_in = [block(first, c0, cfg.pools[0])], c0
            for c, k, p in zip(cfg.channels[1:], cfg.kernels[1:], cfg.pools[1:]):
                layers.append(block(nn.Conv1d(c_in, c, k), c, p))
                c_in = c
            self.convs = nn.Sequential(*layers)
            self.span = cfg.span                                 # feature-map positions per window
            self.step = cfg.hop // cfg.downsampling              # positions per hop
            self.fc = nn.Linear(c_in * self.span, cfg.bottleneck)
            self.out = nn.Linear(cfg.bottleneck, cfg.n_classes)

        @property
        def first(self):
            """The first convolution layer (sinc or plain)."""
            return self.convs[0][0]

        def feature_map(self, x):
            """``(B, n_samples)`` → ``(B, C, T)`` (valid convolutions)."""
            return self.convs(x[:, None, :] * self.input_scale)

        def forward(self, x):
            """``(B, window)`` → ``(logits (B, n_classes), embedding (B, bottleneck))`` (pre-ReLU)."""
            emb = self.fc(self.feature_map(x).flatten(1))
            return self.out(torch.relu(emb)), emb

        def frame_embeddings(self, x):
            """``(B, n)`` with ``n >= window`` → ``(B, n_frames, bottleneck)``, frames every ``hop`` samples.

            ``n_frames = 1 + (n - window) // hop``; equals :meth:`forward` on each frame.
            """
            n_frames = 1 + (x.shape[-1] - cfg.window) // cfg.hop
            fm = self.feature_map(x)
            w = self.fc.weight.view(cfg.bottleneck, -1, self.span)
            e = torch.nn.functional.conv1d(fm, w, self.fc.bias, stride=self.step)
            if e.shape[-1] < n_frames:  # cannot happen with valid convs + aligned pools
                raise RuntimeError(f"feature map gives {e.shape[-1]} frames, expected {n_frames}")
            return e[:, :, :n_frames].transpose(1, 2)

        def frame_logits(self, x):
            """``(B, n)`` → ``(logits (B, n_frames, n_classes), embeddings (B, n_frames, bottleneck))``."""
            e = self.frame_embeddings(x)
            return self.out(torch.relu(e)), e

    return WaveformCNN()


def build_model(cfg: CNNConfig):
    """A fresh :class:`torch.nn.Module` for ``cfg`` (seed torch before calling for reproducibility)."""
    return _build(cfg)


def weights_sha256(model) -> str:
    """sha256 over parameter/buffer names, shapes and bytes (independent of file layout)."""
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


def first_layer_filters(model) -> np.ndarray:
    """Impulse responses of the first convolution layer: ``(n_filters, kernel)`` float64."""
    torch = _torch()
    with torch.no_grad():
        if model.cfg.arch == "sinc":
            h = model.first.filters()
        else:
            h = model.first.weight[:, 0, :]
        return h.detach().cpu().double().numpy()


def cumulative_response(filters: np.ndarray, sample_rate: int = SAMPLE_RATE, nfft: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative frequency response of a filter bank (as in Idiap's raw-waveform CNN analyses).

    ``filters`` ``(n_filters, taps)`` → ``(freqs (nfft//2+1,) in Hz, response (nfft//2+1,))``:
    ``sum_k |H_k(f)| / ||H_k||_2``, each filter's magnitude response normalised to unit
    L2 norm (so no single filter dominates), then the sum scaled to a maximum of 1.
    All-zero filters are skipped.
    """
    h = np.asarray(filters, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"filters must be (n_filters, taps), got shape {h.shape}")
    n = max(nfft, h.shape[1])
    mag = np.abs(np.fft.rfft(h, n=n, axis=1))
    norm = np.linalg.norm(mag, axis=1, keepdims=True)
    keep = norm[:, 0] > 0
    cum = (mag[keep] / norm[keep]).sum(axis=0)
    peak = cum.max() if cum.size and cum.max() > 0 else 1.0
    return np.fft.rfftfreq(n, 1.0 / sample_rate), cum / peak
