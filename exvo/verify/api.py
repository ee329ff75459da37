"""``verify``: train a prototype encoder on seen emotion classes, enrol a new task, verify queries.

Protocol (paper 004, §3.3, §4.1, Alg. 1), on exvo's splits:

1. class of a clip = its dominant emotion (argmax of the 10 intensities);
2. the encoder trains on the Train clips of the ``seen`` classes only (clips of every other
   class never enter training, nor the feature standardisation); epochs are chosen on a
   speaker-disjoint hold-out of those Train clips (nearest-Train-prototype UAR over the
   seen classes), never on the task's classes;
3. per seed, ``enrol`` clips of each task class are drawn from Val; their mean embedding is
   the class prototype;
4. queries: the Test clips of the task classes when Test has labels (the demo corpus), else
   the Val clips of the half of the Val speakers that were not enrolled from (speaker-disjoint);
   each goes to the nearest prototype (cosine);
5. UAR and weighted F1 per seed → mean ± std over seeds; the learned margin m likewise;
   the same models give the N_p curve (UAR against the number of enrolled clips).

The paper's "All" reference: the same encoder + classifier trained with cross-entropy on all
Train clips of the task's classes (the unseen one included), scored on the same queries.

Run folder ``<runs>/verify/<name>/``: ``config.json`` (kind ``verify``), ``metrics.json``,
``history.json``, ``embeddings.npz`` (seed 0: queries, enrolled clips, seen prototypes, for the
report's projection), ``models/encoder.pt`` + ``models/scaler.npz``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from exvo.version import __version__
from exvo.corpus import Corpus, CorpusError
from exvo.device import resolve_device
from exvo.runs import provenance
from exvo.runs.store import RunWriter
from exvo.learn.folds import fixed_epochs, median_epoch
from exvo.learn.selection import speaker_parts
from exvo.learn.framework import predict, train_seeds
from exvo.metrics import EMOTIONS, uar
from exvo.verify.encoder import VerifyModule
from exvo.verify.episodes import dominant_class, episodic_sampler, nearest_prototype, prototypes, weighted_f1
from exvo.verify.inputs import Inputs, load_inputs
from exvo.verify.losses import MARGIN_LOSSES
from exvo.verify.config import VerifyConfig
from exvo.verify.steps import (Classes, Embedder, Rows, embedder, enrol_and_score, np_curve, over_seeds,
                               pretrain_rows, pretrain_uar, task_rows)

@dataclass
class VerifyResult:
    run_dir: Path
    metrics: dict
    config: dict

    def line(self) -> str:
        """One human-readable result line (what ``exvo verify`` prints without ``--json``)."""
        m = self.metrics

        def ms(d) -> str:
            return f"{d['mean']:.3f} ± {d['std']:.3f}" if isinstance(d, dict) and d.get("std") is not None else (
                f"{d['mean']:.3f}" if isinstance(d, dict) else "?")

        q = m.get("queries") or {}
        ref = m.get("all_reference")
        return (f"{self.run_dir}: {m.get('loss')} on {'/'.join(m.get('task', []))} (unseen: "
                f"{', '.join(m.get('unseen', [])) or 'none'}), {m.get('enrol')} enrolled per class, "
                f"{q.get('n', '?')} {q.get('split', '')} queries: UAR {ms(m.get('uar'))}, weighted F1 "
                f"{ms(m.get('f1_weighted'))} (mean ± std over {m.get('seeds')} seeds; chance UAR "
                f"{m.get('chance_uar', float('nan')):.3f})"
                + (f"; All reference UAR {ms(ref.get('uar'))}" if isinstance(ref, dict) else ""))

    def summary(self) -> dict:
        """The JSON that ``exvo verify --json`` prints."""
        m = self.metrics
        keys = ("task", "unseen", "loss", "encoder", "enrol", "queries", "uar", "f1_weighted", "margin", "scale",
                "pretrain_uar", "chance_uar", "seeds", "selection")
        out = {k: m[k] for k in keys if k in m}
        out["np_curve"] = {n: {"mean": v["mean"], "std": v["std"]} for n, v in m["np_curve"].items()}
        ref = m.get("all_reference")
        out["all_reference"] = None if ref is None else {"uar": ref["uar"], "f1_weighted": ref["f1_weighted"]}
        return out | {"notes": m.get("notes", []), "run": str(self.run_dir)}


def class_labels(corpus: Corpus, ids: list[str]) -> tuple[np.ndarray, bool]:
    """Dominant-emotion class of every clip in ``ids`` (−1 unknown) and whether Test has labels."""
    pos = {i: k for k, i in enumerate(corpus.ids)}
    emo = corpus.emotions.copy()
    test_labelled = False
    te = corpus.indices("Test")
    if te.size:
        try:
            emo[te] = corpus.labels("Test")[0]
            test_labelled = bool(np.isfinite(emo[te]).all())
        except CorpusError:
            test_labelled = False
    lab = dominant_class(emo)
    return np.array([lab[pos[i]] for i in ids], dtype=np.int64), test_labelled


def _fit_selected(inp: Inputs, labels: np.ndarray, fit: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]],
                  classes: list[int], loss: str, cfg: VerifyConfig, device: str, echo: Callable[[str], None],
                  select: str = "prototype"):
    """``(fit result, make, fold epochs)``: one encoder per seed, its epochs chosen on the selection
    ``parts`` (:func:`exvo.learn.selection.speaker_parts`). One hold-out: the model trained on its
    fit rows, best epoch restored. Folds: one model per seed and fold, each stopped on its own
    held-out speakers, then one per seed on ``fit`` (all of them) for the median over seeds × folds
    of the chosen epochs, the last epoch kept."""
    if cfg.select.on == "holdout":
        res, make = _train(inp, labels, *parts[0], classes, loss, cfg, device, echo, select)
        return res, make, None
    fold_epochs = []
    for k, (f, h) in enumerate(parts):
        echo(f"  fold {k + 1}/{len(parts)}: fit {f.size} clips, epochs chosen on {h.size} held-out clips")
        fold_epochs.append([int(e) for e in _train(inp, labels, f, h, classes, loss, cfg, device, echo, select)[0].best_epoch])
    epochs = fixed_epochs(cfg.train, median_epoch([e for row in fold_epochs for e in row])).epochs
    echo(f"  refit on all {fit.size} clips for {epochs} epoch(s) (median over seeds × folds)")
    res, make = _train(inp, labels, fit, None, classes, loss, cfg, device, echo, select, refit_epochs=epochs)
    return res, make, fold_epochs


def _train(inp: Inputs, labels: np.ndarray, fit: np.ndarray, held: np.ndarray | None, classes: list[int], loss: str,
           cfg: VerifyConfig, device: str, echo: Callable[[str], None], select: str = "prototype",
           refit_epochs: int | None = None):
    """Train one encoder per seed on ``fit`` rows of ``classes``; select epochs on ``held`` rows by the
    UAR of the nearest fit-row prototype (``select="prototype"``) or of the classifier (``"classifier"``);
    or, with ``refit_epochs`` (``held`` None), train that many epochs and keep the last."""
    K = len(classes)
    cidx = {c: k for k, c in enumerate(classes)}
    enc = cfg.encoder_cfg
    data = {k: v for k, v in inp.data.items()}
    by_class = [fit[labels[fit] == c] for c in classes]
    sampler = episodic_sampler(data, by_class, cfg.n_per_class)
    vec = enc.kind == "mlp"
    # one episode (n_per_class clips of each class) is one batch; a GRU encoder cannot run under vmap
    tcfg = replace(cfg.train, batch_size=K * cfg.n_per_class, vectorise=cfg.train.vectorise and vec)
    if refit_epochs is not None:
        tcfg = fixed_epochs(tcfg, refit_epochs)
        held = fit[:0]
    # prototypes for model selection from at most 2000 fit rows (fixed): bounded cost per epoch
    proto_rows = fit if fit.size <= 2000 else np.sort(np.random.default_rng(cfg.seeds.first).choice(fit, 2000, replace=False))
    held_y = np.array([cidx[c] for c in labels[held]])
    proto_y = np.array([cidx[c] for c in labels[proto_rows]])

    def make():
        return VerifyModule(inp.dim, K, loss, enc, cfg.loss_cfg)

    def evaluate(stack):
        if refit_epochs is not None:
            return np.zeros(stack.n)
        if select == "classifier":
            lg = predict(stack, data, held, vectorise=vec)["logits"]
            return np.array([uar(held_y, lg[j].argmax(1)) for j in range(stack.n)])
        e_p = predict(stack, data, proto_rows, vectorise=vec)["emb"]
        e_h = predict(stack, data, held, vectorise=vec)["emb"]
        return np.array([uar(held_y, nearest_prototype(e_h[j], prototypes(e_p[j], proto_y, range(K))))
                         for j in range(stack.n)])

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):      # dropout draws from the global generator: seed it
        torch.manual_seed(10_007 * cfg.seeds.first + K)
        fitres = train_seeds(make, sampler, evaluate, cfg.seeds.list, tcfg, device=device,
                             progress=lambda ep, s: echo(f"  epoch {ep}: held-out Train-speaker UAR "
                                                         + " ".join(f"{v:.3f}" for v in s)) if ep % 10 == 0 else None)
    echo(f"  trained {fitres.epochs_run} epochs in {time.perf_counter() - t0:.1f} s; best epochs {fitres.best_epoch}")
    return fitres, make


def _seed_modules(stack, make) -> list[VerifyModule]:
    mods = []
    for j in range(stack.n):
        m = make()
        p, b = stack.one(j)
        m.load_state_dict({**{k: v.cpu() for k, v in p.items()}, **{k: v.cpu() for k, v in b.items()}})
        mods.append(m)
    return mods


def _load_classes(corpus: Corpus, cfg: VerifyConfig, cache_dir: str | Path,
                  echo: Callable[[str], None]) -> tuple[Inputs, Classes]:
    """Load the features of ``cfg`` and class every clip; ``(inputs, classes)``. Sets
    ``cfg.encoder_cfg.kind`` to the kind the features allow (the saved config records it)."""
    # checked before loading: without Val labels there is nothing to enrol, however good the features
    if not corpus.has_labels("Val"):
        raise CorpusError(f"{corpus.root} has no labelled Val clips; enrolment draws its clips from Val")
    inp = load_inputs(corpus, cfg.features, cache_dir, cfg.encoder, cfg.max_frames, echo=echo)
    cfg.encoder_cfg.kind = inp.kind
    labels, test_labelled = class_labels(corpus, inp.ids)
    seen = [EMOTIONS.index(c) for c in cfg.seen]
    task = [EMOTIONS.index(c) for c in cfg.task]
    unseen = [c for c in task if c not in seen]
    spk_of = dict(zip(corpus.ids, corpus.speakers))
    speakers = np.array([spk_of[i] for i in inp.ids])
    return inp, Classes(labels, speakers, seen, task, unseen, test_labelled)


def _criterion_values(mods: list[VerifyModule]) -> tuple[list[float | None], list[float | None]]:
    """``(margins, scales)``: each seed's margin m and scale, None where its loss has none."""
    with torch.no_grad():
        margins = [None if (m := mod.criterion.margin()) is None else float(m) for mod in mods]
        scales = [None if (w := mod.criterion.scale()) is None else float(w) for mod in mods]
    return margins, scales


