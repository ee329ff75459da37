"""The Python API: what ``import exvo`` offers, and what the ``exvo`` commands call.

Every function is quiet unless ``progress=True`` (then it prints what the command would).
Runs come back as :class:`exvo.runs.reader.Run` (``scores`` DataFrame, ``predictions``,
``config`` dataclass, ``stale``). See ``docs/api.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from exvo.corpus import Corpus, file_stem
from exvo.runs.reader import Run, load_run


def _echo(progress: bool):
    return print if progress else (lambda m: None)


def _corpus(corpus: Corpus | str | Path) -> Corpus:
    """A corpus as given, or read from a folder with its default task (``Corpus.from_dir(path, task=…)``
    for another task's labels)."""
    return corpus if isinstance(corpus, Corpus) else Corpus.from_dir(corpus)


def extract(corpus: Corpus | str | Path, model: str, cache_dir: str | Path = "cache", *, overwrite: bool = False,
            progress: bool = False, **options):
    """Extract utterance embeddings of every clip into ``<cache_dir>/<corpus>/<model>.h5`` (resumes
    a partial cache) and return the finished :class:`~exvo.extract.cache.EmbeddingCache`
    (``ids`` ``(N,)``, ``n_layers`` L, ``dim`` F). ``options``: fields of
    :class:`~exvo.extract.base.ExtractOptions` (``checkpoint=``, ``workers=``, …)."""
    from exvo.config import from_dict
    from exvo.extract.base import ExtractOptions
    from exvo.extract.cache import EmbeddingCache
    from exvo.extract.run import extract as run_extract

    corpus = _corpus(corpus)
    unknown = sorted(set(options) - set(ExtractOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown extract option(s) {unknown}; known: {sorted(ExtractOptions.__dataclass_fields__)}")
    summary = run_extract(corpus, model, cache_dir, from_dict(ExtractOptions, options), overwrite=overwrite,
                          progress=progress)
    return EmbeddingCache(summary.cache)


def load_features(corpus: Corpus | str | Path, features: str | Sequence[str], split: str = "Train",
                  cache_dir: str | Path = "cache", *, frame: bool = False, brackets: bool = True):
    """Cached features of one split: ``(ids, X)`` with ``X`` ``(n_clips, dim)`` float32 (raw, not
    standardised; several feature specs are concatenated, ``wavlm@12`` picks a layer), or with
    ``frame=True`` a ``pandas.DataFrame`` indexed by ``File_ID``. ``brackets=False`` gives the ids
    without the ExVo brackets (``"[00001]"`` → ``"00001"``)."""
    from exvo.learn.features import load_features as load, parse_specs

    corpus = _corpus(corpus)
    split = split.capitalize()
    fm = load(corpus, parse_specs(features), cache_dir, echo=lambda m: None, need_train=False)
    rows = fm.rows[split]
    ids = [fm.ids[k] if brackets else file_stem(fm.ids[k]) for k in rows]
    X = fm.X[rows]
    if not frame:
        return ids, X
    import pandas as pd

    cols = [f"{b.name}@{l}:{k}" if b.layers else f"{b.spec}:{k}"      # a multi-layer set: one block per layer
            for b in fm.blocks for l in b.used for k in range(b.dim)]
    return pd.DataFrame(X, index=pd.Index(ids, name="File_ID"), columns=cols)


def learn(corpus: Corpus | str | Path, features: str | Sequence[str], learner: str = "mlp", seeds: int = 5, *,
          cache_dir: str | Path = "cache", runs_dir: str | Path = "runs", name: str | None = None,
          overwrite: bool = False, progress: bool = False, **settings) -> Run:
    """Train ``seeds`` models of ``learner`` on the cached ``features`` (Train), choose epochs on a
    speaker-disjoint Train hold-out, score Val, predict Val and Test; write and return the run.
    ``settings``: flat settings of :class:`~exvo.learn.api.LearnConfig` and its pieces (``preset=``,
    ``arch=``, ``lr=``, ``epochs=``, ``stop_on=``, …; :func:`exvo.config.build`)."""
    from exvo.config import build
    from exvo.learn.api import learn as run_learn
    from exvo.learn.config import LearnConfig

    feats = [features] if isinstance(features, str) else list(features)
    cfg = build(LearnConfig, settings, features=feats, learner=learner, seeds=seeds, progress=progress)
    res = run_learn(_corpus(corpus), cfg, cache_dir, runs_dir, name=name, echo=_echo(progress), overwrite=overwrite)
    return load_run(res.run_dir, cache_dir)


def fuse(corpus: Corpus | str | Path, runs: Sequence[str] | None = None, *, runs_dir: str | Path = "runs",
         mode: str = "hybrid", top: int = 1, weighted: bool = False, select_on: str = "oof",
         name: str | None = None, progress: bool = False) -> Run:
    """Late fusion of finished runs (names under ``runs_dir``, default all learn runs): ``hybrid``
    picks the best run per subtask, ``mean`` averages; ``select_on="oof"`` (default) chooses on the runs'
    out-of-fold Train predictions, ``"val"`` on Val (†), ``"cv"`` on halves of Val, scored out of fold."""
    from exvo.fusion.api import fuse as run_fuse

    res = run_fuse(_corpus(corpus), runs_dir, list(runs) if runs is not None else None, mode=mode, top=top,
                   weighted=weighted, select_on=select_on, name=name, echo=_echo(progress))
    return load_run(res.path)


def cnn_posteriors(corpus: Corpus | str | Path, model: str, *, cache_dir: str | Path = "cache",
                   runs_dir: str | Path = "runs", name: str | None = None, device: str = "cpu",
                   progress: bool = False) -> Run:
    """A country CNN's own clip posteriors (``model`` ``raw_exvo_cr`` | ``zff_exvo_cr``, trained by
    :func:`extract`) as a run that :func:`fuse` takes for the country only (``exvo cnn-posteriors``)."""
    from exvo.fusion.cnn_source import cnn_source

    res = cnn_source(_corpus(corpus), model, cache_dir, runs_dir, name, device=device, echo=_echo(progress))
    return load_run(res.path)


def fewshot(corpus: Corpus | str | Path, features: str | Sequence[str], variant: str = "none", seeds: int = 5, *,
            cache_dir: str | Path = "cache", runs_dir: str | Path = "runs", name: str | None = None,
            progress: bool = False, **settings) -> Run:
    """The few-shot personalisation track (:mod:`exvo.fewshot.api`); run in ``<runs_dir>/fewshot/``.
    ``settings``: flat settings of :class:`~exvo.fewshot.api.FewShotConfig` (``epochs=``, ``holdout=``, …)."""
    from exvo.config import build
    from exvo.fewshot.api import fewshot as run_fewshot
    from exvo.fewshot.config import FewShotConfig

    feats = [features] if isinstance(features, str) else list(features)
    cfg = build(FewShotConfig, settings, features=feats, variant=variant, seeds=seeds)
    res = run_fewshot(_corpus(corpus), cfg, cache_dir, runs_dir, name=name, echo=_echo(progress))
    return load_run(res.run_dir, cache_dir)


def verify(corpus: Corpus | str | Path, features: str, *, cache_dir: str | Path = "cache",
           runs_dir: str | Path = "runs", name: str | None = None, progress: bool = False, **settings) -> Run:
    """Enrol-to-verify (:mod:`exvo.verify.api`); ``settings``: flat settings of
    :class:`~exvo.verify.api.VerifyConfig` (``seen=``, ``task=``, ``epochs=``, …). Run in ``<runs_dir>/verify/``."""
    from exvo.config import build
    from exvo.verify.api import verify as run_verify
    from exvo.verify.config import VerifyConfig

    res = run_verify(_corpus(corpus), build(VerifyConfig, settings, features=features), cache_dir, runs_dir,
                     name=name, echo=_echo(progress))
    return load_run(res.run_dir, cache_dir)


def report(runs_dir: str | Path = "runs", out_dir: str | Path | None = None,
           corpus: Corpus | str | Path | None = None) -> str:
    """Write ``report.md``/``report.csv`` and figures (default ``<runs_dir>/report``); return the table."""
    from exvo.fusion.report import make_report

    out = Path(out_dir) if out_dir is not None else Path(runs_dir) / "report"
    return make_report(runs_dir, out, _corpus(corpus) if corpus is not None else None)


__all__ = ["Corpus", "Run", "extract", "fewshot", "fuse", "learn", "load_features", "load_run", "report", "verify"]
