"""``fewshot``: cached features → a few-shot learner → run folder (what ``exvo fewshot`` calls).

Variants (registry :data:`VARIANTS`):

* ``none``     g∘f, 1 − CCC loss, no personalisation;
* ``finetune`` g∘f trained as ``none``, then per speaker a copy fine-tuned on its 2 support
  clips (``ft_steps`` AdamW steps at ``ft_lr``; 1 step at 1e-4 is the official baseline);
* ``enrol``    EIHW's g∘f∘g̃ (enrolment encoder over 2 same-speaker clips), with the auxiliary
  heads of their Table 1 as ``heads``;
* ``znorm``    speaker normalisation by the support clips: ``znorm="features"`` centres every
  speaker's features on the mean of its support clips (Train speakers: their first 2 clips),
  ``znorm="residual"`` shifts the ``none`` model's predictions by the mean support residual.

``finetune`` options: ``ft_params`` all | head | bias (which weights move), ``ft_loss`` mse | ccc,
and ``ft_select`` (choose weights/steps/lr from :data:`FT_GRID` on the held-out Train speakers).

Model selection never looks at Val (:mod:`exvo.fewshot.select`): held-out Train speakers get the
Val protocol (first 2 clips = support, rest = query) and epochs (and ``ft_select``'s settings) are
chosen by their query CCC. By default (``--stop-on folds``) these are the K speaker folds of
``exvo learn``: every Train speaker is held out once, the fold models' predictions are the run's
out-of-fold estimate (``metrics.json["oof"]``), and each seed's final model is refitted on all of
Train for the folds' median epoch. ``--stop-on holdout``: one held-out fraction
``select.holdout_frac`` (``--holdout``), whose model is the final one.

Run folder ``<runs>/fewshot/<name>/``::

    config.json     {"kind": "fewshot", ...} everything to reproduce the run
    metrics.json    Val query CCC (population): mean ± std over seeds, per seed, seed ensemble,
                    each with a 95 % bootstrap interval; "test" too when Test labels are known
    history.json    per-epoch hold-out CCC and training loss per seed (per fold with folds)
    val.csv, test.csv          File_ID,<10 emotions> of the query clips (seed ensemble)
    per_seed/val.npz, test.npz ids, seeds, emotions (S, n, 10)
    models/fewshot.pt, models/scaler.npz
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from exvo.corpus import Corpus
from exvo.device import resolve_device
from exvo.fewshot import protocol as P
from exvo.fewshot.models import FewShotNet, reversal_schedule
from exvo.fewshot.train import (centre_speakers, episode_enrolment, finetune_episodes, predict_rows,
                                train_sampler)
from exvo.learn import runs
from exvo.learn.api import input_caches
from exvo.runs import provenance
from exvo.runs.store import RunWriter, check_name
from exvo.learn.features import FeatureMatrix, FeatureSpec, Scaler, load_features, parse_specs, report_missing
from exvo.learn.folds import fixed_epochs, median_epoch
from exvo.learn.framework import SeedFit, train_seeds
from exvo.learn.probe import probe_layers
from exvo.splits import speaker_rows
from exvo.fewshot.config import FewShotConfig
from exvo.fewshot import record as R
from exvo.fewshot.select import Part, make_parts

FT_GRID = [("all", 1, 1e-4), ("all", 10, 1e-4), ("all", 10, 1e-3), ("head", 10, 1e-3), ("head", 10, 1e-2),
           ("bias", 10, 1e-2), ("bias", 10, 5e-2)]
"""``ft_select``: (weights moved, AdamW steps, lr) tried on the held-out Train speakers; the first is the baseline's."""
RUN_SUBDIR = P.RUN_SUBDIR


@dataclass
class FewShotResult:
    run_dir: Path
    metrics: dict
    config: dict

    def summary_line(self) -> str:
        return summary_line(self.run_dir, self.metrics)


def summary_line(run_dir, m: dict) -> str:
    s, e = m["summary"]["ccc"], m["ensemble"]
    return (f"{run_dir}: Val query CCC {s['mean']:.3f}±{s['std']:.3f} (mean ± std over {len(m['per_seed'])} seeds); "
            f"seed ensemble {e['ccc']:.3f} [{e['ci95'][0]:.3f}–{e['ci95'][1]:.3f}] (95 % bootstrap CI, population CCC)")