def _reference(inp: Inputs, cl: Classes, rows: Rows, cfg: VerifyConfig, device: str,
               echo: Callable[[str], None]) -> dict:
    """The paper's "All" reference: a cross-entropy classifier per seed trained on all Train clips
    of the task classes (the unseen one included), scored on the same queries; its metrics entry."""
    echo("\"All\" reference: cross-entropy classifier on all Train clips of the task classes")
    train = inp.rows["Train"]
    task_train = train[np.isin(cl.labels[train], cl.task)]
    parts = speaker_parts(task_train, cl.speakers[task_train], None, cfg.select)
    rfit = parts[0][0] if cfg.select.on == "holdout" else task_train
    rfitres, _, _ = _fit_selected(inp, cl.labels, rfit, parts, cl.task, "sm", cfg, device, echo, select="classifier")
    logits = predict(rfitres.stack, inp.data, rows.queries, vectorise=inp.kind == "mlp")["logits"]   # (S, q, K)
    rs = []
    for j in range(rfitres.stack.n):
        pred = np.asarray(cl.task)[logits[j].argmax(1)]
        rs.append({"uar": uar(cl.labels[rows.queries], pred),
                   "f1_weighted": weighted_f1(cl.labels[rows.queries], pred)})
    return {"uar": over_seeds(r["uar"] for r in rs), "f1_weighted": over_seeds(r["f1_weighted"] for r in rs),
            "per_seed": rs, "train_clips": int(task_train.size),
            "selection": f"epochs chosen on held-out Train speakers of the task classes (classifier UAR; {cfg.select.on})",
            "note": "trained with the task's classes (unseen one included): an upper reference, not enrol-to-verify"}


