"""Self-supervised speech models via transformers: ``wavlm``, ``hubert``, ``wav2vec2``.

One forward pass per clip with ``output_hidden_states=True``; every hidden state the model
returns (the input embeddings first, so ``L = num_hidden_layers + 1``) is pooled over the
clip's *unpadded* frames into mean ‖ population std (ddof = 0): the embedding is
``(L, 2 * hidden_size)`` float32.

Input follows the checkpoint's own feature extractor (``preprocessor_config.json``: e.g.
``do_normalize`` = per-utterance zero mean, unit variance over the whole clip), unless
``--normalize on|off`` overrides ``do_normalize``; the effective value is in the config.

Policies, all stored in the cache ``config``:

* **too short**: a clip with fewer samples than one frame's receptive field (400 samples
  = 25 ms for these models) is zero-padded to it after normalisation, with a note.
* **long clips**: a clip longer than ``chunk_seconds`` is normalised as a whole, then cut
  into consecutive chunks of ``chunk_seconds`` (rounded down to a multiple of the frame
  hop, so chunk frames sit on the same grid as unchunked ones); a tail shorter than the
  receptive field joins the previous chunk. Each chunk is one forward pass, and the
  pooled statistics are exact over all frames of all chunks (per-layer sum and sum of
  squares accumulated in float64). Chunking does change the numbers: a frame only sees
  the context inside its own chunk.
* **batching** (CUDA by default): clips are decoded by background threads in windows,
  sorted by length and packed into padded batches of at most ``batch_seconds`` of padded
  audio, with an ``attention_mask``; pooling then uses the per-clip frame counts. Models
  whose feature extractor has ``return_attention_mask=False`` or a group-norm conv front
  end (wav2vec2-base) change under zero padding, so for them only clips of identical
  length share a batch. On CPU clips go one at a time (no padding, no wasted work).
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from exvo.audio import join_notes, read_audio
from exvo.corpus import SAMPLE_RATE, AudioError
from exvo.device import resolve_device
from exvo.extract.base import ClipResult, ExtractOptions, Extractor, hash_files, register
from exvo.preprocess import check_level, rms_normalise

DEFAULT_CHECKPOINTS = {
    "wavlm": "microsoft/wavlm-large",
    "hubert": "facebook/hubert-large-ll60k",
    "wav2vec2": "facebook/wav2vec2-base",
}
POOLING = "mean||std (population, ddof=0) over unpadded frames, every hidden state (input embeddings first)"
WINDOW_CLIPS = 256
"""Clips decoded and length-sorted together when batching (bounds memory and latency)."""
PREFETCH = 2
"""Work units decoded ahead of the model."""


class CheckpointError(ValueError):
    """The SSL checkpoint could not be loaded; the message says how to fix it."""


# ---------------------------------------------------------------- loading
def _offline_help(name: str, ckpt: str) -> str:
    return (
        f"could not load the {name} checkpoint {ckpt!r} offline (no local copy found and the "
        "Hugging Face hub is unreachable). Fix: pass `--checkpoint /path/to/local/folder` "
        "(a folder with config.json and the weights, e.g. made by `save_pretrained`), or "
        f"pre-download it on a machine with network (`huggingface-cli download {ckpt}`) and "
        "copy the cache here, pointing HF_HOME at it"
    )


HUB_PROBE_SECONDS = 3.0
"""How long we wait for the hub to answer before calling it unreachable (a download would retry for ~30 s)."""


def _hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT``, default huggingface.co) opens within ``timeout`` s.

    Runs in a daemon thread so a slow DNS lookup cannot hold us past ``timeout`` either.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def _is_local(ckpt: str) -> bool:
    p = Path(ckpt).expanduser()
    # hub ids are "name" or "org/name"; anything else (absolute, ./, ~, deeper) is a path
    return p.exists() or ckpt.startswith(("/", ".", "~")) or ckpt.count("/") > 1 or os.sep != "/" and os.sep in ckpt


def load_checkpoint(name: str, ckpt: str):
    """``(model, feature_extractor, info)`` for a hub id or local folder; raises :class:`CheckpointError`.

    ``info`` holds the provenance for the cache config (revision or weights hash, and
    where the feature-extractor settings came from).
    """
    from transformers import AutoFeatureExtractor, AutoModel

    info: dict = {"checkpoint": ckpt}
    if _is_local(ckpt):
        folder = Path(ckpt).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {folder} does not exist; pass `--checkpoint` a folder "
                                  "holding config.json and the model weights (as written by save_pretrained)")
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"checkpoint folder {folder} has no config.json; pass `--checkpoint` a folder "
                                  "written by save_pretrained (config.json + model.safetensors)")
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"could not load the {name} model from {folder}: {e}") from None
        weights = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), folder / "config.json"])
        info["weights_sha256"] = hash_files(weights)
        source, local_only = str(folder), True
    else:
        source, local_only = ckpt, True
        try:
            model = AutoModel.from_pretrained(ckpt, local_files_only=True)   # the HF cache, no network
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                raise CheckpointError(_offline_help(name, ckpt) + " (HF_HUB_OFFLINE is set)") from None
            # no local copy: ask the hub once, quickly, instead of letting the download retry for half a minute
            if not _hub_reachable():
                raise CheckpointError(_offline_help(name, ckpt) + f" (no answer from the hub within "
                                      f"{HUB_PROBE_SECONDS:.0f} s)") from None
            try:
                model = AutoModel.from_pretrained(ckpt)
            except OSError:
                raise CheckpointError(_offline_help(name, ckpt)) from None
            local_only = False
        info["revision"] = _hub_revision(ckpt)
    try:
        fe = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only)
        info["feature_extractor"] = "checkpoint"
    except (OSError, ValueError):
        from transformers import Wav2Vec2FeatureExtractor

        # the released checkpoints of these families normalise their input; the
        # layer-norm ones (large) are trained with attention masks, group-norm ones not
        layer_norm = getattr(model.config, "feat_extract_norm", "layer") == "layer"
        fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                      do_normalize=True, return_attention_mask=layer_norm)
        info["feature_extractor"] = "defaults"
        warnings.warn(f"{source} has no preprocessor_config.json; using default input settings "
                      f"(do_normalize=True, return_attention_mask={layer_norm}). Save the checkpoint's "
                      "feature extractor next to the weights to follow its own settings", stacklevel=2)
    if getattr(fe, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise CheckpointError(f"{ckpt} expects {fe.sampling_rate} Hz input; exvo feeds {SAMPLE_RATE} Hz audio")
    return model, fe, info


def _hub_revision(repo: str) -> str | None:
    """Commit hash of the cached snapshot (``.../snapshots/<commit>/config.json``), if known."""
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(repo, "config.json")
        return Path(p).parent.name if isinstance(p, str) else None
    except Exception:
        return None


def conv_frames(config, n_samples):
    """Frames the conv feature encoder makes from ``n_samples`` (int or integer array)."""
    n = n_samples
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
    return n


def receptive_field(config) -> int:
    """Samples seen by one output frame of the conv feature encoder (400 for the released models)."""
    r = 1
    for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        r = (r - 1) * s + k
    return int(r)


def _hop(config) -> int:
    return int(np.prod(config.conv_stride))


# ---------------------------------------------------------------- work units
@dataclass
class _Clip:
    """A decoded, normalised clip: ``x`` ``(n,)`` float32 model input (already padded if too short)."""

    id: str
    x: np.ndarray
    seconds: float
    note: str | None = None


@dataclass
class _Unit:
    """What the model thread does next: one batch (padded or not), or results to pass on."""

    clips: list[_Clip] = field(default_factory=list)
    results: list[ClipResult] = field(default_factory=list)


class SSLExtractor(Extractor):
    """A transformers SSL model; ``embed(wav)`` → ``(L, 2 * hidden_size)`` float32.

    ``batched``: None = padded batches on CUDA, one clip at a time on CPU; True/False forces
    it (tests use True on CPU to check batched == one-by-one).
    """

    version = "1"

    def __init__(self, name: str, opts: ExtractOptions, batched: bool | None = None):
        import torch

        self.name = name
        self.opts = opts
        self.checkpoint = opts.checkpoint or DEFAULT_CHECKPOINTS[name]
        if opts.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"--precision must be fp32, fp16 or bf16, got {opts.precision!r}")
        if opts.chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0, got {opts.chunk_seconds}")
        if opts.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0 = all cores), got {opts.workers}")
        if opts.rms_db is not None:
            check_level(opts.rms_db)
        dev = resolve_device(opts.device)
        if dev == "cpu" and opts.precision == "fp16":
            raise ValueError("--precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
        self.device = torch.device(dev)
        self.batched = (self.device.type == "cuda") if batched is None else bool(batched)
        if self.batched and opts.batch_seconds <= 0:
            raise ValueError(f"--batch-seconds must be > 0 for batched extraction, got {opts.batch_seconds}")

        model, fe, self.info = load_checkpoint(name, self.checkpoint)
        if opts.normalize != "checkpoint":   # --normalize on|off overrides the checkpoint's own setting
            fe.do_normalize = opts.normalize == "on"
        self.fe = fe
        self.mconf = model.config
        self.model = model.to(self.device).eval()
        self.n_layers = int(self.mconf.num_hidden_layers) + 1
        self.hidden = int(self.mconf.hidden_size)
        self.min_samples = receptive_field(self.mconf)
        self.hop = _hop(self.mconf)
        # chunk length: a multiple of the hop so chunk frames lie on the unchunked frame grid
        self.chunk_samples = max(self.min_samples, int(opts.chunk_seconds * SAMPLE_RATE) // self.hop * self.hop)
        self.pad_ok = bool(getattr(fe, "return_attention_mask", False)) and \
            getattr(self.mconf, "feat_extract_norm", "layer") != "group"
        self._autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[opts.precision]
        self._tf32 = _ieee_fp32(self.device) if opts.precision == "fp32" else None

    # ------------------------------------------------------------ interface
    def config(self) -> dict:
        fe = self.fe
        return {
            "family": "ssl",
            "model_type": self.mconf.model_type,
            "checkpoint": self.checkpoint,
            **{k: v for k, v in self.info.items() if k != "checkpoint"},
            "input": {"do_normalize": bool(getattr(fe, "do_normalize", False)),
                      "return_attention_mask": bool(getattr(fe, "return_attention_mask", False))},
            "sample_rate": SAMPLE_RATE,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden,
            "pooling": POOLING,
            "short_clips": f"zero-padded to {self.min_samples} samples after normalisation",
            "chunking": {"chunk_samples": self.chunk_samples,
                         "policy": "normalise whole clip; consecutive chunks, a tail shorter than "
                                   f"{self.min_samples} samples joins the previous chunk; exact pooled stats"},
            "precision": self.opts.precision,
            "code_version": self.version,
            # only when set, so that caches made before the option existed keep matching
            **({"rms_db": float(self.opts.rms_db)} if self.opts.rms_db is not None else {}),
        }

    def embed(self, wav: np.ndarray) -> np.ndarray:
        clip = self._prepare("clip", np.asarray(wav, dtype=np.float32))
        return self._embed_single(clip)

    def frames(self, wav: np.ndarray, layer: int) -> tuple[np.ndarray, str | None]:
        """Hook of the frame cache (:mod:`exvo.extract.frames`): hidden state ``layer``'s frames
        ``(T, H)`` float32 and a note, with :meth:`embed`'s input policy (normalisation, short-clip
        padding, chunks of long clips concatenated). One clip, no padding."""
        import torch

        clip = self._prepare("clip", np.asarray(wav, dtype=np.float32))
        x = torch.from_numpy(clip.x)
        parts = [self._forward(x[None, a:b].to(self.device))[layer, 0].float().cpu() for a, b in self._chunks(x.numel())]
        return torch.cat(parts).numpy(), clip.note

    def run(self, items: Sequence[tuple[str, Path]]) -> Iterator[ClipResult]:
        """Yields one result per item; in corpus order on CPU, length order within windows when batched."""
        q: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()
        t = threading.Thread(target=self._produce, args=(list(items), q, stop), daemon=True,
                             name=f"exvo-{self.name}-decode")
        t.start()
        try:
            while True:
                unit = q.get()
                if unit is None:
                    break
                if isinstance(unit, BaseException):
                    raise unit
                yield from unit.results
                if unit.clips:
                    yield from self._run_unit(unit.clips)
        finally:
            stop.set()
            while t.is_alive():          # unblock a producer waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            t.join()

    def close(self) -> None:
        if self._tf32 is not None:
            _restore_fp32(self._tf32)
            self._tf32 = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------ decoding side
    def _prepare(self, cid: str, wav: np.ndarray) -> _Clip:
        """Raw 16 kHz samples → model input, following the checkpoint's feature extractor."""
        if self.opts.rms_db is not None:
            wav = rms_normalise(wav, self.opts.rms_db)
        x = self.fe(wav, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0].astype(np.float32)
        note = None
        if x.size < self.min_samples:
            note = (f"padded: {wav.size / SAMPLE_RATE:.4f} s is shorter than one frame "
                    f"({self.min_samples} samples); zero-padded to it")
            x = np.pad(x, (0, self.min_samples - x.size))
        return _Clip(cid, x, wav.size / SAMPLE_RATE, note)

    def _load(self, item: tuple[str, Path]) -> _Clip | ClipResult:
        cid, path = item
        try:
            wav, audio_note = read_audio(path)
        except AudioError as e:
            return ClipResult(cid, error=e.reason)
        try:
            clip = self._prepare(cid, wav)
            clip.note = join_notes(audio_note, clip.note)
            return clip
        except Exception as e:
            return ClipResult(cid, error=f"{type(e).__name__}: {e}", seconds=wav.size / SAMPLE_RATE)

    def _produce(self, items: list, q: queue.Queue, stop: threading.Event) -> None:
        def put(x) -> bool:
            while not stop.is_set():
                try:
                    q.put(x, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            if not self.batched:
                for item in items:
                    got = self._load(item)
                    unit = _Unit(results=[got]) if isinstance(got, ClipResult) else _Unit(clips=[got])
                    if not put(unit):
                        return
            else:
                n_threads = self.opts.workers or min(8, os.cpu_count() or 1)
                windows = [items[k:k + WINDOW_CLIPS] for k in range(0, len(items), WINDOW_CLIPS)]
                pool = ThreadPoolExecutor(n_threads, thread_name_prefix="exvo-decode")
                try:
                    # the next window decodes while the model works through this one's batches
                    pending = pool.map(self._load, windows[0]) if windows else iter(())
                    for j in range(len(windows)):
                        loaded = list(pending)
                        if j + 1 < len(windows):
                            pending = pool.map(self._load, windows[j + 1])
                        for unit in self._batches(loaded):
                            if not put(unit):
                                return
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
            put(None)
        except BaseException as e:  # surfaces in the consumer instead of hanging it
            put(e)

    def _batches(self, loaded: list[_Clip | ClipResult]) -> Iterator[_Unit]:
        """Length-sorted batches of at most ``batch_seconds`` of padded audio."""
        errors = [r for r in loaded if isinstance(r, ClipResult)]
        if errors:
            yield _Unit(results=errors)
        clips = sorted((c for c in loaded if isinstance(c, _Clip)), key=lambda c: c.x.size)
        budget = int(self.opts.batch_seconds * SAMPLE_RATE)
        batch: list[_Clip] = []
        for c in clips:
            if c.x.size > self.chunk_samples:          # long: chunked on its own
                yield _Unit(clips=[c])
                continue
            fits = (len(batch) + 1) * c.x.size <= budget and (self.pad_ok or not batch or batch[0].x.size == c.x.size)
            if batch and not fits:
                yield _Unit(clips=batch)
                batch = []
            batch.append(c)
        if batch:
            yield _Unit(clips=batch)

    # ------------------------------------------------------------ model side
    def _run_unit(self, clips: list[_Clip]) -> list[ClipResult]:
        try:
            if len(clips) == 1:
                embs = [self._embed_single(clips[0])]
            else:
                embs = list(self._embed_batch(clips))
        except Exception as e:
            if len(clips) > 1 and _is_oom(e):   # retry a batch that ran out of memory clip by clip
                self._free()
                return [r for c in clips for r in self._run_unit([c])]
            self._free()
            return [ClipResult(c.id, error=f"{type(e).__name__}: {e}", seconds=c.seconds) for c in clips]
        return [ClipResult(c.id, embedding=e, seconds=c.seconds, note=c.note) for c, e in zip(clips, embs)]

    def _free(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _forward(self, x, mask=None):
        """``x`` ``(B, T)`` float32 on device → hidden states stacked ``(L, B, frames, H)``."""
        import torch

        amp = (torch.autocast(self.device.type, dtype=self._autocast_dtype) if self._autocast_dtype is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            out = self.model(input_values=x, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        if len(hs) != self.n_layers:
            raise RuntimeError(f"model returned {len(hs)} hidden states, expected {self.n_layers}")
        return torch.stack(hs)

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        bounds = list(range(0, n, self.chunk_samples)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self.min_samples:
            del bounds[-2]            # short tail joins the previous chunk
        return list(zip(bounds[:-1], bounds[1:]))

    def _embed_single(self, clip: _Clip) -> np.ndarray:
        """One clip, no padding: ``(L, 2H)`` float32 (chunked with exact statistics when long)."""
        import torch

        x = torch.from_numpy(clip.x)
        if x.numel() <= self.chunk_samples:
            hs = self._forward(x[None].to(self.device))[:, 0]                     # (L, T, H)
            hs = hs.double() if self.device.type == "cpu" else hs.float()
            mean = hs.mean(dim=1)
            std = hs.std(dim=1, correction=0)
            return torch.cat([mean, std], dim=1).float().cpu().numpy()
        s = torch.zeros(self.n_layers, self.hidden, dtype=torch.float64, device=self.device)
        ss = torch.zeros_like(s)
        n = 0
        for a, b in self._chunks(x.numel()):
            hs = self._forward(x[None, a:b].to(self.device))[:, 0].double()     # (L, T, H)
            s += hs.sum(dim=1)
            ss += (hs * hs).sum(dim=1)
            n += hs.shape[1]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0.0)
        return torch.cat([mean, var.sqrt()], dim=1).float().cpu().numpy()

    def _embed_batch(self, clips: list[_Clip]) -> Iterator[np.ndarray]:
        """Padded batch → one ``(L, 2H)`` float32 per clip, pooled over each clip's own frames."""
        import torch

        lengths = [c.x.size for c in clips]
        T = max(lengths)
        if not self.pad_ok and any(n != T for n in lengths):
            raise RuntimeError(f"{self.name}: padding would change this model's output; batch equal lengths only")
        x = torch.zeros(len(clips), T, dtype=torch.float32)
        for i, c in enumerate(clips):
            x[i, :c.x.size] = torch.from_numpy(c.x)
        cuda = self.device.type == "cuda"
        if cuda:
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=cuda)
        mask = None
        if self.pad_ok:
            mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long().to(self.device, non_blocking=cuda)
        hs = self._forward(x, mask)                                              # (L, B, F, H)
        hs = hs.double() if not cuda else hs.float()
        n_in = torch.tensor(lengths, dtype=torch.long)
        # the model's own formula when it has one (it knows about adapters), else the conv stack's
        frames_of = getattr(self.model, "_get_feat_extract_output_lengths", None)
        frames = (frames_of(n_in) if frames_of is not None else conv_frames(self.mconf, n_in)).to(self.device)
        if int(frames.max()) > hs.shape[2]:
            raise RuntimeError(f"frame count {int(frames.max())} exceeds model output {hs.shape[2]}")
        fmask = (torch.arange(hs.shape[2], device=self.device)[None, :] < frames[:, None]).to(hs.dtype)  # (B, F)
        w = fmask[None, :, :, None]                                              # (1, B, F, 1)
        n = frames.to(hs.dtype)[None, :, None]                                   # (1, B, 1)
        mean = (hs * w).sum(dim=2) / n                                           # (L, B, H)
        var = (((hs - mean[:, :, None, :]) * w) ** 2).sum(dim=2) / n
        pooled = torch.cat([mean, var.sqrt()], dim=2).float().cpu().numpy()     # (L, B, 2H)
        for i in range(len(clips)):
            yield np.ascontiguousarray(pooled[:, i])


def _is_oom(e: Exception) -> bool:
    return "out of memory" in str(e).lower()


def _ieee_fp32(device) -> dict | None:
    """Turn TF32 off on CUDA so that ``fp32`` means IEEE float32; returns the old settings."""
    if device.type != "cuda":
        return None
    import torch

    old = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return old


def _restore_fp32(old: dict) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = old["matmul"]
    torch.backends.cudnn.allow_tf32 = old["cudnn"]


@register("wavlm", "hubert", "wav2vec2", help={
    n: f"SSL mean||std of every hidden state; default checkpoint {c} (--checkpoint overrides)"
    for n, c in (("wavlm", "microsoft/wavlm-large"), ("hubert", "facebook/hubert-large-ll60k"),
                 ("wav2vec2", "facebook/wav2vec2-base"))})
def _make(name: str, opts: ExtractOptions) -> Extractor:
    return SSLExtractor(name, opts)