def derive_name(specs: list[str], variant: str, heads: list[str]) -> str:
    h = "".join(x.replace("~", "t") for x in heads)
    return runs.derive_name(specs, "fewshot", None) + f"_{variant}" + (f"_{h}" if h else "")


def fewshot(corpus: Corpus, cfg: FewShotConfig, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
            name: str | None = None, echo: Callable[[str], None] = print) -> FewShotResult:
    """Train ``cfg.seeds`` models on Train, personalise per Val/Test speaker, score Val queries, write the run."""
    from exvo.tasks import require_exvo

    require_exvo(corpus, "the ExVo-FewShot track")
    t_start = time.perf_counter()
    cfg.validate()
    specs = parse_specs(cfg.features)
    name = check_name(name or derive_name([s.text for s in specs], cfg.variant, cfg.heads))
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        echo(msg)

    fm, val_proto, test_proto = _load_inputs(corpus, cfg, specs, cache_dir, echo, note)
    d = _prepare(corpus, cfg, fm, val_proto, test_proto, note)
    dev = torch.device(resolve_device(cfg.device))
    Xt = torch.from_numpy(d.X).to(dev)
    Yt = torch.from_numpy(np.nan_to_num(d.Y)).to(dev)
    _echo_plan(cfg, d, echo)
    fit, fold_fits, t_train = _train(cfg, d, Xt, Yt, dev, echo)
    ft, ft_trials = _choose_finetune(cfg, d, fold_fits, Xt, echo)

    t0 = time.perf_counter()
    vq, vpred = _personalise(cfg, fit, Xt, d.val_eps, ft)
    metrics = R.val_metrics(cfg, fit, fold_fits, d.Y[vq], vpred, len(d.val_eps))
    if cfg.select.on == "folds":
        metrics["oof"] = _oof_metrics(cfg, d, fold_fits, Xt, ft)
    writer = RunWriter(Path(runs_dir) / RUN_SUBDIR, name)
    (writer.path / "per_seed").mkdir()
    (writer.path / "models").mkdir()
    R.write_predictions(writer.path, "val", [fm.ids[k] for k in vq], vpred, cfg.seeds.list)
    if d.test_eps:
        test = _personalise_test(corpus, cfg, d, fit, Xt, ft, writer.path)
        if test is not None:
            metrics["test"] = test
    t_pred = time.perf_counter() - t0
    writer.torch("models/fewshot.pt", fit.stack.state_dict())
    d.scaler.save(writer.path / "models" / "scaler.npz")
    seconds = {"train": round(t_train, 2), "personalise_and_score": round(t_pred, 2),
               "total": round(time.perf_counter() - t_start, 2)}
    config = R.run_config(corpus, cfg, d, name, ft, ft_trials, int(vq.size), seconds, notes)
    writer.json("metrics.json", metrics)
    writer.json("history.json", {"holdout_ccc": fit.history, "train_loss": fit.train_loss,
                                 "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
                                 "folds": [{"holdout_ccc": f.history, "best_epoch": f.best_epoch}
                                           for f in fold_fits] if cfg.select.on == "folds" else None})
    final = writer.commit(config, provenance.inputs(corpus, caches=input_caches(fm.blocks, cache_dir)))
    return FewShotResult(final, metrics, config)


@dataclass
class _Prepared:
    """What every step after loading shares. Row indices (episodes, ``fit_rows``) are feature rows:
    rows of ``X``/``Y``/``spk``, not corpus rows."""

    fm: FeatureMatrix
    val_proto: P.Protocol
    test_proto: P.Protocol | None
    val_eps: list[P.Episode]
    test_eps: list[P.Episode]
    parts: list[Part]                # selection: K speaker folds or one hold-out (exvo.fewshot.select)
    hold_eps: list[P.Episode]        # held-out Train speakers of every part, Val protocol, support_y from the corpus
    fit_rows: np.ndarray             # (n_fit,) Train rows the final models are fitted on
    train_spk: list[str]             # the fit speakers, sorted: index = speaker code
    spk: np.ndarray                  # (N,) speaker of every row
    spk_code: np.ndarray             # (N,) int64 code among train_spk, 0 for every other speaker
    Y: np.ndarray                    # (N, 10) float32
    X: np.ndarray                    # (N, D) float32, standardised (and centred for znorm=features)
    scaler: Scaler
    znorm_feat: bool
    hold_q: np.ndarray               # (n_hold,) query rows of hold_eps, part after part


