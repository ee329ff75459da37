"""End-to-end Burst2Vec: a transformers speech model fine-tuned together with the Burst2Vec head.

The paper's own setting (Anuchitanukul & Specia 2022, §3-4, App. C): raw 16 kHz audio → the speech model
(``hubert`` | ``wav2vec2`` | ``wavlm``, loaded with ``from_pretrained`` as in
:mod:`exvo.extract.ssl`) → its last hidden state average-pooled over each clip's own frames →
:class:`~exvo.learn.burst2vec.Burst2Vec`. Batches are per task (32 clips of one task),
zero-padded to the longest clip with an attention mask (when the checkpoint's feature
extractor uses masks); Adam, lr 1e-5 on every weight, up to 100 epochs, early stopping on a
speaker-disjoint, country-stratified part of Train (``select``, as ``exvo learn``; ``on="val"``
chooses on Val instead, the paper's protocol, and marks Val scores optimistic †), best epoch
restored. The CNN front end
is frozen by default (``freeze_feature_encoder``, as is usual for these models). On CUDA the
encoder runs under autocast (``precision`` auto = fp16 with a gradient scaler); the head and
its losses stay in float32. Checkpoints whose feature extractor returns no attention mask
(wav2vec2-base) see the zero padding, as in the paper; pooling always skips padded frames.
Clips are whole (no chunking: ExVo bursts are short); an unreadable clip stops the run with
its name, and the same command resumes once it is fixed.

Resume: after every epoch the whole training state (weights, optimiser, scaler, best weights,
patience, history) is written atomically to ``<runs>/.<name>.finetune/seed<k>.pt``; the same
command started again continues after the last finished epoch. Each epoch's batch order and
dropout draws come from generators seeded by (seed, epoch), so a resumed run equals an
uninterrupted one.

The run folder is a normal learn run (``val.csv``, ``test.csv``, ``per_seed/``, ``metrics.json``,
``config.json`` with ``"finetune"``), plus ``models/encoder_seed<k>/``: the fine-tuned encoder
saved with ``save_pretrained`` next to its feature extractor, i.e. a checkpoint folder that
``exvo extract --model <model> --checkpoint runs/<name>/models/encoder_seed0`` reads.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from exvo.version import __version__
from exvo.corpus import SAMPLE_RATE, Corpus, CorpusError, load_audio
from exvo.device import resolve_device
from exvo.learn import runs
from exvo.runs import provenance
from exvo.runs.store import RunWriter, check_name, load_torch
from exvo.learn.burst2vec import AgeScale, Burst2Vec, label_tensors, make_sampler
from exvo.learn.framework import init_seed, order_seed
from exvo.learn.targets import make_targets, selection_score
from exvo.learn.selection import selection_rows
from exvo.predictions import Predictions, SeedPredictions, save_seed_predictions, save_split
from exvo.preprocess import rms_normalise
from exvo.learn.finetune_config import FinetuneConfig

class EncoderBurst2Vec(nn.Module):
    """Speech encoder + mean pooling over unpadded frames + Burst2Vec head."""

    def __init__(self, encoder: nn.Module, head: Burst2Vec):
        super().__init__()
        self.encoder, self.head = encoder, head

    def pooled(self, wav: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``wav`` ``(B, T)``, ``lengths`` ``(B,)`` samples → ``(B, H)`` mean of the last hidden state."""
        from exvo.extract.ssl import conv_frames

        hs = self.encoder(input_values=wav, attention_mask=mask).last_hidden_state          # (B, F, H)
        frames = conv_frames(self.encoder.config, lengths).clamp(1, hs.shape[1]).to(hs.device)
        w = (torch.arange(hs.shape[1], device=hs.device)[None, :] < frames[:, None]).to(hs.dtype)
        return (hs * w[..., None]).sum(1) / frames[:, None].to(hs.dtype)