def _metrics(cfg: VerifyConfig, inp: Inputs, cl: Classes, rows: Rows, per_seed: list[dict], margins: list,
             scales: list, margin_kind: str | None, pre: list, curve: dict, curve_notes: list[str],
             ref: dict | None) -> dict:
    """The run's ``metrics.json``: the per-seed results and their mean ± std over seeds."""
    return {
        "task": cfg.task, "unseen": [EMOTIONS[c] for c in cl.unseen], "seen": cfg.seen, "loss": cfg.loss,
        "encoder": inp.kind, "enrol": cfg.enrol,
        "queries": {"split": rows.qsplit, "n": int(rows.queries.size), "per_class": rows.qcount},
        "uar": over_seeds(r["uar"] for r in per_seed), "f1_weighted": over_seeds(r["f1_weighted"] for r in per_seed),
        "margin": over_seeds(margins) | {"kind": margin_kind}, "scale": over_seeds(scales),
        "pretrain_uar": over_seeds(pre),
        "np_curve": curve, "all_reference": ref, "chance_uar": 1.0 / len(cl.task), "seeds": len(per_seed),
        "selection": "epochs chosen per seed on held-out Train speakers of the seen classes (nearest-prototype UAR); "
                     "the task's classes never chose anything",
        "std_over_seeds": "population (ddof=0); enrolled clips drawn afresh per seed",
        "per_seed": per_seed, "notes": curve_notes,
    }