def _load_inputs(corpus: Corpus, cfg: FewShotConfig, specs: list[FeatureSpec], cache_dir: str | Path,
                 echo: Callable[[str], None], note: Callable[[str], None]
                 ) -> tuple[FeatureMatrix, P.Protocol, P.Protocol | None]:
    """``(features (X (N, D) over the cached clips), Val protocol, Test protocol or None)``;
    the protocols' episodes hold corpus rows.

    Test is optional: without a support set or with clips missing from the caches the run goes on
    without test.csv (and says so), unless the user named a support file, which then must work.
    """
    val_proto = P.protocol_for(corpus, "Val", cfg.support_seed, None)
    test_proto = None
    if corpus.split_ids("Test"):
        try:
            test_proto = P.protocol_for(corpus, "Test", None, cfg.support_file)
        except P.FewShotError as e:
            if cfg.support_file is not None:
                raise
            note(f"note: test.csv is not written: {e}")
    fm = load_features(corpus, specs, cache_dir, echo=echo, probe_fn=probe_layers)
    report_missing(fm, corpus, cache_dir, need=["Val"], echo=note)
    if test_proto is not None and fm.missing.get("Test"):
        note(f"note: {len(fm.missing['Test'])} Test clip(s) are not in the cache(s); test.csv is not written")
        test_proto = None
    return fm, val_proto, test_proto


def _prepare(corpus: Corpus, cfg: FewShotConfig, fm: FeatureMatrix, val_proto: P.Protocol,
             test_proto: P.Protocol | None, note: Callable[[str], None]) -> _Prepared:
    """Move the episodes onto feature rows, make the selection parts (folds or a hold-out),
    standardise ``fm.X`` ``(N, D)`` on the final fit rows (a float32 copy; ``fm.X`` is untouched;
    with folds all of Train: feature statistics only, no labels) and, for ``znorm="features"``,
    centre every speaker on its support clips. Returns the shared state."""
    fpos = {i: k for k, i in enumerate(fm.ids)}
    row = np.array([fpos.get(i, -1) for i in corpus.ids], np.int64)   # corpus row → feature row

    def to_fm(ep: P.Episode) -> P.Episode:
        return P.Episode(ep.speaker, row[ep.support], row[ep.query], ep.support_y)

    val_eps = [to_fm(e) for e in val_proto.episodes]
    test_eps = [to_fm(e) for e in test_proto.episodes] if test_proto is not None else []
    crow = _corpus_rows(corpus, fm.ids)
    spk = np.array([str(s) for s in corpus.speakers[crow]])
    Y = corpus.emotions[crow].astype(np.float32)        # NaN for Test rows: never read (Test support from the file)
    parts = make_parts(corpus, fm, spk, cfg.select, note)
    fit_rows = parts[0].fit_rows if cfg.select.on == "holdout" else fm.rows["Train"]
    hold_eps = [e for p in parts for e in p.eps]
    for e in hold_eps:
        e.support_y = Y[e.support]
    scaler = Scaler.fit(fm.X, fit_rows)
    X = np.array(fm.X, np.float32, copy=True)
    scaler.apply_(X)
    train_spk = sorted(set(spk[fit_rows].tolist()))
    code = {s: k for k, s in enumerate(train_spk)}
    spk_code = np.array([code.get(s, 0) for s in spk], np.int64)
    znorm_feat = cfg.variant == "znorm" and cfg.znorm == "features"
    if znorm_feat:
        groups = []
        own = dict(zip(*speaker_rows(spk[fit_rows])))
        for s in train_spk:
            r = fit_rows[own[s]]
            groups.append((r[:P.SHOTS], r))
        groups += [(e.support, np.concatenate([e.support, e.query])) for e in hold_eps + val_eps + test_eps]
        X = centre_speakers(X, groups)
    return _Prepared(fm=fm, val_proto=val_proto, test_proto=test_proto, val_eps=val_eps, test_eps=test_eps,
                     parts=parts, hold_eps=hold_eps, fit_rows=fit_rows, train_spk=train_spk, spk=spk,
                     spk_code=spk_code, Y=Y, X=X, scaler=scaler, znorm_feat=znorm_feat,
                     hold_q=np.concatenate([p.q for p in parts]))


