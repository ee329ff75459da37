"""The task-CNN extractors: ``raw_exvo_er``, ``zff_exvo_er``, ``raw_exvo_cr``, ``zff_exvo_cr``,
and CNNs users train with ``exvo train-cnn``.

Embedding: the frame-level pre-activation of the 10-unit layer, every 10 ms, pooled
to mean ‖ std (ddof = 0): ``(L, 20)`` float32 per clip, one layer per CNN seed
(``ExtractOptions.cnn_seeds``, default 1, so ``L = 1`` as for any non-SSL extractor).
``exvo learn --features raw_exvo_er@k`` then uses the CNN of seed ``k``.

Built-in names train their models on the Train split of the corpus being extracted, the
first time they are asked for, and keep them in ``<cache>/<corpus>/models/``:

* ``<name>.pt``                one per CNN seed (``<name>.s<k>.pt`` for seeds k ≥ 1), trained
                               on all of Train; it embeds Val, Test and (without crossfit) Train;
* ``<name>[.s<k>].cf<i>of<K>.pt`` with ``--crossfit K``: the CNN trained without the Train
                               speakers of fold i (speakers dealt into K folds, seeded);
                               it embeds the Train clips of fold i, so no Train embedding
                               comes from a CNN that saw its speaker — as Val/Test
                               embeddings never do. Otherwise the downstream learner
                               trains on in-sample embeddings and is tested on
                               out-of-sample ones.

Each model's JSON (training record) holds ``val_metrics`` (the paper's Table 1) and
``speakers_seen``; a model whose saved recipe differs from the one asked for (arch,
epochs cap, seed, fold) is retrained. The cache config holds every model's weights
hash, so a retrained model never mixes with embeddings of an old one.
"""
from __future__ import annotations

import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from exvo.audio import join_notes, read_audio
from exvo.corpus import SAMPLE_RATE, AudioError, Corpus
from exvo.device import resolve_device
from exvo.extract.base import ClipResult, ExtractOptions, Extractor, add_resolver, mean_std, register
from exvo.extract.cnn.labels import EMOTION_LABEL
from exvo.extract.cnn.model import ARCHS, arch_defaults, clip_embeddings
from exvo.extract.cnn.train import (
    VERSION, Echo, LoadedModel, TrainConfig, load_model, prepare_signal, torch_threads, train_cnn,
)
from exvo.extract.zff import ZFFConfig
from exvo.splits import speaker_folds

BUILTIN: dict[str, tuple[str, str]] = {   # name -> (signal, task)
    "raw_exvo_er": ("raw", "er"),
    "zff_exvo_er": ("zff", "er"),
    "raw_exvo_cr": ("raw", "cr"),
    "zff_exvo_cr": ("zff", "cr"),
}


def _stderr_echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_file(cache_dir: Path, corpus_name: str, name: str, seed_index: int = 0,
               fold: int | None = None, n_folds: int | None = None) -> Path:
    """Where a built-in extractor keeps the model of one CNN seed (and crossfit fold)."""
    stem = name + (f".s{seed_index}" if seed_index else "") + (f".cf{fold}of{n_folds}" if fold is not None else "")
    return Path(cache_dir) / corpus_name / "models" / f"{stem}.pt"


