"""Zero-frequency filtering: known epochs, textbook equivalence, stability on long clips."""
import numpy as np
import pytest
from scipy.signal import lfilter

from exvo.extract.zff import ZFFConfig, epochs, estimate_pitch_period, zff, zff_reference

SR = 16_000


def _resonator(x, freq, bw):
    r = np.exp(-np.pi * bw / SR)
    return lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r], x)


def voiced(n, f0, rng, jitter=0.03, noise=0.003):
    """Speech-like signal with known glottal closure instants (GCIs).

    Excitation: a *negative* impulse at each GCI (the glottal-flow derivative's sharp
    negative peak at closure), periods jittered by ``jitter``; vocal tract: two formants
    (600 and 1700 Hz); plus white noise. Returns ``(signal, gci sample indices)``.
    """
    gci, t = [], 400
    while t < n - 400:
        gci.append(t)
        t += int(round(SR / f0 * (1 + jitter * rng.standard_normal())))
    e = np.zeros(n)
    e[gci] = -1.0
    s = _resonator(e, 600, 100) + 0.5 * _resonator(e, 1700, 150)
    s = 0.5 * s / np.abs(s).max() + noise * rng.standard_normal(n)
    return s, np.array(gci)


@pytest.mark.parametrize("f0", [90.0, 150.0, 240.0])
def test_epochs_at_known_glottal_closures(f0):
    rng = np.random.default_rng(int(f0))
    s, gci = voiced(SR, f0, rng)
    ep = epochs(zff(s, SR))
    # nearest detected epoch of every true GCI within 1 ms (16 samples)
    dist = np.abs(ep[:, None] - gci[None, :]).min(axis=0)
    assert np.mean(dist <= 16) >= 0.97, np.sort(dist)[-5:]
    # and hardly any spurious epochs in the voiced stretch (the silent edges hold only noise)
    half = int(SR / f0 / 2)
    inside = ep[(ep > gci[0] - half) & (ep < gci[-1] + half)]
    assert len(inside) <= len(gci) + 2


def test_opposite_polarity_is_not_at_closures():
    """The sign convention matters: positive impulses put the positive crossings mid-period."""
    rng = np.random.default_rng(3)
    s, gci = voiced(SR, 120.0, rng)
    ep = epochs(zff(-s, SR))
    dist = np.abs(ep[:, None] - gci[None, :]).min(axis=0)
    assert np.mean(dist <= 16) < 0.2


def test_pitch_period_estimate():
    rng = np.random.default_rng(5)
    for f0 in (110.0, 200.0, 310.0):
        s, _ = voiced(SR, f0, rng, jitter=0.0)
        assert estimate_pitch_period(s, SR) == pytest.approx(1 / f0, rel=0.03)
    assert estimate_pitch_period(np.zeros(SR), SR) is None
    assert estimate_pitch_period(np.ones(100), SR) is None   # shorter than one frame


def test_equals_textbook_cascade_in_the_interior():
    """On a short clip the literal n**3-growing cascade is still exact in float64."""
    rng = np.random.default_rng(7)
    s, _ = voiced(8000, 150.0, rng)
    win = 161
    ref = zff_reference(s, win)
    ours = zff(s, SR, ZFFConfig(window_ms=win / SR * 1000, normalize="none"))
    inner = slice(4 * win, -4 * win)
    assert np.abs(ref).max() > 1e6          # the textbook trend is huge ...
    np.testing.assert_allclose(ours[inner], ref[inner], rtol=0, atol=1e-5 * np.abs(ref[inner]).max())


def test_stable_on_a_ten_minute_clip():
    """10 minutes (9.6 M samples): finite, and an excerpt equals the ZFF of that excerpt alone.

    The literal cascade would need ~1e20 dynamic range here; a stable implementation
    gives the same local result wherever the excerpt is taken from.
    """
    rng = np.random.default_rng(11)
    n = 600 * SR
    cycle, gci = voiced(10 * SR, 130.0, rng)
    x = np.tile(cycle, 60) + 0.002 * rng.standard_normal(n)
    x[: SR] += 0.3           # a DC offset step, to stress the integrators
    cfg = ZFFConfig(window_ms=10.0, normalize="none")
    full = zff(x, SR, cfg)
    assert full.dtype == np.float32 and np.isfinite(full).all()
    a, m = n - 3 * SR, SR // 10    # an excerpt near the end, where errors would have accumulated
    part = zff(x[a - m: a + SR + m], SR, cfg)[m:-m]
    scale = np.abs(part).max()
    np.testing.assert_allclose(full[a: a + SR], part, rtol=0, atol=1e-4 * scale)
    ep = epochs(full[a: a + SR])
    period = int(round(SR / 130.0))
    assert abs(len(ep) - SR / period) <= 0.1 * SR / period


def test_output_normalised_float32_and_silence():
    rng = np.random.default_rng(2)
    s, _ = voiced(SR // 2, 170.0, rng)
    z = zff(s, SR)
    assert z.dtype == np.float32 and z.shape == s.shape
    assert np.sqrt(np.mean(z.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-5)
    assert not zff(np.zeros(3000), SR).any()
    assert zff(np.zeros(0), SR).shape == (0,)
    assert zff(np.array([0.5]), SR).shape == (1,)


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"1-D signal .*got shape \(2, 100\)"):
        zff(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="NaN or inf"):
        zff(np.array([0.0, np.nan, 1.0] * 100))
    with pytest.raises(ValueError, match="at least 2 trend-removal passes"):
        zff(np.zeros(100), config=ZFFConfig(passes=1))
