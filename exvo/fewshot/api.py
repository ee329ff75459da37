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

Model selection never looks at Val: a speaker-disjoint fraction ``select.holdout_frac`` (``--holdout``)
of the Train speakers is held out, with the same protocol (first 2 clips = support, rest = query), and
each seed keeps its best epoch by the hold-out query CCC. Val numbers are therefore not
chosen on Val (except ``wavlm@best``-style layer choices, which probe Val).

Run folder ``<runs>/fewshot/<name>/``::

    config.json     {"kind": "fewshot", ...} everything to reproduce the run
    metrics.json    Val query CCC (population): mean ± std over seeds, per seed, seed ensemble,
                    each with a 95 % bootstrap interval; "test" too when Test labels are known
    history.json    per-epoch hold-out CCC and training loss per seed
    val.csv, test.csv          File_ID,<10 emotions> of the query clips (seed ensemble)
    per_seed/val.npz, test.npz ids, seeds, emotions (S, n, 10)
    models/fewshot.pt, models/scaler.npz
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from exvo.version import __version__
from exvo.corpus import Corpus
from exvo.device import resolve_device
from exvo.fewshot import protocol as P
from exvo.fewshot.models import FewShotNet, reversal_schedule
from exvo.fewshot.registry import VARIANTS
from exvo.fewshot.train import (centre_speakers, episode_enrolment, finetune_episodes, predict_rows,
                                train_sampler)
from exvo.learn import runs
from exvo.learn.api import input_caches
from exvo.runs import provenance
from exvo.runs.store import RunWriter, check_name
from exvo.learn.features import FeatureMatrix, FeatureSpec, Scaler, load_features, parse_specs, report_missing
from exvo.learn.framework import SeedFit, train_seeds
from exvo.learn.probe import probe_layers
from exvo.splits import holdout_split
from exvo.fewshot.config import FewShotConfig

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


def holdout_protocol(rows: np.ndarray, spk: np.ndarray, frac: float, seed: int = 0, shots: int = P.SHOTS):
    """Speaker-disjoint ``(fit rows, hold-out episodes)`` of Train rows (feature-matrix rows).

    The hold-out speakers get the Val protocol: first ``shots`` clips = support, rest = query.
    """
    speakers = list(dict.fromkeys(spk[rows].tolist()))
    if len(speakers) < 2:
        raise ValueError("few-shot training needs at least 2 Train speakers (one is held out for model selection)")
    fit, held_rows = holdout_split(rows, spk[rows], None, frac, seed)     # the one hold-out rule
    held = set(spk[held_rows].tolist())
    eps = []
    for s in speakers:
        if s in held:
            r = rows[spk[rows] == s]
            if r.size > shots:
                eps.append(P.Episode(str(s), r[:shots], r[shots:], np.zeros((shots, 10))))
    if not eps:
        raise ValueError(f"no held-out Train speaker has more than {shots} clips; the hold-out needs query clips")
    return fit, eps