def _write_run(writer: RunWriter, corpus: Corpus, cfg: VerifyConfig, inp: Inputs, cl: Classes, rows: Rows,
               emb: Embedder, fitres, fold_epochs: list[list[int]] | None, metrics: dict, cache_dir: str | Path,
               t_start: float) -> tuple[Path, dict]:
    """Write the run's files into ``writer`` and commit it; ``(final run folder, config.json dict)``."""
    tmp, fit = writer.path, rows.fit
    # the projection figure: seed 0's embeddings, with an even stride of ~400 fit rows to keep the file small
    pt_seen = prototypes(emb(0, fit), cl.labels[fit], cl.seen)
    en0 = np.array([inp.ids.index(i) for i in metrics["per_seed"][0]["enrolled"]])
    np.savez(tmp / "embeddings.npz", query_emb=emb(0, rows.queries), query_class=cl.labels[rows.queries],
             enrol_emb=emb(0, en0), enrol_class=cl.labels[en0], seen_proto=pt_seen, seen_class=np.asarray(cl.seen),
             task_class=np.asarray(cl.task), seen_train_emb=emb(0, fit[:: max(1, fit.size // 400)]),
             seen_train_class=cl.labels[fit[:: max(1, fit.size // 400)]])
    models = tmp / "models"
    models.mkdir()
    writer.torch("models/encoder.pt", fitres.stack.state_dict())
    inp.save_scaler(models / "scaler.npz")
    config = {
        "kind": "verify", "exvo_version": __version__, "name": writer.name,
        "corpus": {"name": corpus.name, "root": str(corpus.root)},
        "features": inp.info, "dim": inp.dim, "verify_config": asdict(cfg),
        "selection": {"on": cfg.select.on, "parts": len(rows.parts)},
        "clips": {"pretrain_fit": int(fit.size), "pretrain_held_out": int(sum(h.size for _, h in rows.parts)),
                  "seen_train_counts": rows.counts, "enrol_pool": int(rows.pool.size),
                  "queries": int(rows.queries.size)},
        "standardisation": "per-feature mean/std of the pretraining (seen-class, fit) Train clips",
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    writer.json("metrics.json", metrics)
    writer.json("history.json", {"heldout_seen_uar": fitres.history, "train_loss": fitres.train_loss,
                                 "best_epoch": fitres.best_epoch, "epochs_run": fitres.epochs_run,
                                 "fold_epochs": fold_epochs})
    final = writer.commit(config, provenance.inputs(corpus, caches=inp.cache_records(cache_dir)))
    return final, config


def verify(corpus: Corpus, cfg: VerifyConfig, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
           name: str | None = None, echo: Callable[[str], None] = print) -> VerifyResult:
    """Run the enrol-to-verify protocol (module docstring); write ``<runs_dir>/verify/<name>``."""
    from exvo.tasks import require_exvo

    require_exvo(corpus, "enrol-to-verify")
    t_start = time.perf_counter()
    cfg.validate()
    device = resolve_device(cfg.device)
    # every check on the data comes before the run folder exists: a bad setting leaves nothing behind
    inp, cl = _load_classes(corpus, cfg, cache_dir, echo)
    fit, parts, counts = pretrain_rows(inp, cl, cfg, echo)
    pool, queries, qsplit, qcount = task_rows(inp, cl, cfg, echo)
    rows = Rows(fit, parts, counts, pool, queries, qsplit, qcount)

    writer = RunWriter(Path(runs_dir) / "verify", name or _derive_name(cfg))
    with writer:
        fitres, make, fold_epochs = _fit_selected(inp, cl.labels, rows.fit, rows.parts, cl.seen, cfg.loss, cfg,
                                                  device, echo)
        mods = _seed_modules(fitres.stack, make)
        margins, scales = _criterion_values(mods)
        emb = embedder(fitres.stack, inp, rows)
        pre = pretrain_uar(emb, inp, cl, rows, fitres.stack.n)
        per_seed = enrol_and_score(emb, cl, rows, cfg.seeds.list, cfg.enrol, inp.ids)
        for r, m, w, p, be in zip(per_seed, margins, scales, pre, fitres.best_epoch):
            r.update(margin=m, scale=w, pretrain_uar=p, best_epoch=int(be))
        curve, curve_notes = np_curve(emb, cl, rows, cfg, inp.ids)
        # the reference trains after the N_p curve, as it always has: same order of torch's global draws
        ref = _reference(inp, cl, rows, cfg, device, echo) if cfg.reference else None
        metrics = _metrics(cfg, inp, cl, rows, per_seed, margins, scales, mods[0].criterion.margin_kind(), pre,
                           curve, curve_notes, ref)
        final, config = _write_run(writer, corpus, cfg, inp, cl, rows, emb, fitres, fold_epochs, metrics, cache_dir,
                                   t_start)
    return VerifyResult(final, metrics, config)


def _derive_name(cfg: VerifyConfig) -> str:
    import re

    base = f"{cfg.features}_{cfg.loss}_{'-'.join(cfg.task)}_n{cfg.enrol}"
    if cfg.loss in MARGIN_LOSSES and not cfg.loss_cfg.learn_margin:
        base += f"_m{cfg.loss_cfg.margin_init:g}fixed"
    return re.sub(r"[^A-Za-z0-9_.@+-]", "-", base)
