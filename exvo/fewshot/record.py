"""What a few-shot run records: its metrics (Val queries, the out-of-fold estimate), prediction
files and config.json. Shapes: labels ``(n, 10)``, predictions ``(S, n, 10)`` for S seeds."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from exvo.corpus import Corpus
from exvo.fewshot import protocol as P
from exvo.fewshot.config import FewShotConfig
from exvo.fewshot.registry import VARIANTS
from exvo.learn.framework import SeedFit
from exvo.version import __version__


def val_metrics(cfg: FewShotConfig, fit: SeedFit, fits: list[SeedFit], vy: np.ndarray, vpred: np.ndarray,
                n_speakers: int) -> dict:
    """metrics.json (without "test"): labels ``vy`` ``(n, 10)`` against ``vpred`` ``(S, n, 10)``,
    per seed, mean ± std over seeds and the seed ensemble, with bootstrap intervals."""
    per_seed = []
    for j, sd in enumerate(cfg.seeds.list):
        m, per = P.fewshot_ccc(vy, vpred[j])
        per_seed.append({"seed": sd, "ccc": m, "ci95": list(P.bootstrap_ci(vy, vpred[j], cfg.resamples)),
                         "ccc_per_emotion": dict(zip(P.EMOTIONS, per)), "best_epoch": int(fit.best_epoch[j]),
                         **({"holdout_ccc": float(max(h[j] for h in fit.history)) if fit.history else None}
                            if cfg.select.on == "holdout" else {"fold_epochs": [int(f.best_epoch[j]) for f in fits]})})
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
        "selection": ("best epoch per seed by the query CCC of held-out Train speakers; Val never chooses"
                      if cfg.select.on == "holdout" else
                      f"epochs chosen per seed and fold by the query CCC of each of {len(fits)} speaker folds of Train, "
                      "then refitted on all of Train for their median; Val never chooses"),
    }


def write_predictions(folder: Path, split: str, ids: list[str], pred: np.ndarray, seeds: list[int]) -> None:
    """``<split>.csv`` (seed ensemble) and ``per_seed/<split>.npz`` of ``pred`` ``(S, n, 10)``."""
    P.write_submission(folder / f"{split}.csv", ids, pred.mean(0))
    np.savez(folder / "per_seed" / f"{split}.npz", ids=np.array(ids, dtype=str), seeds=np.array(seeds),
             emotions=pred.astype(np.float32))


def run_config(corpus: Corpus, cfg: FewShotConfig, d, name: str, ft: dict, ft_trials: list[dict],
               n_val_query: int, seconds: dict, notes: list[str]) -> dict:
    """config.json (before provenance): everything needed to reproduce and describe the run; ``d``
    the run's prepared state (features, episodes, selection parts: ``exvo.fewshot.api``)."""
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
                     "holdout_speakers": [e.speaker for e in d.hold_eps],
                     "selection": {"on": cfg.select.on, "parts": [[e.speaker for e in p.eps] for p in d.parts],
                                   "final": ("the model of the Train speakers left" if cfg.select.on == "holdout"
                                             else "refitted on all of Train for the folds' median epoch")}},
        "standardisation": "per-feature mean/std of the fit Train rows (models/scaler.npz)"
                           + ("; then every speaker centred on its support clips' mean" if d.znorm_feat else ""),
        "clips": {"fit": int(d.fit_rows.size), "holdout_query": int(d.hold_q.size), "val_query": n_val_query},
        "std_over_seeds": "population (ddof=0)",
        "seconds": seconds,
        "notes": notes,
    }


def ccc_per_seed(y: np.ndarray, pred: np.ndarray) -> list[float]:
    return [P.fewshot_ccc(y, p)[0] for p in pred]


def oof_metrics(cfg: FewShotConfig, y: np.ndarray, pred: np.ndarray, n_speakers: int) -> dict:
    """``metrics.json["oof"]`` from the held-out Train queries' labels ``y`` ``(n, 10)`` and their
    out-of-fold predictions ``pred`` ``(S, n, 10)``: population CCC per seed, mean ± std, and the
    seed ensemble with its bootstrap interval. An estimate from Train alone, Val unused."""
    per = ccc_per_seed(y, pred)
    ens = pred.mean(0)
    chose = cfg.variant == "finetune" and cfg.ft_select
    return {"split": "Train (out-of-fold)", "n_query": int(y.shape[0]), "n_speakers": n_speakers,
            "ccc": {"mean": float(np.mean(per)), "std": float(np.std(per)), "per_seed": per},
            "ensemble": {"ccc": P.fewshot_ccc(y, ens)[0], "ci95": list(P.bootstrap_ci(y, ens, cfg.resamples))},
            "optimistic": bool(chose),
            "note": "query CCC of every Train speaker from the fold model that held it out"
                    + ("; the fine-tuning settings were chosen on these same predictions (optimistic)" if chose else "")}