def fewshot(corpus: Corpus, cfg: FewShotConfig, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
            name: str | None = None, echo: Callable[[str], None] = print) -> FewShotResult:
    """Train ``cfg.seeds`` models on Train, personalise per Val/Test speaker, score Val queries, write the run."""
    t_start = time.perf_counter()
    cfg.validate()
    specs = parse_specs(cfg.features)
    name = check_name(name or derive_name([s.text for s in specs], cfg.variant, cfg.heads))
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        echo(msg)

    fm, val_proto, test_proto = _load_inputs(corpus, cfg, specs, cache_dir, echo, note)
    d = _prepare(corpus, cfg, fm, val_proto, test_proto)
    dev = torch.device(resolve_device(cfg.device))
    Xt = torch.from_numpy(d.X).to(dev)
    Yt = torch.from_numpy(np.nan_to_num(d.Y)).to(dev)
    _echo_plan(cfg, d, echo)
    fit, t_train = _train(cfg, d, Xt, Yt, dev)
    ft, ft_trials = _choose_finetune(cfg, d, fit, Xt, echo)

    t0 = time.perf_counter()
    vq, vpred = _personalise(cfg, fit, Xt, d.val_eps, ft)
    metrics = _val_metrics(cfg, fit, d.Y[vq], vpred, len(d.val_eps))
    writer = RunWriter(Path(runs_dir) / RUN_SUBDIR, name)
    (writer.path / "per_seed").mkdir()
    (writer.path / "models").mkdir()
    _write_predictions(writer.path, "val", [fm.ids[k] for k in vq], vpred, cfg.seeds.list)
    if d.test_eps:
        test = _personalise_test(corpus, cfg, d, fit, Xt, ft, writer.path)
        if test is not None:
            metrics["test"] = test
    t_pred = time.perf_counter() - t0
    writer.torch("models/fewshot.pt", fit.stack.state_dict())
    d.scaler.save(writer.path / "models" / "scaler.npz")
    seconds = {"train": round(t_train, 2), "personalise_and_score": round(t_pred, 2),
               "total": round(time.perf_counter() - t_start, 2)}
    config = _run_config(corpus, cfg, d, name, ft, ft_trials, int(vq.size), seconds, notes)
    writer.json("metrics.json", metrics)
    writer.json("history.json", {"holdout_ccc": fit.history, "train_loss": fit.train_loss,
                                 "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run})
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
    hold_eps: list[P.Episode]        # held-out Train speakers, Val protocol, support_y from the corpus
    fit_rows: np.ndarray             # (n_fit,) Train rows the models are fitted on
    train_spk: list[str]             # the fit speakers, sorted: index = speaker code
    spk: np.ndarray                  # (N,) speaker of every row
    spk_code: np.ndarray             # (N,) int64 code among train_spk, 0 for every other speaker
    Y: np.ndarray                    # (N, 10) float32
    X: np.ndarray                    # (N, D) float32, standardised (and centred for znorm=features)
    scaler: Scaler
    znorm_feat: bool
    hold_q: np.ndarray               # (n_hold,) query rows of hold_eps
    hold_enr: np.ndarray             # (n_hold, 2) their enrolment (support) rows

    @property
    def hold_y(self) -> np.ndarray:
        """``(n_hold, 10)`` labels of the hold-out queries."""
        return self.Y[self.hold_q]


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
             test_proto: P.Protocol | None) -> _Prepared:
    """Move the episodes onto feature rows, hold out Train speakers for selection, standardise
    ``fm.X`` ``(N, D)`` on the fit rows (a float32 copy; ``fm.X`` is untouched) and, for
    ``znorm="features"``, centre every speaker on its support clips. Returns the shared state."""
    fpos = {i: k for k, i in enumerate(fm.ids)}
    row = np.array([fpos.get(i, -1) for i in corpus.ids], np.int64)   # corpus row → feature row

    def to_fm(ep: P.Episode) -> P.Episode:
        return P.Episode(ep.speaker, row[ep.support], row[ep.query], ep.support_y)

    val_eps = [to_fm(e) for e in val_proto.episodes]
    test_eps = [to_fm(e) for e in test_proto.episodes] if test_proto is not None else []
    crow = _corpus_rows(corpus, fm.ids)
    spk = np.array([str(s) for s in corpus.speakers[crow]])
    Y = corpus.emotions[crow].astype(np.float32)        # NaN for Test rows: never read (Test support from the file)
    fit_rows, hold_eps = holdout_protocol(fm.rows["Train"], spk, cfg.select.holdout_frac, seed=cfg.select.holdout_seed)
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
        for s in train_spk:
            r = fit_rows[spk[fit_rows] == s]
            groups.append((r[:P.SHOTS], r))
        groups += [(e.support, np.concatenate([e.support, e.query])) for e in hold_eps + val_eps + test_eps]
        X = centre_speakers(X, groups)
    hold_q, hold_enr = episode_enrolment(hold_eps)
    return _Prepared(fm=fm, val_proto=val_proto, test_proto=test_proto, val_eps=val_eps, test_eps=test_eps,
                     hold_eps=hold_eps, fit_rows=fit_rows, train_spk=train_spk, spk=spk, spk_code=spk_code, Y=Y,
                     X=X, scaler=scaler, znorm_feat=znorm_feat, hold_q=hold_q, hold_enr=hold_enr)


def _echo_plan(cfg: FewShotConfig, d: _Prepared, echo: Callable[[str], None]) -> None:
    """One line: features, clips and speakers of each part, variant, heads and seeds."""
    fm = d.fm
    echo(f"features {' + '.join(f'{b.spec}:{b.dim}' for b in fm.blocks)} = {fm.dim} dims; Train {d.fit_rows.size} clips of "
         f"{len(d.train_spk)} speakers (+{len(d.hold_eps)} held out for selection), Val {len(d.val_eps)} speakers / "
         f"{sum(e.query.size for e in d.val_eps)} query clips; variant {cfg.variant}"
         + (f" heads {','.join(cfg.heads)}" if cfg.heads else "") + f"; seeds {cfg.seeds.list}")


def _train(cfg: FewShotConfig, d: _Prepared, Xt: torch.Tensor, Yt: torch.Tensor,
           dev: torch.device) -> tuple[SeedFit, float]:
    """Train one :class:`FewShotNet` per seed on the fit rows (``Xt`` ``(N, D)``, ``Yt`` ``(N, 10)``),
    each keeping its best epoch by the hold-out query CCC. Returns ``(fit, seconds)``."""
    enrol = cfg.variant == "enrol"
    hold, reach = cfg.reversal

    def make():
        return FewShotNet(d.fm.dim, len(d.train_spk), enrol=enrol, heads=tuple(cfg.heads), hidden=cfg.hidden,
                          zdim=cfg.zdim, dropout=cfg.dropout)

    sampler = train_sampler(Xt, Yt, torch.from_numpy(d.spk_code).to(dev), d.fit_rows, cfg.train.batch_size, enrol,
                            lambda ep: reversal_schedule(ep, hold, reach), d.spk)
    hy = d.hold_y

    def evaluate(stack) -> np.ndarray:
        pred = predict_rows(stack, Xt, d.hold_q, d.hold_enr if enrol else None, cfg.train.vectorise)
        return np.array(_ccc_per_seed(hy, pred))

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seeds.first)        # dropout draws from the global generator: seed it for reproducible runs
        fit = train_seeds(make, sampler, evaluate, cfg.seeds.list, cfg.train, device=dev)
    return fit, time.perf_counter() - t0