def _echo_plan(cfg: FewShotConfig, d: _Prepared, echo: Callable[[str], None]) -> None:
    """One line: features, clips and speakers of each part, variant, heads and seeds."""
    fm = d.fm
    held = (f"+{len(d.hold_eps)} held out for selection" if cfg.select.on == "holdout" else
            f"{len(d.parts)} speaker folds for selection, then refitted on all")
    echo(f"features {' + '.join(f'{b.spec}:{b.dim}' for b in fm.blocks)} = {fm.dim} dims; Train {d.fit_rows.size} clips of "
         f"{len(d.train_spk)} speakers ({held}), Val {len(d.val_eps)} speakers / "
         f"{sum(e.query.size for e in d.val_eps)} query clips; variant {cfg.variant}"
         + (f" heads {','.join(cfg.heads)}" if cfg.heads else "") + f"; seeds {cfg.seeds.list}")


def _train(cfg: FewShotConfig, d: _Prepared, Xt: torch.Tensor, Yt: torch.Tensor, dev: torch.device,
           echo: Callable[[str], None]) -> tuple[SeedFit, list[SeedFit], float]:
    """Train one :class:`FewShotNet` per seed (``Xt`` ``(N, D)``, ``Yt`` ``(N, 10)``) on each selection
    part's fit rows, each seed keeping its best epoch by the part's held-out query CCC; with folds,
    then one per seed on all of Train for the median over seeds × folds of those epochs (no early
    stopping, the last epoch kept). Returns ``(final fit, the parts' fits, seconds)``."""
    enrol = cfg.variant == "enrol"
    hold, reach = cfg.reversal
    codes = torch.from_numpy(d.spk_code).to(dev)

    def make():
        return FewShotNet(d.fm.dim, len(d.train_spk), enrol=enrol, heads=tuple(cfg.heads), hidden=cfg.hidden,
                          zdim=cfg.zdim, dropout=cfg.dropout)

    def fit_on(rows: np.ndarray, evaluate, train_cfg) -> SeedFit:
        sampler = train_sampler(Xt, Yt, codes, rows, cfg.train.batch_size, enrol,
                                lambda ep: reversal_schedule(ep, hold, reach), d.spk)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seeds.first)    # dropout draws from the global generator: seed it for reproducible runs
            return train_seeds(make, sampler, evaluate, cfg.seeds.list, train_cfg, device=dev)

    def scorer(part: Part):
        hy = d.Y[part.q]
        return lambda stack: np.array(R.ccc_per_seed(hy, predict_rows(stack, Xt, part.q, part.enr if enrol else None,
                                                                     cfg.train.vectorise)))

    t0 = time.perf_counter()
    fits = []
    for k, part in enumerate(d.parts):
        fits.append(fit_on(part.fit_rows, scorer(part), cfg.train))
        if cfg.select.on == "folds":
            echo(f"  fold {k + 1}/{len(d.parts)}: fit {part.fit_rows.size} clips, best epochs {fits[-1].best_epoch} "
                 f"by the query CCC of {len(part.eps)} held-out speakers")
    if cfg.select.on == "holdout":
        return fits[0], fits, time.perf_counter() - t0
    fixed = fixed_epochs(cfg.train, median_epoch([e for f in fits for e in f.best_epoch]))
    echo(f"  refit on all {d.fit_rows.size} Train clips for {fixed.epochs} epoch(s) (median over seeds × folds)")
    final = fit_on(d.fit_rows, lambda stack: np.zeros(stack.n), fixed)
    return final, fits, time.perf_counter() - t0


