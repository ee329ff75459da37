"""The other tracks: ``fewshot`` (ExVo-FewShot), ``verify`` (enrol-to-verify), ``fid``/``heep`` (ExVo-Generate)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from exvo.commands.common import app, friendly, fail_cli, DataOpt, CacheOpt, RunsOpt, load_corpus


from exvo.fewshot.registry import FT_LOSSES, FT_PARAMS, HEADS, VARIANTS, ZNORM_MODES  # noqa: E402  (no torch)


@app.command()
@friendly
def fewshot(
    features: str = typer.Option(..., "--features", "-f", help="Comma-separated feature sets, early-fused (as `exvo learn`)."),
    variant: str = typer.Option("none", help="; ".join(f"{k}: {v}" for k, v in VARIANTS.items())),
    heads: str = typer.Option("", help="Auxiliary heads (EIHW Table 1), comma-separated: "
                              + "; ".join(f"{k}: {v}" for k, v in HEADS.items())),
    seeds: int = typer.Option(5, help="Number of seeds; results are mean ± std over seeds and the seed ensemble."),
    epochs: int = typer.Option(30, help="Maximum epochs."),
    patience: int = typer.Option(8, help="Early-stopping patience on held-out Train speakers (best epoch restored)."),
    batch_size: int = typer.Option(16, help="Batch size."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    stop_on: str = typer.Option("folds", help="Where epochs are chosen (Val never chooses): folds (K speaker folds of Train, each speaker's queries scored by the fold model that held it out: the out-of-fold estimate; then one model per seed refitted on all of Train for the folds' median epoch) | holdout (one held-out fraction of the Train speakers, --holdout)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="With --stop-on folds: number of speaker folds (default 5, or the number of Train speakers when fewer)."),
    holdout: float = typer.Option(0.2, help="With --stop-on holdout: fraction of Train speakers held out for model selection."),
    ft_steps: int = typer.Option(1, help="finetune: AdamW steps per speaker on its support clips (baseline: 1)."),
    ft_lr: float = typer.Option(1e-4, help="finetune: learning rate of those steps (baseline: 1e-4)."),
    ft_loss: str = typer.Option("mse", help="finetune: " + " | ".join(FT_LOSSES) + " (mse: the baseline's)."),
    ft_select: bool = typer.Option(False, "--ft-select", help="finetune: choose weights/steps/lr from a small grid on the held-out Train speakers (overrides the three options)."),
    ft_params: str = typer.Option("all", help="finetune: which weights move: " + "; ".join(f"{k}: {v}" for k, v in FT_PARAMS.items())),
    znorm: str = typer.Option("features", help="znorm: " + " | ".join(ZNORM_MODES) + " (features: centre each speaker on its support clips; residual: shift predictions by the mean support residual)."),
    support_seed: Optional[int] = typer.Option(None, help="Val support: random clips with this seed (default: each speaker's first 2)."),
    support_file: Optional[Path] = typer.Option(None, help="Test support: labelled file in data_info.csv format (default <data>/fewshot_support.csv)."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default derived); written to <runs>/fewshot/NAME."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """ExVo-FewShot: train on Train, personalise with 2 support clips per Val/Test speaker, score the query clips."""
    from exvo.config import build
    from exvo.fewshot.api import fewshot as run_fewshot
    from exvo.fewshot.config import FewShotConfig

    corpus = load_corpus(data)
    cfg = build(FewShotConfig, features=[f.strip() for f in features.split(",") if f.strip()], variant=variant,
                        heads=[h for h in heads.split(",") if h.strip()], seeds=seeds, epochs=epochs, patience=patience,
                        batch_size=batch_size, lr=lr, stop_on=stop_on, folds=folds, holdout=holdout, ft_steps=ft_steps, ft_lr=ft_lr, ft_loss=ft_loss, ft_params=ft_params,
                        ft_select=ft_select,
                        znorm=znorm, support_seed=support_seed,
                        support_file=str(support_file) if support_file else None, device=device)
    result = run_fewshot(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name, echo=typer.echo)
    typer.echo(result.summary_line())



def _verify_loss_help() -> str:
    from exvo.verify.losses import LOSSES

    return f"Encoder loss: {' | '.join(LOSSES)} (paper 004 Exp I; namp = negative angular margin prototypical + CE, S_jj = w(cos - m), m < 0, the text's less-discriminative intent; namp-eq4 = its Eq. 4 as printed, w(cos + m): CosFace-like)."


@app.command()
@friendly
def verify(
    features: str = typer.Option(..., "--features", "-f", help="Feature set: an utterance cache spec (egemaps, wavlm@12) or a frame cache name (exvo extract --frames)."),
    seen: str = typer.Option(..., "--seen", help="Comma-separated pretraining classes (dominant emotions), e.g. Amusement,Awe,Distress,Fear."),
    task: str = typer.Option(..., "--task", help="The new task's classes, e.g. Amusement,Awkwardness (at least one not in --seen)."),
    enrol: int = typer.Option(10, "--enrol", help="Clips enrolled per task class (drawn from Val, afresh per seed)."),
    loss: str = typer.Option("namp", "--loss", help=_verify_loss_help()),
    encoder: str = typer.Option("auto", help="auto (GRU-transformer when a frame cache exists, else MLP) | mlp | gru."),
    seeds: int = typer.Option(5, help="Number of seeds; results are mean ± std over seeds."),
    epochs: int = typer.Option(40, help="Maximum training epochs."),
    n_per_class: int = typer.Option(10, help="N clips per seen class in a training episode."),
    margin: float = typer.Option(0.3, help="namp/namp-eq4/amproto: |m| at the start, in (0, 0.5); the sign comes from the loss."),
    fixed_margin: bool = typer.Option(False, "--fixed-margin", help="namp/namp-eq4/amproto: keep m at --margin (the paper's Fig. 2 sweep) instead of learning it."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also train the paper's \"All\" classifier on all Train clips of the task classes."),
    stop_on: str = typer.Option("folds", help="Where epochs are chosen (Val holds the enrolment pools, never chooses): folds (K speaker folds of the Train clips, then one encoder per seed refitted on all of them for the folds' median epoch) | holdout (one held-out fraction of the Train speakers)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="With --stop-on folds: number of speaker folds (default 5, or the number of Train speakers when fewer)."),
    name: Optional[str] = typer.Option(None, help="Run folder name under <runs>/verify/ (default derived)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (for scripts) instead of one line."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """Enrol-to-verify: pretrain on seen classes, enrol N clips per class of a new task, verify queries."""
    from exvo.config import build
    from exvo.verify.api import verify as run_verify
    from exvo.verify.config import VerifyConfig
    from exvo.verify.losses import LossConfig

    corpus = load_corpus(data)
    cfg = build(VerifyConfig, features=features, seen=seen.split(","), task=task.split(","), enrol=enrol, loss=loss,
                       encoder=encoder, seeds=seeds, epochs=epochs, n_per_class=n_per_class, reference=reference,
                       stop_on=stop_on, folds=folds, device=device, loss_cfg=LossConfig(margin_init=margin, learn_margin=not fixed_margin))
    result = run_verify(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name,
                        echo=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(result.summary(), indent=1) if as_json else result.line())



# --------------------------------------------------------------------------- generation (ExVo-Generate)
def _bin_help() -> str:
    from exvo.generate.bins import BIN_RULES

    return (f"Real clips per emotion: {' | '.join(BIN_RULES)} (one: intensity 1, the paper's bins; "
            "argmax: the clip's strongest emotion, for corpora not scaled to a max of 1 per clip).")


@app.command("fid")
@friendly
def fid_cmd(
    gen_dir: Optional[Path] = typer.Argument(None, help="Folder of generated clips (*.wav, *.flac) that target --emotion."),
    emotion: Optional[str] = typer.Option(None, "--emotion", "-e", help="Target emotion of the generated clips (e.g. Amusement)."),
    features: Optional[str] = typer.Option(None, "--features", "-f", help="Feature space: an extractor cached for this corpus, NAME or NAME@LAYER (e.g. egemaps, wavlm@12, raw_exvo_er = a task CNN's bottleneck)."),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="Feature space: the last shared layer of an `exvo learn` MLP run folder (FID per seed, mean ± std)."),
    against: str = typer.Option("Train", help="Real clips from: Train (paper §3.2) | Val (Eq. 3, §6.2)."),
    bin_rule: str = typer.Option("one", "--bin", help=_bin_help()),
    table: bool = typer.Option(False, "--table", help="Instead: the Train-vs-Val table of the emotion bins (paper Table 3): CSV, JSON, heat map."),
    out: Optional[Path] = typer.Option(None, help="--table: output folder (default <runs>/fid, where `exvo report` finds it)."),
    save: Optional[Path] = typer.Option(None, help="Add this emotion's FID to a CSV (replacing its old row), for `exvo heep --fid-csv`."),
    raw: bool = typer.Option(False, "--raw", help="--features: keep cached units (default: standardise every dimension with Train mean/std)."),
    checkpoint: Optional[str] = typer.Option(None, help="SSL features: the checkpoint the cache was built with."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (embedding the generated clips)."),
    workers: int = typer.Option(0, help="Extractor workers; 0 = all cores."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """ExVo-Generate: FID of generated clips vs the real clips of one emotion, or the Train-vs-Val table."""
    from exvo.extract.base import ExtractOptions
    from exvo.generate import api

    if table and (gen_dir is not None or emotion is not None):
        fail_cli("--table compares the corpus's own Train and Val bins; leave out GEN_DIR and --emotion")
    if not table and (gen_dir is None or emotion is None):
        fail_cli("give GEN_DIR and --emotion E (or --table for the Train-vs-Val table)")
    corpus = load_corpus(data)
    space = api.feature_space(corpus, cache, features=features, classifier=classifier, standardise=not raw,
                              opts=ExtractOptions(checkpoint=checkpoint, device=device, workers=workers))
    warn = lambda m: typer.secho(m, fg=typer.colors.YELLOW, err=True)  # noqa: E731
    if table:
        from exvo.generate.table import DEFAULT_SUBDIR, write_table

        t = api.train_val_table(corpus, space, rule=bin_rule, echo=warn, progress=sys.stderr.isatty())
        paths = write_table(t, out or runs / DEFAULT_SUBDIR, api.table_tag(features, classifier, bin_rule, raw))
        typer.echo(paths["csv"].read_text().rstrip())
        typer.echo(t.diagonal_line())
        typer.echo(f"space: {t.space}; wrote {paths['csv']}, {paths['json']}, {paths['png']}")
        return
    r = api.fid_generated(corpus, gen_dir, emotion, space, against=against, rule=bin_rule,
                          progress=sys.stderr.isatty(), echo=warn)
    typer.echo(r.line())
    if save is not None:
        typer.echo(f"saved to {api.save_fid_row(save, r, gen_dir)}")


@app.command("heep")
@friendly
def heep_cmd(
    ratings: Path = typer.Argument(..., help="Ratings CSV: File_ID,<10 emotions> (average human intensities of generated clips)."),
    manifest: Optional[Path] = typer.Option(None, help="CSV File_ID,Target (emotion; several separated by ';'). Default: the emotion named in each File_ID."),
    fid: Optional[List[str]] = typer.Option(None, "--fid", help="EMOTION=FID for S_GEN (repeatable), e.g. --fid Amusement=4.92."),
    fid_csv: Optional[Path] = typer.Option(None, help="CSV with emotion,fid columns (as `exvo fid --save` writes) for S_GEN."),
):
    """ExVo-Generate: HEEP (paper Eq. 4) per targeted emotion and overall; with FIDs, S_GEN (Eq. 5)."""
    from exvo.generate import api

    fids = api.read_fids(fid, fid_csv) if (fid or fid_csv) else None
    rep = api.heep_report(ratings, manifest, fids)
    for line in rep.lines():
        typer.echo(line)