def _choose_finetune(cfg: FewShotConfig, d: _Prepared, fit: SeedFit, Xt: torch.Tensor,
                     echo: Callable[[str], None]) -> tuple[dict, list[dict]]:
    """``(fine-tuning settings {params, steps, lr}, trials)``: the given settings, or with
    ``ft_select`` the :data:`FT_GRID` entry with the best hold-out query CCC (then one trial each)."""
    ft = {"params": cfg.ft_params, "steps": cfg.ft_steps, "lr": cfg.ft_lr}
    ft_trials = []
    if cfg.variant == "finetune" and cfg.ft_select:
        # choose the fine-tuning settings on the held-out Train speakers (Val never chooses)
        hy = d.hold_y
        for tune, steps, lr in FT_GRID:
            pred = finetune_episodes(fit.stack, Xt, d.hold_eps, lambda e: (e.support, e.query), steps, lr,
                                     loss=cfg.ft_loss, vectorise=cfg.train.vectorise, tune=tune)
            ft_trials.append({"params": tune, "steps": steps, "lr": lr, "holdout_ccc": P.fewshot_ccc(hy, pred.mean(0))[0]})
        best = max(ft_trials, key=lambda t: t["holdout_ccc"])
        ft = {k: best[k] for k in ("params", "steps", "lr")}
        echo(f"fine-tuning chosen on held-out Train speakers: {ft} (hold-out query CCC {best['holdout_ccc']:.3f})")
    return ft, ft_trials


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


def _val_metrics(cfg: FewShotConfig, fit: SeedFit, vy: np.ndarray, vpred: np.ndarray, n_speakers: int) -> dict:
    """metrics.json (without "test"): labels ``vy`` ``(n, 10)`` against ``vpred`` ``(S, n, 10)``,
    per seed, mean ± std over seeds and the seed ensemble, with bootstrap intervals."""
    per_seed = []
    for j, sd in enumerate(cfg.seeds.list):
        m, per = P.fewshot_ccc(vy, vpred[j])
        per_seed.append({"seed": sd, "ccc": m, "ci95": list(P.bootstrap_ci(vy, vpred[j], cfg.resamples)),
                         "ccc_per_emotion": dict(zip(P.EMOTIONS, per)), "best_epoch": int(fit.best_epoch[j]),
                         "holdout_ccc": float(max(h[j] for h in fit.history)) if fit.history else None})
    ens = vpred.mean(0)
    m, per = P.fewshot_ccc(vy, ens)
    return {
        "track": "fewshot", "split": "Val", "n_query": int(vy.shape[0]), "n_speakers": n_speakers,
        "ccc_convention": P.CONVENTION, "variant": cfg.variant, "heads": cfg.heads,
        "summary": {"ccc": {"mean": float(np.mean([r["ccc"] for r in per_seed])),
                            "std": float(np.std([r["ccc"] for r in per_seed]))}},
        "per_seed": per_seed,
        "ensemble": {"ccc": m, "ci95": list(P.bootstrap_ci(vy, ens, cfg.resamples)),
                     "ccc_per_emotion": dict(zip(P.EMOTIONS, per))},
        "ci": f"95 % percentile bootstrap over the Val query clips ({cfg.resamples} resamples, seed 0)",
        "selection": "best epoch per seed by the query CCC of held-out Train speakers; Val never chooses",
    }


