"""Procedural demo corpus in the exact ExVo layout (no data ships with exvo).

Each clip is a synthetic vocal burst: a source-filter model (glottal pulse train +
aspiration noise through three formant resonators) with an amplitude envelope shaped
like a laugh (pulse trains of "ha"s), gasp, cry, "aah" or sigh. What makes each
subtask learnable, and not trivial:

* emotions: the burst type is drawn from a mixture whose emotion profile gives the
  labels, and the continuous intensities further set pitch, loudness, pulse rate,
  noisiness, pitch glide and vibrato;
* age: the speaker's pitch falls and cycle-to-cycle jitter, shimmer and breathiness rise
  with age, on top of a per-speaker random voice (ages skewed young, mean ~ 28, as in ExVo);
* country: a typical recording channel (band-pass + hum + room) around which each
  speaker's own device scatters, a vocal-tract-length and tempo style, and different
  preferences over burst types;
* labels carry rater noise that the audio does not reflect, so no score is perfect;
* emotional style (for the few-shot track): each speaker has a disposition (every burst
  type's emotion profile shifted by the speaker's own N(0, 0.2) per emotion: one
  speaker's bursts are more awkward, another's more triumphant), a gain (how strongly all emotion
  effects move the acoustics, log-normal, σ 0.3), an own direction (a random 3 × 10
  response of log-f0, F1 and F2 to the 10 emotions, σ 0.6; pitch only ±10 % so that
  pitch stays an age cue) and resting offsets of F1, F2 and loudness, so that the same acoustics mean different emotions for different
  speakers and a few clips of a speaker help.

Speakers are split speaker-disjointly into Train/Val/Test (50/25/25 %). Test rows in
``data_info.csv`` have empty labels; their labels go to ``hidden_test_labels.csv``
so that ``exvo score --split Test`` works on the demo, and ``fewshot_support.csv`` (same
columns, labelled) holds the first 2 clips of every Test speaker: the few-shot track's
Test support set (``exvo fewshot --support-file``). A few clips are written
stereo or at 44.1/48 kHz, as in real corpora.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exvo.corpus import HIDDEN_LABELS_FILE, SAMPLE_RATE
from exvo.metrics import COUNTRIES, EMOTIONS

SR = SAMPLE_RATE
_E = {e: k for k, e in enumerate(EMOTIONS)}
SUPPORT_FILE = "fewshot_support.csv"
SUPPORT_SHOTS = 2

# Burst types: (emotion profile, preference per country)
_TYPES = {
    "laugh": ({"Amusement": 0.9, "Excitement": 0.5, "Awkwardness": 0.25, "Triumph": 0.2}, (0.30, 0.20, 0.25, 0.30)),
    "gasp": ({"Fear": 0.7, "Horror": 0.6, "Surprise": 0.7, "Awe": 0.15}, (0.20, 0.25, 0.15, 0.15)),
    "cry": ({"Distress": 0.85, "Sadness": 0.8, "Horror": 0.3, "Fear": 0.25}, (0.15, 0.25, 0.15, 0.20)),
    "aah": ({"Awe": 0.85, "Triumph": 0.55, "Excitement": 0.5, "Surprise": 0.35}, (0.20, 0.15, 0.25, 0.25)),
    "sigh": ({"Awkwardness": 0.6, "Sadness": 0.35, "Amusement": 0.3, "Distress": 0.2}, (0.15, 0.15, 0.20, 0.10)),
}
# Country style: typical channel band (Hz), vocal tract scale, tempo, usual mains hum (Hz), room.
# Each speaker's own device scatters around these, so country is a tendency, not a fingerprint.
_COUNTRY = [
    dict(band=(150, 4200), vtl=1.00, tempo=1.00, hum=50.0, room=0.15),
    dict(band=(110, 5500), vtl=0.97, tempo=1.08, hum=50.0, room=0.25),
    dict(band=(90, 6500), vtl=1.03, tempo=0.94, hum=60.0, room=0.08),
    dict(band=(190, 5000), vtl=0.99, tempo=1.12, hum=60.0, room=0.20),
]


@dataclass(frozen=True)
class Speaker:
    id: str
    country: int
    age: int
    f0: float          # Hz, typical pitch
    jitter: float      # relative cycle-to-cycle f0 perturbation (std of each period's relative change)
    shimmer: float     # relative cycle-to-cycle amplitude perturbation
    breath: float      # aspiration noise level relative to voicing
    formant: float     # speaker's vocal-tract scale factor
    band: tuple        # (low, high) Hz of the speaker's recording device
    hum: float         # mains hum frequency, Hz
    room: float        # echo gain of the speaker's room
    gain: float = 1.0           # emotional style: how strongly the acoustics follow the emotions
    style: tuple = ()           # emotional style: (3, 10) extra log-f0 / F1 / F2 response per emotion
    rest: tuple = (0.0, 0.0, 0.0)  # resting F1 (Hz), F2 (Hz) and loudness (log) offsets
    profile: tuple = ()         # emotional style: (10,) shift of the emotions all of the speaker's bursts convey


def _speakers(n: int, rng: np.random.Generator) -> list[Speaker]:
    out = []
    for s in range(n):
        country = s % len(COUNTRIES)
        style = _COUNTRY[country]
        # skewed towards young adults, as crowd-sourced corpora are (ExVo: mean age ~ 28)
        age = int(np.clip(18 + rng.gamma(2.0, 5.0), 18, 70))
        female = rng.random() < 0.5
        base = 215.0 if female else 125.0
        f0 = base * (1.0 - 0.012 * (age - 18)) * float(np.exp(rng.normal(0, 0.05)))
        lo, hi = style["band"]
        out.append(Speaker(
            id=f"Speaker_{s}", country=country, age=age, f0=f0,
            jitter=0.004 + 0.0015 * (age - 18),
            shimmer=0.02 + 0.006 * (age - 18),
            breath=0.05 + 0.012 * (age - 18) + abs(rng.normal(0, 0.02)),
            formant=(1.08 if female else 0.95) * float(np.exp(rng.normal(0, 0.03))),
            band=(lo * float(np.exp(rng.normal(0, 0.35))), min(7800.0, hi * float(np.exp(rng.normal(0, 0.2))))),
            hum=style["hum"] if rng.random() < 0.75 else 110.0 - style["hum"],
            room=float(max(0.0, style["room"] + rng.normal(0, 0.08))),
            gain=float(np.clip(np.exp(rng.normal(0, 0.3)), 0.5, 2.0)),
            style=tuple(rng.normal(0, 0.6, size=3 * len(EMOTIONS)).round(4).tolist()),
            rest=(float(rng.normal(0, 50)), float(rng.normal(0, 100)), float(rng.normal(0, 0.25))),
            profile=tuple(rng.normal(0, 0.2, size=len(EMOTIONS)).round(4).tolist()),
        ))
    return out


def _emotions(kind: str, rng: np.random.Generator, spk: Speaker | None = None) -> np.ndarray:
    profile, _ = _TYPES[kind]
    v = np.zeros(len(EMOTIONS))
    for e, w in profile.items():
        v[_E[e]] = w
    if spk is not None and spk.profile:     # the speaker's disposition: all its bursts lean this way
        v = np.maximum(0.0, v + np.asarray(spk.profile))
    strength = rng.uniform(0.45, 1.0)
    v = v * strength * rng.uniform(0.7, 1.15, size=v.size) + rng.gamma(0.6, 0.06, size=v.size)
    return np.clip(v, 0.0, 1.0).round(4)


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / SR)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r]
    return lfilter([1.0 - r], a, x)


def _glottal_source(contour: np.ndarray, jitter: float, shimmer: float, rng: np.random.Generator) -> np.ndarray:
    """Sawtooth-like pulse train ``(n,)`` following the f0 ``contour`` ``(n,)`` (Hz per sample).

    Jitter and shimmer are cycle to cycle: every glottal cycle gets its own frequency and
    amplitude, scaled by ``1 + N(0, jitter)`` and ``1 + N(0, shimmer)``, which is what jitter and
    shimmer measures (openSMILE's jitterLocal, shimmerLocaldB) see. exvo ≤ 0.1 drew "jitter" as a
    slow random walk of the pitch instead (a wander no cycle-to-cycle measure sees), so the
    age cue it was meant to carry was nearly absent (benchmarks/README.md, "Age on the demo corpus").
    """
    n = contour.size
    # one normal per sample, as exvo 0.1 drew, so the corpus's random stream (labels, splits,
    # every later draw) is unchanged: the first values perturb the cycles' periods, the next ones
    # their amplitudes (a clip has far fewer cycles than samples)
    z = rng.standard_normal(n)
    cycle = np.floor(np.cumsum(contour) / SR).astype(np.int64)
    used = int(cycle[-1]) + 1
    contour = contour * (1.0 + jitter * z[cycle % n])
    phase = np.cumsum(contour) / SR
    voiced = 2.0 * (phase % 1.0) - 1.0
    voiced = np.diff(voiced, prepend=voiced[0]) * -0.5 + 0.02 * voiced
    cycle = np.floor(phase).astype(np.int64)
    return voiced * np.maximum(0.0, 1.0 + shimmer * z[(used + cycle) % n])


def _synth(kind: str, emo: np.ndarray, spk: Speaker, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    style = _COUNTRY[spk.country]
    # the speaker's emotional style: every emotion effect below is scaled by the speaker's gain,
    # and the speaker's own direction (a 3 x 10 response) moves pitch and formants on top
    emo = emo * spk.gain
    own = np.asarray(spk.style).reshape(3, len(EMOTIONS)) @ emo if spk.style else np.zeros(3)
    arousal = emo[[_E["Excitement"], _E["Fear"], _E["Horror"], _E["Triumph"], _E["Surprise"]]].mean()
    tempo = style["tempo"]              # tempo stays a country cue, not a personal one
    dur = {"laugh": 1.8, "gasp": 0.9, "cry": 2.8, "aah": 2.0, "sigh": 1.5}[kind]
    dur = float(np.clip(dur / tempo * np.exp(rng.normal(0, 0.25)), 0.4, 5.0))
    n = int(dur * SR)
    t = np.arange(n) / SR
    # pitch contour: arousal raises it; surprise glides up, sadness down; distress trembles
    f0 = spk.f0 * (1.0 + 0.6 * arousal + 0.15 * emo[_E["Amusement"]]) * float(np.exp(0.1 * np.tanh(own[0])))
    glide = 0.35 * emo[_E["Surprise"]] - 0.3 * emo[_E["Sadness"]]
    contour = f0 * (1.0 + glide * (t / dur - 0.5)) * (1.0 + 0.04 * emo[_E["Distress"]] * np.sin(2 * np.pi * 5.5 * t))
    voiced = _glottal_source(contour, spk.jitter, spk.shimmer, rng)
    noise = rng.standard_normal(n) * 0.15
    noisy = {"gasp": 0.85, "sigh": 0.75}.get(kind, 0.15) + 0.3 * (emo[_E["Fear"]] + emo[_E["Horror"]]) / 2
    src = (1.0 - noisy) * voiced + (noisy + spk.breath) * noise
    # formants: vowel opens (F1 up) with arousal; speaker/country vocal tract scale
    scale = spk.formant * style["vtl"]
    f1 = (520 + spk.rest[0] + 250 * arousal + 120 * emo[_E["Awe"]] + 120 * np.tanh(own[1])) * scale
    f2 = (1500 + spk.rest[1] - 350 * emo[_E["Sadness"]] + 300 * emo[_E["Amusement"]] + 250 * np.tanh(own[2])) * scale
    f1, f2 = max(f1, 200.0), max(f2, f1 + 300.0)
    f3 = 2600 * scale
    y = _resonator(src, f1, 90) + 0.6 * _resonator(src, f2, 120) + 0.3 * _resonator(src, f3, 180)
    # amplitude envelope by burst type
    if kind == "laugh":
        rate = (3.5 + 3.0 * emo[_E["Amusement"]] + 1.5 * arousal) * tempo
        env = np.clip(np.sin(np.pi * ((t * rate) % 1.0)) ** 2 * (1.0 - 0.5 * t / dur), 0, None)
    elif kind == "gasp":
        env = np.minimum(1.0, t / (0.3 * dur)) * np.exp(-np.maximum(0.0, t - 0.3 * dur) * 6)
    elif kind == "cry":
        sob = 1.2 + 1.5 * emo[_E["Distress"]]
        env = 0.5 + 0.5 * np.sin(2 * np.pi * sob * t) ** 2
    elif kind == "aah":
        env = np.minimum(1.0, t / 0.15) * np.minimum(1.0, (dur - t) / 0.4)
    else:
        env = np.exp(-t * (1.5 + 2.0 * emo[_E["Sadness"]]))
    env *= np.minimum(1.0, t / 0.01) * np.minimum(1.0, (dur - t) / 0.02)
    y = y * env
    level = (0.25 + 0.55 * arousal) * float(np.exp(spk.rest[2] + rng.normal(0, 0.2)))
    y = y / (np.abs(y).max() + 1e-9) * min(level, 0.95)
    # recording channel of the country: band-pass, room, mains hum, noise floor
    sos = butter(2, spk.band, btype="bandpass", fs=SR, output="sos")
    y = sosfilt(sos, y)
    if spk.room > 0:
        delay = int(0.023 * SR)
        y[delay:] += spk.room * y[:-delay]
    y += 0.004 * np.sin(2 * np.pi * spk.hum * t) + 0.002 * rng.standard_normal(n)
    return np.clip(y, -0.99, 0.99).astype(np.float32)


LAYOUTS = ("exvo", "avb", "both")


def make_demo_corpus(out_dir: str | Path, speakers: int = 60, clips_per_speaker: int = 20,
                     seed: int = 0, progress: bool = True, layout: str = "exvo") -> Path:
    """Write a demo corpus to ``out_dir`` (``data_info.csv``, ``wav/``, hidden Test labels).

    ``layout``: ``exvo`` (the ExVo layout above), ``avb`` (the A-VB 2022 release's layout:
    ``labels/data_info.csv``, ``labels/{high,two,culture,type}_info.csv``, ``audio/wav/``; see
    :mod:`exvo.demo_avb`) or ``both`` (the ExVo layout plus the A-VB ``labels/*_info.csv`` files:
    one folder, one feature cache, all five tasks). The audio and ExVo labels are the same for a
    given seed whatever the layout.

    ``speakers`` must be at least 8 (so every split gets speakers of several countries).
    Returns the folder. Deterministic for a given seed.
    """
    from exvo import demo_avb

    if layout not in LAYOUTS:
        raise ValueError(f"unknown demo layout {layout!r}; choose one of {LAYOUTS}")
    import soundfile as sf
    from scipy.signal import resample_poly
    from tqdm import tqdm

    if speakers < 8:
        raise ValueError(f"--speakers must be at least 8 (got {speakers}) so each split has several countries")
    if clips_per_speaker < 1:
        raise ValueError(f"--clips-per-speaker must be at least 1 (got {clips_per_speaker})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; the demo corpus needs a new or empty folder")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir())
        if present:
            raise ValueError(
                f"{out} is not empty ({len(present)} entries: {', '.join(present[:5])}"
                f"{' …' if len(present) > 5 else ''}); the demo corpus is only written to a new or empty folder, "
                "so that no audio or table there is overwritten. Choose another folder or delete this one"
            )
    wav_dir = out / "audio" / "wav" if layout == "avb" else out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    avb = demo_avb.AVBLabels(seed)
    rng = np.random.default_rng(seed)
    spk = _speakers(speakers, rng)
    order = rng.permutation(speakers)
    n_tr, n_va = speakers // 2, speakers // 4
    split_of = {}
    for k, s in enumerate(order):
        split_of[s] = "Train" if k < n_tr else ("Val" if k < n_tr + n_va else "Test")
    kinds = list(_TYPES)
    header = ["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS]
    rows, hidden = [], []
    total = speakers * clips_per_speaker
    bar = tqdm(total=total, desc="demo corpus", unit="clip", disable=not progress)
    k = 0
    for s, sp in enumerate(spk):
        prefs = np.array([_TYPES[kd][1][sp.country] for kd in kinds])
        for _ in range(clips_per_speaker):
            kind = kinds[rng.choice(len(kinds), p=prefs / prefs.sum())]
            emo = _emotions(kind, rng, sp)
            y = _synth(kind, emo, sp, rng)
            true_emo = emo
            # the audio follows the true mix; the labels carry rater disagreement on top
            emo = np.clip(emo + rng.normal(0, 0.1, size=emo.size), 0.0, 1.0).round(4)
            stem = f"{k:05d}"
            path = wav_dir / f"{stem}.wav"
            r = rng.random()
            if r < 0.04:      # some stereo files, as in HUME-VB
                sf.write(path, np.stack([y, 0.9 * y], axis=1), SR, subtype="PCM_16")
            elif r < 0.07:    # and some at other rates
                sf.write(path, resample_poly(y, 3, 1).astype(np.float32), 48_000, subtype="PCM_16")
            else:
                sf.write(path, y, SR, subtype="PCM_16")
            split = split_of[s]
            avb.add(f"[{stem}]", split, sp, kind, true_emo, emo)
            full = [f"[{stem}]", split, sp.id, sp.country, sp.age, COUNTRIES[sp.country], *emo.tolist()]
            if split == "Test":
                hidden.append(full)
                rows.append(full[:3] + ["", "", ""] + [""] * len(EMOTIONS))
            else:
                rows.append(full)
            k += 1
            bar.update()
    bar.close()
    # the few-shot track's labelled support set of every Test speaker: its first SUPPORT_SHOTS clips
    support, seen = [], {}
    for r in hidden:
        seen[r[2]] = seen.get(r[2], 0) + 1
        if seen[r[2]] <= SUPPORT_SHOTS:
            support.append(r)
    if layout != "exvo":
        avb.write(out / "labels", base=layout == "avb")
    if layout == "avb":
        return out
    for name, body in (("data_info.csv", rows), (HIDDEN_LABELS_FILE, hidden), (SUPPORT_FILE, support)):
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(body)
    return out