class AudioBatches:
    """Clips → the encoder's input: the checkpoint's feature extractor, then zero padding."""

    def __init__(self, corpus: Corpus, ids: list[str], fe, rms_db: float | None, min_samples: int):
        self.corpus, self.ids, self.fe, self.rms_db, self.min_samples = corpus, ids, fe, rms_db, min_samples
        self.use_mask = bool(getattr(fe, "return_attention_mask", False))

    def clip(self, row: int) -> np.ndarray:
        wav = load_audio(self.corpus.audio_path(self.ids[row]))
        if self.rms_db is not None:
            wav = rms_normalise(wav, self.rms_db)
        x = self.fe(wav, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0].astype(np.float32)
        return np.pad(x, (0, max(0, self.min_samples - x.size)))

    def batch(self, rows, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        xs = [self.clip(int(r)) for r in rows]
        lengths = torch.tensor([x.size for x in xs])
        wav = torch.zeros(len(xs), int(lengths.max()))
        for i, x in enumerate(xs):
            wav[i, :x.size] = torch.from_numpy(x)
        mask = (torch.arange(wav.shape[1])[None, :] < lengths[:, None]).long().to(device) if self.use_mask else None
        return wav.to(device), lengths, mask


def freeze_feature_encoder(encoder: nn.Module) -> None:
    """Stop training the CNN front end (``feature_extractor``: the model's convolutions over raw samples)."""
    fn = getattr(encoder, "freeze_feature_encoder", None)
    if callable(fn):
        fn()
        return
    front = getattr(encoder, "feature_extractor", None)
    if not isinstance(front, nn.Module):
        raise ValueError(f"{type(encoder).__name__} has no feature_extractor to freeze; pass --no-freeze-feature-encoder")
    for p in front.parameters():
        p.requires_grad_(False)


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(_builtin(obj), tmp)
    os.replace(tmp, path)


def _builtin(o):
    """numpy scalars as Python numbers, so the resume state loads with ``weights_only=True``."""
    if isinstance(o, dict):
        return {k: _builtin(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return type(o)(_builtin(v) for v in o)
    if isinstance(o, np.generic):
        return o.item()
    return o


@torch.no_grad()
def predict_rows(model: EncoderBurst2Vec, audio: AudioBatches, rows: np.ndarray, scale: AgeScale, batch_size: int,
                 device: torch.device, amp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Emotions ``(n, 10)``, country probabilities ``(n, 4)``, age ``(n,)`` years for ``rows``."""
    model.eval()
    outs = []
    for k in range(0, len(rows), batch_size):
        wav, lengths, mask = audio.batch(rows[k:k + batch_size], device)
        with amp:
            pooled = model.pooled(wav, lengths, mask)
        o = model.head.outputs({"x": pooled.float()})
        outs.append((o["emotions"].float().cpu(), torch.softmax(o["country"].float(), -1).cpu(), o["age01"].float().cpu()))
    e, p, a = (torch.cat([o[i] for o in outs]).numpy() for i in range(3))
    return e, p, scale.years(a)


def _epoch(model, opt, scaler, amp, batches, audio: AudioBatches, device, desc: str, progress: bool) -> tuple[float, int]:
    """One pass over the sampler's batches; returns (summed loss, number of batches)."""
    from tqdm import tqdm

    tot, nb = 0.0, 0
    for b in tqdm(list(batches), disable=not progress, desc=desc, leave=False):
        wav, lengths, mask = audio.batch(b["row"].numpy(), device)
        batch = {k: v.to(device) for k, v in b.items() if k != "row"}
        opt.zero_grad(set_to_none=True)
        with amp:
            pooled = model.pooled(wav, lengths, mask)
        # the head and its batch-statistics losses (CCC) in float32, outside autocast
        batch["x"] = pooled.float()
        loss = model.head(batch, train_loss=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        tot += float(loss.detach())
        nb += 1
    return tot, nb


def _state_key(cfg: FinetuneConfig) -> dict:
    """The settings a resume state must share with the command resuming it (all but the budget)."""
    d = asdict(cfg)
    for k in ("epochs", "patience"):
        d["train"].pop(k)
    d["seeds"].pop("n")
    d.pop("device")
    return d


def _train_seed(seed: int, cfg: FinetuneConfig, encoder0: nn.Module, audio: AudioBatches, sampler,
                fit_rows, sel_rows, t, scale: AgeScale, device: torch.device, state_path: Path,
                echo: Callable[[str], None], progress: bool) -> tuple[EncoderBurst2Vec, dict]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed))
        head = Burst2Vec(int(encoder0.config.hidden_size), cfg.head)
    model = EncoderBurst2Vec(copy.deepcopy(encoder0), head).to(device)
    if cfg.freeze_feature_encoder:
        freeze_feature_encoder(model.encoder)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                           weight_decay=cfg.train.weight_decay)
    amp, scaler = _autocast(device, "fp16" if cfg.precision == "auto" else cfg.precision)
    st = {"epoch": 0, "best": -np.inf, "best_epoch": 0, "waited": 0, "history": [], "train_loss": [],
          "best_state": None, "seconds": []}
    if state_path.is_file():
        saved = load_torch(state_path, map_location=device)   # tensors and plain containers only: no code runs
        if saved.get("config") != _state_key(cfg):
            raise ValueError(f"{state_path} holds an interrupted fine-tuning with other settings "
                             f"({saved.get('config')}); run with the same settings to resume it, or delete "
                             f"{state_path.parent} (or pass another --name) to start afresh")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        st = saved["st"]
        echo(f"  seed {seed}: resuming after epoch {st['epoch']}")
    sel_e, sel_c, sel_a = t.emotions[sel_rows], t.country[sel_rows], t.age[sel_rows]
    while st["epoch"] < cfg.train.epochs and st["waited"] < cfg.train.patience:
        epoch = st["epoch"] + 1
        t0 = time.perf_counter()
        # dropout (torch) and SpecAugment time masks (numpy's global generator, in transformers)
        # of this epoch are drawn from (seed, epoch) alone, so a resumed run repeats them
        torch.manual_seed(order_seed(seed) * 100_003 + epoch)
        np_state = np.random.get_state()
        np.random.seed((order_seed(seed) * 100_003 + epoch) % 2**32)
        gen = torch.Generator().manual_seed(order_seed(seed) * 100_003 + epoch)
        model.train()
        try:
            tot, nb = _epoch(model, opt, scaler, amp, sampler(gen, epoch), audio, device,
                             f"seed {seed} epoch {epoch}", progress)
        finally:
            np.random.set_state(np_state)
        e, p, a = predict_rows(model, audio, sel_rows, scale, cfg.train.batch_size, device, amp)
        score = selection_score(sel_e, e, sel_c, p.argmax(1), sel_a, a)
        st["history"].append(score)
        st["train_loss"].append(tot / max(nb, 1))
        st["seconds"].append(time.perf_counter() - t0)
        st["epoch"] = epoch
        if score > st["best"]:
            st.update(best=score, best_epoch=epoch, waited=0,
                      best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            st["waited"] += 1
        _save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "config": _state_key(cfg),
                      "scaler": scaler.state_dict() if scaler is not None else None, "st": st}, state_path)
        echo(f"  seed {seed} epoch {epoch:3d}: train loss {st['train_loss'][-1]:.4f}, selection score {score:.3f} "
             f"({st['seconds'][-1]:.1f} s)")
    if st["best_state"] is not None:
        model.load_state_dict(st["best_state"])
    return model, st


def finetune(corpus: Corpus, cfg: FinetuneConfig, runs_dir: str | Path = "runs", name: str | None = None,
             echo: Callable[[str], None] = print, progress: bool = False) -> tuple[Path, dict | None]:
    """Fine-tune ``cfg.seeds`` models; write the run folder ``<runs>/<name>``; return (run dir, Val metrics).

    Interrupted (Ctrl-C, a crash, a killed job), the same call resumes after the last finished
    epoch; a resume state written with other settings is refused.
    """
    from exvo.extract.ssl import DEFAULT_CHECKPOINTS, receptive_field, load_checkpoint

    from exvo.tasks import require_exvo

    require_exvo(corpus, "exvo finetune (Burst2Vec end to end)")
    cfg.validate()
    t_start = time.perf_counter()
    if not corpus.has_labels("Train"):
        raise CorpusError(f"{corpus.root} has no labelled Train clips; fine-tuning needs them")
    ckpt = cfg.checkpoint or DEFAULT_CHECKPOINTS[cfg.model]
    name = check_name(name or f"{cfg.model}-finetuned_burst2vec")
    runs_dir = Path(runs_dir)
    device = torch.device(resolve_device(cfg.device))
    encoder, fe, info = load_checkpoint(cfg.model, ckpt)
    if encoder.config.model_type != cfg.model:
        raise ValueError(f"--model {cfg.model} but the checkpoint {ckpt} holds a {encoder.config.model_type} model")
    ids = list(corpus.ids)
    rows = {sp: corpus.indices(sp) for sp in ("Train", "Val", "Test")}
    t = make_targets(corpus, ids, rows)
    sel = cfg.select
    fit_rows, sel_rows = selection_rows(corpus, ids, rows, sel)
    audio = AudioBatches(corpus, ids, fe, cfg.rms_db, receptive_field(encoder.config))
    scale = AgeScale.fit(t.age[fit_rows])
    labels = label_tensors(t.emotions, t.country, t.age, scale)
    head_cfg = replace(cfg.head, train=replace(cfg.head.train, batch_size=cfg.train.batch_size))
    # the encoder makes the features: the sampler only hands out rows, labels and the task
    sampler = make_sampler(torch.zeros(len(ids), 0), labels, fit_rows, t.emotions, t.country, t.age, head_cfg)
    where = "held-out Train speakers" if sel.on == "holdout" else "Val (its scores are then optimistic, †)"
    echo(f"fine-tuning {cfg.model} ({ckpt}) + Burst2Vec on {device}: fit on {fit_rows.size} Train clips, early "
         f"stopping on {sel_rows.size} clips of {where}; Val {rows['Val'].size}, Test {rows['Test'].size}")
    state_dir = runs_dir / f".{name}.finetune"
    state_dir.mkdir(parents=True, exist_ok=True)
    seeds = cfg.seeds.list
    amp, _ = _autocast(device, "fp16" if cfg.precision == "auto" else cfg.precision)
    with RunWriter(runs_dir, name) as writer:
        tmp = writer.path
        outs: dict[str, list] = {"Val": [], "Test": []}
        histories = []
        for seed in seeds:
            model, st = _train_seed(seed, cfg, encoder, audio, sampler, fit_rows, sel_rows, t, scale, device,
                                    state_dir / f"seed{seed}.pt", echo, progress)
            histories.append({k: st[k] for k in ("history", "train_loss", "best_epoch", "epoch", "seconds")})
            for sp in outs:
                if rows[sp].size:
                    outs[sp].append(predict_rows(model, audio, rows[sp], scale, cfg.train.batch_size, device, amp))
            enc_dir = tmp / "models" / f"encoder_seed{seed}"
            model.encoder.save_pretrained(enc_dir)
            fe.save_pretrained(enc_dir)
            writer.torch(f"models/head_seed{seed}.pt", {k: v.cpu() for k, v in model.head.state_dict().items()})
            del model
        metrics = _write_predictions(tmp, corpus, ids, rows, seeds, outs, [h["best_epoch"] for h in histories])
        from exvo.learn.api import constant_baseline

        config = {
            "kind": "learn", "exvo_version": __version__, "name": name,
            "corpus": {"name": corpus.name, "root": str(corpus.root)},
            "features": [f"{cfg.model}-finetuned"], "learner": "burst2vec", "seeds": seeds,
            "finetune": asdict(cfg) | {"checkpoint": ckpt, "checkpoint_info": info},
            "rms_db": cfg.rms_db,
            "early_stopping": sel.describe() + "; best epoch restored",
            "selection": asdict(sel) | {"description": sel.describe(), "fit_clips": int(fit_rows.size),
                                        "selection_clips": int(sel_rows.size)},
            "val_optimistic": sel.optimistic,
            "age_scale_years": {"min": scale.lo, "max": scale.hi},
            "clips": {"train": int(fit_rows.size), "early_stopping": int(sel_rows.size),
                      "val": int(rows["Val"].size), "test": int(rows["Test"].size)},
            "std_over_seeds": "population (ddof=0)",
            "constant_predictor_val": constant_baseline(corpus, t, rows) if corpus.has_labels("Val") else None,
            "seconds": {"total": round(time.perf_counter() - t_start, 2)},
        }
        writer.json("history.json", {"per_seed": histories})
        if metrics is not None:
            metrics["selection"] = {"select_on": sel.on, "optimistic": sel.optimistic, "note": sel.describe()}
            metrics["val_optimistic"] = sel.optimistic
            writer.json("metrics.json", metrics)
        final = writer.commit(config, provenance.inputs(corpus))   # audio in: the labels are its inputs
    shutil.rmtree(state_dir, ignore_errors=True)
    return final, metrics


def _write_predictions(tmp: Path, corpus: Corpus, ids, rows, seeds, outs, best_epochs) -> dict | None:
    metrics = None
    for sp, got in outs.items():
        if not got:
            continue
        e, p, a = (np.stack([o[i] for o in got]) for i in range(3))
        sp_ids = [ids[k] for k in rows[sp]]
        save_split(Predictions.from_proba(sp_ids, *runs.ensemble(e, p, a)), tmp, sp)
        save_seed_predictions(SeedPredictions(sp_ids, seeds, e, p, a), tmp, sp)
        if sp == "Val" and corpus.has_labels("Val"):
            per_seed = [runs.score_quiet(Predictions.from_proba(sp_ids, e[j], p[j], a[j]), corpus, sp)[0]
                        for j in range(len(seeds))]
            ens, _ = runs.score_quiet(Predictions.from_proba(sp_ids, *runs.ensemble(e, p, a)), corpus, sp)
            metrics = runs.metrics_json(per_seed, seeds, best_epochs, ens, sp, len(sp_ids))
    return metrics


def export_encoder(run_dir: str | Path, out: str | Path, seed: int | None = None) -> Path:
    """Copy a fine-tune run's encoder (``seed``, default the first) to ``out``: a checkpoint folder
    for ``exvo extract --checkpoint``. Refuses to overwrite an existing ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    encs = sorted((run_dir / "models").glob("encoder_seed*"))
    if not encs:
        raise FileNotFoundError(f"{run_dir} holds no fine-tuned encoder (models/encoder_seed<k>/); "
                                "pass a run folder written by `exvo finetune`")
    src = encs[0] if seed is None else run_dir / "models" / f"encoder_seed{seed}"
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist; the run has {[p.name for p in encs]}")
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder for the exported encoder")
    shutil.copytree(src, out)
    return out