def _write_predictions(folder: Path, split: str, ids: list[str], pred: np.ndarray, seeds: list[int]) -> None:
    """``<split>.csv`` (seed ensemble) and ``per_seed/<split>.npz`` of ``pred`` ``(S, n, 10)``."""
    P.write_submission(folder / f"{split}.csv", ids, pred.mean(0))
    np.savez(folder / "per_seed" / f"{split}.npz", ids=np.array(ids, dtype=str), seeds=np.array(seeds),
             emotions=pred.astype(np.float32))


def _personalise_test(corpus: Corpus, cfg: FewShotConfig, d: _Prepared, fit: SeedFit, Xt: torch.Tensor,
                      ft: dict, folder: Path) -> dict | None:
    """Predict the Test queries into ``folder``; returns metrics.json's "test" entry, or None
    when the corpus has no Test labels (the usual case)."""
    tq, tpred = _personalise(cfg, fit, Xt, d.test_eps, ft)
    tids = [d.fm.ids[k] for k in tq]
    _write_predictions(folder, "test", tids, tpred, cfg.seeds.list)
    try:   # the demo corpus keeps its Test labels aside: score Test too (never used for any choice)
        ty = P.query_labels(corpus, d.test_proto)
        tpos = {i: k for k, i in enumerate(tids)}
        order = [tpos[i] for i in d.test_proto.query_ids(corpus)]
        tm = _ccc_per_seed(ty, tpred[:, order])
        ens = tpred.mean(0)[order]
        return {"summary": {"ccc": {"mean": float(np.mean(tm)), "std": float(np.std(tm))}},
                "ensemble": {"ccc": P.fewshot_ccc(ty, ens)[0], "ci95": list(P.bootstrap_ci(ty, ens, cfg.resamples))},
                "n_query": len(order)}
    except P.FewShotError:
        return None


def _run_config(corpus: Corpus, cfg: FewShotConfig, d: _Prepared, name: str, ft: dict, ft_trials: list[dict],
                n_val_query: int, seconds: dict, notes: list[str]) -> dict:
    """config.json (before provenance): everything needed to reproduce and describe the run."""
    hold, reach = cfg.reversal
    return {
        "kind": "fewshot", "exvo_version": __version__, "name": name,
        "corpus": {"name": corpus.name, "root": str(corpus.root)},
        "features": [b.to_json() for b in d.fm.blocks], "dim": d.fm.dim,
        "variant": cfg.variant, "variant_description": VARIANTS[cfg.variant], "heads": cfg.heads,
        "seeds": cfg.seeds.list, "fewshot_config": asdict(cfg),
        "finetune": ({"chosen": ft, "loss": cfg.ft_loss, "trials_on_holdout": ft_trials,
                      "chosen_by": "held-out Train speakers" if ft_trials else "given"} if cfg.variant == "finetune" else None),
        "reversal_warmup": {"hold_until_epoch": hold, "reach_epoch": reach} if cfg.heads else None,
        "architecture": "MLP encoders over cached utterance embeddings (EIHW: CNN14/CNN10 on log-mels)",
        "protocol": {"val": d.val_proto.to_json(corpus), "test": d.test_proto.to_json(corpus) if d.test_proto else None,
                     "holdout_speakers": [e.speaker for e in d.hold_eps]},
        "standardisation": "per-feature mean/std of the fit Train rows (models/scaler.npz)"
                           + ("; then every speaker centred on its support clips' mean" if d.znorm_feat else ""),
        "clips": {"fit": int(d.fit_rows.size), "holdout_query": int(d.hold_q.size), "val_query": n_val_query},
        "std_over_seeds": "population (ddof=0)",
        "seconds": seconds,
        "notes": notes,
    }


def _ccc_per_seed(y: np.ndarray, pred: np.ndarray) -> list[float]:
    return [P.fewshot_ccc(y, p)[0] for p in pred]


def _corpus_rows(corpus: Corpus, ids: list[str]) -> np.ndarray:
    pos = {i: k for k, i in enumerate(corpus.ids)}
    return np.array([pos[i] for i in ids], np.int64)
