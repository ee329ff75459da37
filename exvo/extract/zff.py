"""Zero-frequency filtering (ZFF) of speech (Murty & Yegnanarayana, 2008; Yegnanarayana & Murty, 2009).

The ZFF signal is the speech signal passed through

1. a difference filter ``d[n] = x[n] - x[n-1]`` (removes DC and very low frequencies),
2. a cascade of two zero-frequency resonators, each a double pole at ``z = 1``:
   ``y[n] = x[n] + 2 y[n-1] - y[n-2]``,
3. trend removal: subtraction of the local mean over a window of about 1.5 average
   pitch periods, repeated (3 passes).

Its positive-going zero crossings are the epochs (glottal closure instants, GCIs) for
the usual speech polarity, where the excitation at closure is the sharp *negative*
peak of the glottal-flow derivative.

Numerical stability. Run literally, the cascade integrates four times and grows like
``n**3``; on a 10-minute clip (9.6 M samples) the trend is ~1e20 times the signal and
float64 cannot hold the difference. Every local-mean subtraction with a symmetric window
is a filter ``1 - MA(z)`` with a *double* zero at ``z = 1``, i.e. it cancels exactly one
resonator. So we remove the trend right after each resonator (all operators are linear
and time-invariant, so away from the clip edges the order does not matter), and the
signal never grows more than one integration:

    x  --diff-->  --resonator 1-->  trend  --resonator 2-->  trend  -->  trend

``diff`` followed by the first integration of resonator 1 is the identity, so resonator 1
reduces to one ``cumsum`` of ``x``. The result equals the textbook cascade in the
interior of a clip (checked in tests on short clips, where the textbook form is still
exact in float64). To keep the edges quiet (the local mean over a truncated window does
not remove a trend), the clip is reflection-padded by three windows on each side before
filtering and cropped after.

Window. ``window_ms=None`` (default) estimates the average pitch period from the
autocorrelation of 40 ms frames of the low-passed signal (lags 2.5-20 ms, i.e. F0
50-400 Hz, frames with enough energy and a clear peak, median over frames) and uses
1.5 times it; when no frame is clearly voiced it falls back to
:data:`DEFAULT_WINDOW_MS` (10 ms, i.e. 1.5 periods of a 150 Hz voice).

Everything is vectorised (``np.cumsum``, FFTs); no Python loop over samples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_WINDOW_MS = 10.0
"""Trend-removal window (ms) used when no pitch can be estimated (1.5 periods at 150 Hz)."""

MAX_PITCH_FRAMES = 500
"""Pitch estimation looks at no more than this many 40 ms frames per clip."""


@dataclass(frozen=True)
class ZFFConfig:
    """Settings of :func:`zff` (stored in extractor configs).

    ``window_ms``: trend-removal window in ms, or ``None`` to estimate 1.5 average pitch
    periods per clip. ``passes``: trend-removal passes (3 = one per resonator + one).
    ``normalize``: ``"rms"`` scales the output to unit RMS, ``"none"`` keeps its scale.
    """

    window_ms: float | None = None
    passes: int = 3
    normalize: str = "rms"
    f0_min: float = 50.0     # Hz, bounds of the pitch search
    f0_max: float = 400.0

    def to_json(self) -> dict:
        return asdict(self)


def _moving_mean(y: np.ndarray, half: int) -> np.ndarray:
    """Centered mean over ``2*half + 1`` samples; truncated windows at the edges. float64."""
    n, w = y.size, 2 * half + 1
    c = np.concatenate(([0.0], np.cumsum(y)))
    out = np.empty(n)
    if n >= w:   # interior: full windows, plain slices
        out[half: n - half] = (c[w:] - c[: n - w + 1]) / w
    edge = np.r_[0: min(half, n), max(n - half, min(half, n)): n]
    lo = np.maximum(edge - half, 0)
    hi = np.minimum(edge + half + 1, n)
    out[edge] = (c[hi] - c[lo]) / (hi - lo)
    return out


def _remove_trend(y: np.ndarray, half: int) -> np.ndarray:
    # subtract the global mean first so the running sum in _moving_mean stays small
    y = y - y.mean()
    return y - _moving_mean(y, half)


def estimate_pitch_period(x: np.ndarray, sr: int = 16_000, f0_min: float = 50.0,
                          f0_max: float = 400.0) -> float | None:
    """Average pitch period in seconds from frame autocorrelations, or ``None`` if unvoiced.

    ``x`` ``(n_samples,)``. Frames of 40 ms (hop 20 ms) of the signal low-passed at 900 Hz;
    at most :data:`MAX_PITCH_FRAMES` frames, evenly spread; frames within 25 dB of the loudest one whose normalised autocorrelation peak in the
    lag range ``[1/f0_max, 1/f0_min]`` exceeds 0.5 vote with their peak lag; the median wins.
    """
    from scipy.signal import butter, sosfiltfilt

    x = np.asarray(x, dtype=np.float64)
    flen, hop = int(0.040 * sr), int(0.020 * sr)
    lag_lo, lag_hi = int(np.ceil(sr / f0_max)), int(sr / f0_min)
    if x.size < max(flen, lag_hi + 1) or not np.any(x):
        return None
    y = sosfiltfilt(butter(4, 900.0, fs=sr, output="sos"), x - x.mean())
    starts = np.arange(0, y.size - flen + 1, hop)
    if starts.size > MAX_PITCH_FRAMES:  # an average needs no more; keeps long clips fast
        starts = starts[np.linspace(0, starts.size - 1, MAX_PITCH_FRAMES).round().astype(int)]
    frames = y[starts[:, None] + np.arange(flen)] * np.hanning(flen)
    energy = (frames ** 2).sum(axis=1)
    keep = energy > energy.max() * 10 ** (-2.5)
    if not keep.any() or energy.max() == 0:
        return None
    frames, energy = frames[keep], energy[keep]
    nfft = 1 << int(np.ceil(np.log2(2 * flen)))
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, nfft, axis=1)) ** 2, nfft, axis=1)[:, : lag_hi + 1]
    ac = ac / np.maximum(ac[:, :1], 1e-30)
    seg = ac[:, lag_lo: lag_hi + 1]
    peak = seg.argmax(axis=1)
    voiced = seg[np.arange(seg.shape[0]), peak] > 0.5
    if not voiced.any():
        return None
    return float(np.median(peak[voiced] + lag_lo)) / sr


def zff(x: np.ndarray, sr: int = 16_000, config: ZFFConfig | None = None) -> np.ndarray:
    """Zero-frequency filtered signal of ``x`` ``(n_samples,)`` → ``(n_samples,)`` float32.

    With ``config.normalize == "rms"`` the output has unit RMS (all-zero input gives zeros).
    See the module docstring for the method and why it is stable for clips of any length.
    """
    cfg = config or ZFFConfig()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"zff expects a 1-D signal (n_samples,), got shape {x.shape}; mix stereo to mono first")
    if cfg.passes < 2:
        raise ValueError(f"ZFF needs at least 2 trend-removal passes (one per resonator), got {cfg.passes}")
    if cfg.normalize not in ("rms", "none"):
        raise ValueError(f"ZFF normalize must be 'rms' or 'none', got {cfg.normalize!r}")
    if x.size == 0:
        return np.zeros(0, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("zff input contains NaN or inf samples")
    if cfg.window_ms is not None:
        win_s = cfg.window_ms / 1000.0
    else:
        period = estimate_pitch_period(x, sr, cfg.f0_min, cfg.f0_max)
        win_s = 1.5 * period if period is not None else DEFAULT_WINDOW_MS / 1000.0
    half = max(1, int(round(win_s * sr / 2)))
    pad = min(3 * (2 * half + 1), x.size - 1)
    xp = np.pad(x, pad, mode="reflect") if pad > 0 else x
    # resonator 1 after the difference filter: diff then one cumsum is the identity
    y = _remove_trend(np.cumsum(xp), half)
    # resonator 2: two integrations, then one trend removal per remaining pass
    y = _remove_trend(np.cumsum(np.cumsum(y)), half)
    for _ in range(cfg.passes - 2):
        y = _remove_trend(y, half)
    y = y[pad: pad + x.size]
    if cfg.normalize == "rms":
        rms = float(np.sqrt(np.mean(y ** 2)))
        y = y / rms if rms > 0 else np.zeros_like(y)
    return y.astype(np.float32)


def zff_reference(x: np.ndarray, window_samples: int, passes: int = 3) -> np.ndarray:
    """Textbook ZFF (literal difference → two resonators → trend removal), float64, unnormalised.

    Only for short clips (it grows like ``n**3``); used to check :func:`zff`.
    ``window_samples`` is the odd trend-removal window length.
    """
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=np.float64)
    d = np.diff(x, prepend=0.0)
    y = lfilter([1.0], [1.0, -2.0, 1.0], d)
    y = lfilter([1.0], [1.0, -2.0, 1.0], y)
    half = window_samples // 2
    for _ in range(passes):
        y = y - _moving_mean(y, half)
    return y


def epochs(z: np.ndarray) -> np.ndarray:
    """Sample indices of the positive-going zero crossings of a ZFF signal ``z`` (the epochs)."""
    z = np.asarray(z)
    return np.flatnonzero((z[:-1] < 0) & (z[1:] >= 0)) + 1