class WaveformCNNExtractor(Extractor):
    """Frame-level 10-unit layer of trained raw/ZFF CNNs, pooled to mean ‖ std: ``(n_seeds, 20)``.

    Built-in names train on the extracted corpus in :meth:`prepare`; custom names load
    ``model_path`` (trained by :func:`train_custom_cnn`; one seed, no crossfit).
    """

    version = VERSION

    def __init__(self, name: str, opts: ExtractOptions, signal: str | None = None, task: str | None = None,
                 model_path: Path | None = None, echo: Echo | None = None):
        self.name, self.opts, self.signal, self.task = name, opts, signal, task
        self.model_path = Path(model_path) if model_path is not None else None
        self.echo = echo or _stderr_echo
        self.full: list[LoadedModel] = []               # one per CNN seed
        self.folds: list[list[LoadedModel]] = []        # [seed][fold], crossfit only
        self.fold_of: dict[str, int] = {}               # Train File_ID -> fold (crossfit only)
        self.device = "cpu"
        self.n_seeds = max(1, int(getattr(opts, "cnn_seeds", 1) or 1))
        self.crossfit = int(getattr(opts, "crossfit", 0) or 0)
        self.arch = getattr(opts, "cnn_arch", "paper") or "paper"
        if self.arch not in ARCHS:
            raise ValueError(f"--cnn-arch must be one of {ARCHS}, got {self.arch!r}")
        if self.crossfit == 1 or self.crossfit < 0:
            raise ValueError(f"--crossfit must be 0 (off) or K >= 2 folds, got {self.crossfit}")
        if task is None and (self.n_seeds > 1 or self.crossfit):
            raise ValueError(f"{name} is a saved custom CNN (one model): --cnn-seeds and --crossfit apply to the "
                             f"built-in task CNNs ({', '.join(BUILTIN)})")

    # ------------------------------------------------------------ models
    def _wanted(self, seed: int, n_folds: int | None, fold: int | None) -> dict:
        # the defaults are part of the recipe: a model trained under other defaults is not reused
        return {"arch": self.arch, "seed": seed, "max_epochs": self.opts.train_epochs,
                "crossfit_fold": fold, "crossfit_folds": n_folds, "code_version": VERSION,
                "arch_defaults": arch_defaults(self.arch), "train_defaults": asdict(TrainConfig())}

    def _get(self, corpus: Corpus, path: Path, seed: int, rows, fold=None, n_folds=None) -> LoadedModel:
        want = self._wanted(seed, n_folds, fold)
        if path.is_file():
            lm = load_model(path)
            got = lm.meta.get("request")
            if got == want:
                self.echo(f"{self.name}: using the trained model {path} (delete it to retrain)")
                return lm
            self.echo(f"{self.name}: {path} was trained with {got}, asked for {want}: retraining")
        train_cnn(corpus, EMOTION_LABEL if self.task == "er" else "Country", self.signal, path,
                  epochs=self.opts.train_epochs, device=self.opts.device, seed=seed, arch=self.arch,
                  rows=rows, evaluate=fold is None, echo=self.echo, threads=self.opts.workers,
                  extra_meta={"extractor": self.name, "request": want})
        return load_model(path)

    def prepare(self, corpus: Corpus, cache_dir: Path) -> None:
        if self.task is None:
            self._load_custom()
            return
        tr = corpus.indices("Train")
        folds = (speaker_folds(corpus.speakers[tr], self.crossfit, self.opts.seed, corpus.country[tr])
                 if self.crossfit else None)
        self.full, self.folds = [], []
        for s in range(self.n_seeds):
            seed = self.opts.seed + s
            self.full.append(self._get(corpus, model_file(cache_dir, corpus.name, self.name, s), seed, None))
            if folds is None:
                continue
            per = []
            for i in range(self.crossfit):
                path = model_file(cache_dir, corpus.name, self.name, s, i, self.crossfit)
                lm = self._get(corpus, path, seed, tr[folds != i], i, self.crossfit)
                held_out = set(corpus.speakers[tr[folds == i]].tolist())
                seen = set(lm.info.get("speakers_seen", []))
                if not seen or seen & held_out:
                    raise RuntimeError(f"{path} saw speaker(s) {sorted(seen & held_out)[:5]} of crossfit fold {i} "
                                       "(or records none); delete the models folder and extract again")
                per.append(lm)
            self.folds.append(per)
        self.fold_of = {corpus.ids[r]: int(f) for r, f in zip(tr, folds)} if folds is not None else {}
        self.device = resolve_device(self.opts.device)
        for lm in self._all():
            lm.model.to(self.device)

    def _load_custom(self) -> None:
        if self.full:
            return
        if self.model_path is None:
            raise RuntimeError(f"{self.name}: call prepare(corpus, cache_dir) first (it trains or finds the model)")
        lm = load_model(self.model_path)
        sig = lm.meta["signal"]
        if self.signal is not None and sig != self.signal:
            raise ValueError(f"{self.model_path} is a {sig} CNN but {self.name} expects {self.signal}; delete it and retrain")
        self.signal = sig
        self.device = resolve_device(self.opts.device)
        lm.model.to(self.device)
        self.full = [lm]

    def _ready(self) -> None:
        if not self.full:
            if self.task is not None:
                raise RuntimeError(f"{self.name}: call prepare(corpus, cache_dir) first (it trains or finds the models)")
            self._load_custom()

    def _all(self) -> list[LoadedModel]:
        return self.full + [m for per in self.folds for m in per]

    def _zff_config(self) -> ZFFConfig | None:
        z = self.full[0].meta.get("zff_config")
        return ZFFConfig(**z) if z else None

    def config(self) -> dict:
        self._ready()
        m = self.full[0].meta
        mc = m["model_config"]
        return {
            "family": "waveform_cnn", "code_version": VERSION, "signal": m["signal"],
            "classes": m["classes"], "label_column": m["label_column"], "trained_on": m["trained_on"],
            "weights_sha256": self.full[0].sha256 if len(self.full) == 1 else [x.sha256 for x in self.full],
            "crossfit": self.crossfit or None,
            "crossfit_weights_sha256": [[x.sha256 for x in per] for per in self.folds] or None,
            "layers": "one per CNN seed" if len(self.full) > 1 else "one CNN",
            "seeds": [x.meta.get("train_config", {}).get("seed") for x in self.full],
            "train_config": m.get("train_config"), "model_config": mc, "zff_config": m.get("zff_config"),
            "sample_rate": mc["sample_rate"], "frame_samples": mc["window"], "hop_samples": mc["hop"],
            "embedding": f"pre-activation {mc['bottleneck']}-unit layer per frame",
            "pooling": "mean||std (ddof=0) over frames", "short_clips": "zero-padded to one frame",
        }

    # ------------------------------------------------------------ embedding
    def models_for(self, file_id: str | None) -> list[LoadedModel]:
        """One model per CNN seed: the crossfit model of the clip's fold for Train clips, else the full one."""
        self._ready()
        f = self.fold_of.get(file_id) if file_id is not None else None
        return self.full if f is None else [per[f] for per in self.folds]

    def embed_with_note(self, wav: np.ndarray, file_id: str | None = None) -> tuple[np.ndarray, str | None]:
        """``wav`` ``(n,)`` 16 kHz → ``((n_seeds, 2 * bottleneck) float32, note or None)``."""
        models = self.models_for(file_id)
        x = prepare_signal(wav, self.signal, self._zff_config())
        out, note = [], None
        with torch_threads(self.opts.workers):
            for lm in models:
                frames, note = clip_embeddings(lm.model, x, self.device)
                out.append(mean_std(frames))
        return np.stack(out), note

    def embed(self, wav: np.ndarray) -> np.ndarray:
        """Embedding by the CNN(s) trained on all of Train (Val/Test clips; see :meth:`run` for Train)."""
        return self.embed_with_note(wav)[0]

    def run(self, items: Sequence[tuple[str, Path]]) -> Iterator[ClipResult]:
        self._ready()
        for cid, path in items:
            try:
                wav, audio_note = read_audio(path)
            except AudioError as e:
                yield ClipResult(cid, error=e.reason)
                continue
            sec = wav.size / SAMPLE_RATE
            try:
                emb, note = self.embed_with_note(wav, cid)
            except Exception as e:  # one bad clip must not stop the run
                yield ClipResult(cid, error=f"{type(e).__name__}: {e}", seconds=sec)
                continue
            yield ClipResult(cid, embedding=emb, seconds=sec, note=join_notes(audio_note, note))


@register(*BUILTIN, help={
    n: f"{sig} waveform CNN trained on this corpus's Train split for "
       f"{'emotion' if task == 'er' else 'country'} ({task.upper()}); 20 dims per CNN seed"
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
                     seed: int = 0, arch: str = "paper", echo: Echo = print, model_config: dict | None = None,
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
    return train_cnn(corpus, label_column, signal, path, epochs=epochs, device=device, seed=seed, arch=arch,
                     model_config=model_config, train_config=train_config, echo=echo,
                     extra_meta={"extractor": name}, threads=threads)