def _choose_finetune(cfg: FewShotConfig, d: _Prepared, fits: list[SeedFit], Xt: torch.Tensor,
                     echo: Callable[[str], None]) -> tuple[dict, list[dict]]:
    """``(fine-tuning settings {params, steps, lr}, trials)``: the given settings, or with
    ``ft_select`` the :data:`FT_GRID` entry with the best query CCC of the held-out Train speakers,
    each personalised from the model of its part (fold) that did not see it (then one trial each)."""
    ft = {"params": cfg.ft_params, "steps": cfg.ft_steps, "lr": cfg.ft_lr}
    ft_trials = []
    if cfg.variant == "finetune" and cfg.ft_select:
        # choose the fine-tuning settings on the held-out Train speakers (Val never chooses)
        hy = d.Y[d.hold_q]
        for tune, steps, lr in FT_GRID:
            pred = np.concatenate([finetune_episodes(f.stack, Xt, part.eps, lambda e: (e.support, e.query), steps, lr,
                                                     loss=cfg.ft_loss, vectorise=cfg.train.vectorise, tune=tune)
                                   for f, part in zip(fits, d.parts)], axis=1)
            ft_trials.append({"params": tune, "steps": steps, "lr": lr, "holdout_ccc": P.fewshot_ccc(hy, pred.mean(0))[0]})
        best = max(ft_trials, key=lambda t: t["holdout_ccc"])
        ft = {k: best[k] for k in ("params", "steps", "lr")}
        echo(f"fine-tuning chosen on held-out Train speakers: {ft} (hold-out query CCC {best['holdout_ccc']:.3f})")
    return ft, ft_trials


def _oof_metrics(cfg: FewShotConfig, d: _Prepared, fits: list[SeedFit], Xt: torch.Tensor, ft: dict) -> dict:
    """``metrics.json["oof"]``: every Train speaker's query clips personalised (as the variant says)
    by the fold model that never saw the speaker (:func:`exvo.fewshot.record.oof_metrics`)."""
    pred = np.concatenate([_personalise(cfg, f, Xt, part.eps, ft)[1] for f, part in zip(fits, d.parts)], axis=1)
    return R.oof_metrics(cfg, d.Y[d.hold_q], pred, len(d.hold_eps))


def _personalise(cfg: FewShotConfig, fit: SeedFit, Xt: torch.Tensor, eps: list[P.Episode],
                 ft: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(query rows (n,), predictions (S, n, 10))`` of the episodes, personalised as the variant says."""
    enrol = cfg.variant == "enrol"
    q, enr = episode_enrolment(eps)
    if cfg.variant == "finetune":
        pred = finetune_episodes(fit.stack, Xt, eps, lambda e: (e.support, e.query), ft["steps"], ft["lr"],
                                 loss=cfg.ft_loss, vectorise=cfg.train.vectorise, tune=ft["params"])
    else:
        pred = predict_rows(fit.stack, Xt, q, enr if enrol else None, cfg.train.vectorise)
    if cfg.variant == "znorm" and cfg.znorm == "residual":
        sup = np.concatenate([e.support for e in eps])
        ps = predict_rows(fit.stack, Xt, sup, None, cfg.train.vectorise).reshape(fit.stack.n, len(eps), P.SHOTS, 10)
        shift = (np.stack([e.support_y for e in eps])[None] - ps).mean(2)          # (S, n_spk, 10)
        sizes = [e.query.size for e in eps]
        pred = np.clip(pred + np.repeat(shift, sizes, axis=1), 0.0, 1.0)
    return q, pred


def _personalise_test(corpus: Corpus, cfg: FewShotConfig, d: _Prepared, fit: SeedFit, Xt: torch.Tensor,
                      ft: dict, folder: Path) -> dict | None:
    """Predict the Test queries into ``folder``; returns metrics.json's "test" entry, or None
    when the corpus has no Test labels (the usual case)."""
    tq, tpred = _personalise(cfg, fit, Xt, d.test_eps, ft)
    tids = [d.fm.ids[k] for k in tq]
    R.write_predictions(folder, "test", tids, tpred, cfg.seeds.list)
    try:   # the demo corpus keeps its Test labels aside: score Test too (never used for any choice)
        ty = P.query_labels(corpus, d.test_proto)
        tpos = {i: k for k, i in enumerate(tids)}
        order = [tpos[i] for i in d.test_proto.query_ids(corpus)]
        tm = R.ccc_per_seed(ty, tpred[:, order])
        ens = tpred.mean(0)[order]
        return {"summary": {"ccc": {"mean": float(np.mean(tm)), "std": float(np.std(tm))}},
                "ensemble": {"ccc": P.fewshot_ccc(ty, ens)[0], "ci95": list(P.bootstrap_ci(ty, ens, cfg.resamples))},
                "n_query": len(order)}
    except P.FewShotError:
        return None


def _corpus_rows(corpus: Corpus, ids: list[str]) -> np.ndarray:
    pos = {i: k for k, i in enumerate(corpus.ids)}
    return np.array([pos[i] for i in ids], np.int64)
