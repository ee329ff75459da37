"""Audio loading: any sound file → 16 kHz mono float32, and a note when the file needed a decision.

:func:`read_audio` returns ``(samples, note)``; :func:`load_audio` the samples alone. Every
extractor reads audio through :func:`read_audio` and passes the note on (``ClipResult.note``),
so a clip that was rescaled or mixed down in an unusual way is reported by its ``File_ID``.

Rules (each tested in ``tests/test_bad_audio.py``):

* a missing file, a folder, a symbolic link loop or a dangling link, an empty, unreadable,
  truncated or non-audio file, an implausible header sample rate, NaN/inf samples: an
  :class:`AudioError` saying which of these it is;
* float samples within ±:data:`FLOAT_HEADROOM` are used as they are (a float file may
  exceed full scale a little); float samples beyond it but within an integer full scale
  (2^15, 2^23, 2^31) were written at that integer scale (e.g. int16 values stored as float):
  they are divided by it, with a note; beyond 2^31 the file is refused (it holds no usable
  level: a peak of 4e29 made every extractor see silence);
* multi-channel audio is averaged, unless the channels cancel (the mix is more than
  :data:`CANCEL_DB` below the loudest channel, e.g. one channel is the other inverted):
  then the loudest channel alone is used, with a note;
* other sample rates are resampled to 16 kHz (soxr, HQ).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
"""Every extractor receives mono float32 audio at this rate (Hz)."""

RATE_RANGE = (1_000, 768_000)
"""Sample rates (Hz) accepted from a file header; others mean a damaged header."""
FLOAT_HEADROOM = 4.0
"""Float samples up to this magnitude (+12 dBFS) are used as they are."""
INTEGER_SCALES = ((2 ** 15, "16-bit"), (2 ** 23, "24-bit"), (2 ** 31, "32-bit"))
"""Integer full scales a float file may have been written at by mistake (samples ×32767 …)."""
CANCEL_DB = -40.0
"""A channel mix this far below its loudest channel counts as cancelled."""
_RIFF_PLACEHOLDERS = (0, 0xFFFFFFFF, 0x7FFFFFFF)
"""``data`` chunk sizes that streaming recorders leave when they never rewrite the header."""


class AudioError(ValueError):
    """One audio file could not be turned into 16 kHz mono float32 samples."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file that can be read (None when it is one)."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return ("is a symbolic link loop (the link leads back to itself), not an audio file; replace it "
                    "with the clip's audio file")
        if path.is_symlink():
            return (f"is a symbolic link to {os.readlink(path)}, which does not exist; fix the link or put the "
                    "audio file there")
        if e.errno == errno.ENOENT:
            return "file not found; check the File_ID in data_info.csv and the wav/ folder"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "cannot be reached: permission denied on a folder above it; fix the folder's permissions"
        return f"cannot be reached ({e.strerror or e}); check the file and its folder"
    if stat.S_ISDIR(st.st_mode):
        return ("is a folder, not an audio file; put the clip's audio file there in place of the folder "
                "(or fix the File_ID)")
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a device, pipe or socket); put the clip's audio file there"
    return None


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file, a reason if its ``data`` chunk is shorter than the header says.

    libsndfile silently reads whatever frames remain, so a half-copied file would
    otherwise yield half a burst without anyone noticing.
    """
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        tag, n = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if tag == b"data":
            have = size - (pos + 8)
            if n in _RIFF_PLACEHOLDERS or n <= have:
                return None
            return (f"file is truncated: its header declares {n} bytes of audio but only {have} are present "
                    f"({100.0 * have / n:.0f} %); an incomplete copy? re-copy or re-export it")
        pos += 8 + n + (n & 1)
    return None


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """``(frames, channels) float32`` and the sample rate; :class:`AudioError` for anything unreadable."""
    import soundfile as sf

    try:
        if path.stat().st_size == 0:
            raise AudioError(path, "file is empty (0 bytes); re-export or remove its row")
    except OSError as e:
        raise AudioError(path, f"cannot be read ({e.strerror or e}); check its permissions") from None
    try:
        # opened here, not by libsndfile: a permission problem is named as such, and a path
        # that is not valid UTF-8 (odd folder names) is no problem for a file object
        fh = open(path, "rb")
    except PermissionError:
        raise AudioError(path, "permission denied: this user may not read the file; fix its permissions "
                               "(e.g. chmod a+r) or run as a user who can read it") from None
    except OSError as e:
        raise AudioError(path, f"cannot be opened ({e.strerror or e}); check the file and its folder") from None
    try:
        with fh:
            sr = int(sf.info(fh).samplerate)
            if not RATE_RANGE[0] <= sr <= RATE_RANGE[1]:
                raise AudioError(path, f"header gives an implausible sample rate of {sr} Hz (expected "
                                       f"{RATE_RANGE[0]}-{RATE_RANGE[1]} Hz); the file is damaged, re-export it")
            fh.seek(0)
            x, sr = sf.read(fh, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except MemoryError:
        raise AudioError(path, "header declares more audio than fits in memory; the file is damaged") from None
    except Exception as e:  # libsndfile raises several types for corrupt/non-audio files
        raise AudioError(path, f"not a readable audio file ({type(e).__name__}: {e}); re-export it as WAV") from None
    return x, sr


def float_scale(x: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
    """``x`` ``(frames, channels)`` brought to about [-1, 1] by the rule of the module docstring."""
    peak = float(np.abs(x).max())
    if peak <= FLOAT_HEADROOM:
        return x, None
    for scale, bits in INTEGER_SCALES:
        if peak <= scale:
            note = (f"float samples at {bits} integer scale (peak {peak:.6g}, expected within [-1, 1]): divided by "
                    f"{scale}; re-export the file as PCM or as float within [-1, 1] to silence this note")
            return (x.astype(np.float64) / scale).astype(np.float32), note
    raise AudioError(path, f"float samples reach {peak:.3g}, far outside [-1, 1] and beyond any integer scale "
                           f"(2^31): the file is damaged or was exported wrongly; re-export it as PCM or as float "
                           "within [-1, 1]")


def mixdown(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(frames, channels)`` → ``(frames,)``: the channel mean, or the loudest channel when they cancel."""
    if x.shape[1] == 1:
        return x[:, 0], None
    # float64 accumulation: the mean of huge-but-finite float samples must not overflow
    mono = x.mean(axis=1, dtype=np.float64)
    ch = np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=0))
    loud = int(np.argmax(ch))
    mix = float(np.sqrt(np.mean(np.square(mono))))
    if ch[loud] > 0 and mix < ch[loud] * 10.0 ** (CANCEL_DB / 20.0):
        below = "silent" if mix == 0 else f"{-20.0 * np.log10(mix / ch[loud]):.0f} dB below channel {loud}"
        note = (f"the {x.shape[1]} channels cancel out when averaged (the mix is {below}; one channel is probably "
                f"the other with inverted polarity): channel {loud} alone was used")
        return np.ascontiguousarray(x[:, loud]), note
    return mono.astype(np.float32), None


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, str | None]:
    """A sound file as mono float32 at ``sample_rate`` Hz, shape ``(n_samples,)``, and a note or None.

    Raises :class:`AudioError` naming the file and the reason (see the module docstring).
    Silence is returned as is (it is valid audio).
    """
    path = Path(path)
    why = not_a_file(path)
    if why:
        raise AudioError(path, why)
    x, sr = _decode(path)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise AudioError(path, "audio has no samples; re-export or remove its row")
    trunc = _wav_truncation(path)
    if trunc:
        raise AudioError(path, trunc)
    if not np.isfinite(x).all():
        raise AudioError(path, "audio contains NaN or inf samples; re-export it from the source recording")
    x, scaled = float_scale(x, path)
    x, mixed = mixdown(x)
    if sr != sample_rate:
        import soxr

        try:
            x = soxr.resample(x, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)
        except Exception as e:
            raise AudioError(path, f"could not resample from {sr} Hz to {sample_rate} Hz ({e})") from None
        if x.size == 0:
            raise AudioError(path, f"audio too short to resample from {sr} Hz to {sample_rate} Hz")
    if not np.isfinite(x).all():
        raise AudioError(path, "audio samples are too large to process (overflow to inf); re-export it normalised")
    return np.ascontiguousarray(x, dtype=np.float32), join_notes(scaled, mixed)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """:func:`read_audio` without its note: ``(n_samples,)`` float32 at ``sample_rate`` Hz."""
    return read_audio(path, sample_rate)[0]


def join_notes(*notes: str | None) -> str | None:
    """The notes that are not None, joined by ``"; "`` (None when there is none)."""
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None
