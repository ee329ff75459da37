"""Benchmark: every stage a user runs, at ExVo size — wall time, peak RSS and bytes written per stage.

Makes a corpus of ``--clips`` N clips in the exact ExVo layout with ExVo's split and
speaker proportions (59,201 clips, 1,702 speakers: Train 19,990 / Val 19,396 / Test
19,815 clips of 571 / 568 / 563 speakers), scaled to N: ``round(1702 N / 59201)``
speakers (at least 12), the clips spread evenly over them. Clips are **short**
(``--clip-seconds``, 0.5 s by default; ExVo averages 2.2 s): each speaker's clips are
slices of four bursts from the demo generator (:mod:`exvo.demo`), with the demo's labels,
per-speaker voices and recording channels, so extraction does real work on real-looking
audio at a quarter of ExVo's audio per clip.

Then each stage runs **in its own subprocess** (the command a user types, or for
``load`` the two calls every stage-2 command makes), so its peak RSS is its own:
``os.wait4`` gives the child's ``ru_maxrss`` (the largest process of the stage's tree,
worker processes included, not their sum). Bytes written = growth of the ``cache/`` and
``runs/`` folders over the stage. One JSON line per stage:
``{"stage", "clips", "seconds", "peak_rss_mib", "bytes_written", "cpu_seconds", "load1", "rc"}``
(``cpu_seconds``: user + system of the stage's tree; ``load1``: the 1-minute load average
at its start). The corpus and caches are made in a child too: a forked stage would inherit
a big parent's RSS into its ``ru_maxrss``.

Stages (settings as a user would run them; caps stated):

* ``load``: ``Corpus.from_dir`` (table read and validated) + the identity check
  (:func:`exvo.learn.features.check_identity`: one ``stat`` per clip against the cache);
* ``extract_egemaps``, ``extract_compare``: ``exvo extract --model egemaps|compare``
  (all cores); ``extract_cnn``: ``exvo extract --model raw_exvo_er --epochs 1`` (training
  capped at one epoch, then every clip embedded);
* ``learn_mlp``: ``exvo learn --features egemaps`` (MLP, 5 seeds, the default selection:
  5 speaker folds, fold ensemble); ``learn_fusion``: ``exvo learn --features
  egemaps,compare --preset fast`` (early fusion, 5 seeds, 5 speaker folds, batch 256: the
  default batch 8 over 6,461 dims took 310 s at 400 clips under load); ``learn_xgb``:
  ``exvo learn --features egemaps --learner xgb --seeds 1`` (ComParE-width XGBoost is
  ``bench_xgb.py``'s job);
* ``fuse``: ``exvo fuse --hybrid``; ``report``: ``exvo report``; ``predict``:
  ``exvo predict RUN --split Test``;
* ``fewshot``: ``exvo fewshot --features egemaps --variant finetune --seeds 1``;
  ``score_fewshot``: ``exvo score <its val.csv> --track fewshot --split Val``;
* ``verify``: ``exvo verify --features egemaps --seen Amusement,Awe,Distress,Fear --task
  Amusement,Awkwardness --seeds 1``;
* ``fid``: ``exvo fid --table --features egemaps``.

``--fast-caches``: instead of extracting, write the eGeMAPS (88) and ComParE (6,373)
caches of the right shape through the project's own writer (:class:`CacheWriter`, with
each clip's real identity), with features that carry a weak linear signal of the labels.
The stage-2 stages then run on them at sizes where extraction would take hours; the
extraction stages are skipped (``--stages`` chooses stages; the corpus is kept in
``--work`` between runs).

    .venv/bin/python benchmarks/bench_scale.py --clips 2000      # 3 min 17 s wall at load 1-2; 38 min at load 7-13
    nice -n 5 .venv/bin/python benchmarks/bench_scale.py --clips 20000 --fast-caches --work /tmp/scale
    .venv/bin/python benchmarks/bench_scale.py --fit results.jsonl --figure scale.png   # exponents + figure
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EXVO_CLIPS, EXVO_SPEAKERS = 59_201, 1_702
# ExVo 2022: clips and speakers per split (Train, Val, Test)
EXVO_SPLITS = {"Train": (19_990, 571), "Val": (19_396, 568), "Test": (19_815, 563)}
STAGES = ("load", "extract_egemaps", "extract_compare", "extract_cnn", "learn_mlp", "learn_fusion",
          "learn_xgb", "fuse", "report", "predict", "fewshot", "score_fewshot", "verify", "fid")
BURSTS = 4          # distinct demo bursts per speaker
EXTRACT_STAGES = ("extract_egemaps", "extract_compare", "extract_cnn")


# ----------------------------------------------------------------------------- corpus
def make_corpus(root: Path, n: int, clip_seconds: float = 0.5, seed: int = 0) -> dict:
    """Write ``root/data_info.csv``, ``wav/``, hidden Test labels and the few-shot support file.

    Returns ``{"labels": (n, 12) float32 [10 emotions, country, age] of every clip,
    "speakers": S}`` (the features of ``--fast-caches`` are made from them).
    """
    import soundfile as sf

    from exvo import demo
    from exvo.corpus import HIDDEN_LABELS_FILE
    from exvo.metrics import COUNTRIES, EMOTIONS

    rng = np.random.default_rng(seed)
    s_total = max(12, round(EXVO_SPEAKERS * n / EXVO_CLIPS))
    spk = demo._speakers(s_total, rng)
    # speakers per split in ExVo's proportions; clips per speaker even
    share = np.array([v[1] for v in EXVO_SPLITS.values()], float)
    n_spk = np.floor(share / share.sum() * s_total).astype(int)
    n_spk[0] += s_total - n_spk.sum()
    split_of = np.repeat(list(EXVO_SPLITS), n_spk)[rng.permutation(s_total)]
    per = np.full(s_total, n // s_total)
    per[: n - per.sum()] += 1
    kinds = list(demo._TYPES)
    n_samp = int(clip_seconds * demo.SR)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    header = ["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS]
    rows, hidden, labels, k = [], [], [], 0
    for s, sp in enumerate(spk):
        prefs = np.array([demo._TYPES[kd][1][sp.country] for kd in kinds])
        bursts = []
        for _ in range(BURSTS):     # real bursts per speaker; every clip is a slice of one of them
            kind = kinds[rng.choice(len(kinds), p=prefs / prefs.sum())]
            emo = demo._emotions(kind, rng, sp)
            y = demo._synth(kind, emo, sp, rng)
            bursts.append((np.tile(y, 1 + n_samp // len(y)), emo))
        for _ in range(per[s]):
            y, emo = bursts[int(rng.integers(BURSTS))]
            a = int(rng.integers(0, len(y) - n_samp + 1))
            clip = (y[a:a + n_samp] * rng.uniform(0.6, 1.0) + 0.002 * rng.standard_normal(n_samp)).clip(-0.99, 0.99)
            emo = np.clip(emo + rng.normal(0, 0.1, emo.size), 0, 1).round(4)
            stem = f"{k:05d}"
            sf.write(root / "wav" / f"{stem}.wav", clip.astype(np.float32), demo.SR, subtype="PCM_16")
            full = [f"[{stem}]", split_of[s], sp.id, sp.country, sp.age, COUNTRIES[sp.country], *emo.tolist()]
            labels.append([*emo, sp.country, sp.age])
            if split_of[s] == "Test":
                hidden.append(full)
                rows.append(full[:3] + [""] * (3 + len(EMOTIONS)))
            else:
                rows.append(full)
            k += 1
    support, seen = [], {}
    for r in hidden:
        seen[r[2]] = seen.get(r[2], 0) + 1
        if seen[r[2]] <= demo.SUPPORT_SHOTS:
            support.append(r)
    for name, body in (("data_info.csv", rows), (HIDDEN_LABELS_FILE, hidden), (demo.SUPPORT_FILE, support)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(body)
    np.save(root.parent / "labels.npy", np.asarray(labels, np.float32))
    return {"speakers": s_total}


def write_fast_caches(data: Path, cache: Path, dims=(("egemaps", 88), ("compare", 6373)), seed: int = 1) -> None:
    """Caches of the right shape through :class:`CacheWriter`, features = a weak linear signal of the labels.

    Each row carries its clip's real identity (stat + digest), so the identity check and
    ``predict`` treat them as any cache. Written in blocks of 4,096 clips per part.
    """
    from exvo.corpus import Corpus
    from exvo.extract.base import ExtractOptions, get_extractor
    from exvo.extract.cache import cache_path
    from exvo.extract.cache_writer import CacheWriter
    from exvo.extract.identity import identify

    corpus = Corpus.from_dir(data)
    lab = np.load(data.parent / "labels.npy")
    z = np.concatenate([lab[:, :10], np.eye(4)[lab[:, 10].astype(int)], (lab[:, 11:] - 28) / 8], axis=1)
    idents = [identify(corpus.audio_path(i)) for i in corpus.ids]
    rng = np.random.default_rng(seed)
    for name, dim in dims:
        ex = get_extractor(name, ExtractOptions())
        w_mix = rng.standard_normal((z.shape[1], dim)).astype(np.float32) * 0.5
        with CacheWriter(cache_path(cache, corpus.name, name), ex.name, ex.config(), part_size=4096,
                         feature_names=ex.feature_names(), flush_seconds=1e9) as w:
            for a in range(0, len(corpus.ids), 4096):
                b = min(a + 4096, len(corpus.ids))
                x = z[a:b] @ w_mix + rng.standard_normal((b - a, dim), dtype=np.float32)
                for k in range(a, b):
                    w.add(corpus.ids[k], x[k - a][None], idents[k])
            w.finalize(order=corpus.ids)


# ----------------------------------------------------------------------------- stages
LOAD_SNIPPET = """
import sys, warnings
from exvo.corpus import Corpus
from exvo.learn.features import check_identity, open_cache
warnings.simplefilter("ignore")
c = Corpus.from_dir(sys.argv[1])
caches = [open_cache(n, c, sys.argv[2]) for n in ("egemaps", "compare")]
check_identity(c, caches, c.ids, sys.argv[2])
"""


def stage_command(stage: str, exe: list[str], data: Path, cache: Path, runs: Path,
                  learn_args: list[str] = ()) -> list[str]:
    d = ["--data", str(data)]
    dc = d + ["--cache", str(cache)]
    dcr = dc + ["--runs", str(runs)]
    return {
        "load": [sys.executable, "-c", LOAD_SNIPPET, str(data), str(cache)],
        "extract_egemaps": exe + ["extract", "--model", "egemaps"] + dc,
        "extract_compare": exe + ["extract", "--model", "compare"] + dc,
        "extract_cnn": exe + ["extract", "--model", "raw_exvo_er", "--epochs", "1"] + dc,
        "learn_mlp": exe + ["learn", "--features", "egemaps", "--name", "mlp", *learn_args] + dcr,
        "learn_fusion": exe + ["learn", "--features", "egemaps,compare", "--preset", "fast", "--name", "fusion"] + dcr,
        "learn_xgb": exe + ["learn", "--features", "egemaps", "--learner", "xgb", "--seeds", "1", "--name", "xgb"] + dcr,
        "fuse": exe + ["fuse", "--hybrid", "--name", "hybrid"] + d + ["--runs", str(runs)],
        "report": exe + ["report"] + d + ["--runs", str(runs)],
        "predict": exe + ["predict", str(runs / "mlp"), "--split", "Test"] + dc,
        "fewshot": exe + ["fewshot", "--features", "egemaps", "--variant", "finetune", "--seeds", "1", "--name", "fs"]
        + dcr,
        "score_fewshot": exe + ["score", str(runs / "fewshot" / "fs" / "val.csv"), "--track", "fewshot", "--split", "Val"]
        + d,
        "verify": exe + ["verify", "--features", "egemaps", "--seen", "Amusement,Awe,Distress,Fear",
                         "--task", "Amusement,Awkwardness", "--seeds", "1"] + dcr,
        "fid": exe + ["fid", "--table", "--features", "egemaps"] + dcr,
    }[stage]


def tree_bytes(*dirs: Path) -> int:
    total = 0
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
    return total


def run_stage(stage: str, cmd: list[str], work: Path, n: int, log: Path) -> dict:
    """Run one stage in a child process; its wall seconds, peak RSS (MiB) and bytes written."""
    dirs = (work / "cache", work / "runs")
    before = tree_bytes(*dirs)
    load1 = os.getloadavg()[0]
    env = dict(os.environ, EXVO_PROGRESS="off", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    with open(log, "a") as lf:
        lf.write(f"\n$ {' '.join(cmd[:1] + ['-c …'] if cmd[1:2] == ['-c'] else cmd)}\n")
        lf.flush()
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss: KiB on Linux
    return {"stage": stage, "clips": n, "seconds": round(wall, 2), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
            "bytes_written": tree_bytes(*dirs) - before, "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1),
            "load1": round(load1, 2), "rc": p.returncode}


# ----------------------------------------------------------------------------- fit + figure
def fit_exponents(records: list[dict]) -> dict[str, dict]:
    """Per stage: the log-log least-squares slope of wall seconds, CPU seconds and peak RSS over the N measured."""
    out = {}
    # stages, not the corpus/cache preparation; a stage run with other options is a stage of its own
    records = [dict(r, stage=f"{r['stage']} {r['args']}" if r.get("args") else r["stage"])
               for r in records if "peak_rss_mib" in r]
    for st in sorted({r["stage"] for r in records}):
        rs = sorted((r for r in records if r["stage"] == st and r.get("rc", 0) == 0), key=lambda r: r["clips"])
        by_n = {r["clips"]: r for r in rs}          # the latest measurement of each N
        rs = [by_n[n] for n in sorted(by_n)]
        ns = np.array([r["clips"] for r in rs], float)
        if len(set(ns)) < 2:
            continue
        t = np.array([max(r["seconds"], 1e-3) for r in rs])
        cpu = np.array([max(r.get("cpu_seconds", r["seconds"]), 1e-2) for r in rs])
        m = np.array([r["peak_rss_mib"] for r in rs])

        def slope(y):
            return round(float(np.polyfit(np.log(ns), np.log(y), 1)[0]), 2)
        # CPU seconds as well as wall: on a shared machine the wall time moves with the others' load
        out[st] = {"n": [int(v) for v in ns], "time_exponent": slope(t), "cpu_exponent": slope(cpu),
                   "rss_exponent": slope(m), "seconds": [float(v) for v in t], "cpu_seconds": [float(v) for v in cpu],
                   "peak_rss_mib": [float(v) for v in m]}
        # growth between the two largest N alone (the fit can hide a late knee)
        out[st]["last_step_cpu_exponent"] = round(float(np.log(cpu[-1] / cpu[-2]) / np.log(ns[-1] / ns[-2])), 2)
    return out


def print_fits(fits: dict[str, dict]) -> None:
    """The fitted exponents as a markdown table, one row per stage."""
    print("| stage | N measured | wall s | CPU s | peak RSS MiB | exponent wall | exponent CPU | last step CPU | RSS exponent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for st in [*STAGES, *sorted(set(fits) - set(STAGES))]:
        if st in fits:
            f = fits[st]
            cells = [", ".join(f"{v:,}" for v in f["n"]), " / ".join(f"{v:.1f}" for v in f["seconds"]),
                     " / ".join(f"{v:.1f}" for v in f["cpu_seconds"]), " / ".join(f"{v:.0f}" for v in f["peak_rss_mib"]),
                     f["time_exponent"], f["cpu_exponent"], f["last_step_cpu_exponent"], f["rss_exponent"]]
            print(f"| {st} | " + " | ".join(str(c) for c in cells) + " |")


def draw(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = fit_exponents(records)
    fig, ax = plt.subplots(figsize=(8, 6))
    for k, (st, f) in enumerate(fits.items()):
        ax.plot(f["n"], f["cpu_seconds"], "os^D"[k % 4] + "-", ms=4, color=plt.cm.tab20(k % 20),
                label=f"{st} (slope {f['cpu_exponent']})")
    ns = np.array([1e3, EXVO_CLIPS])
    ax.plot(ns, 0.5 * ns / ns[0], "k:", lw=1, label="slope 1 (linear)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clips N (ExVo: 59,201)")
    # CPU seconds, not wall: on the shared machine wall time moved with the others' load (1-11x)
    ax.set_ylabel("CPU seconds of the stage (user + system, its process tree)")
    ax.set_title("exvo stages vs corpus size (2-core VM; fitted log-log slopes)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def prepare(a: argparse.Namespace, data: Path, cache: Path, emit) -> None:
    """Make the corpus (and with ``--fast-caches`` the caches) unless they exist; emit their times."""
    if not (data / "data_info.csv").is_file():
        t0 = time.perf_counter()
        info = make_corpus(data, a.clips, a.clip_seconds)
        emit({"stage": "make_corpus", "clips": a.clips, "seconds": round(time.perf_counter() - t0, 2),
              "speakers": info["speakers"], "clip_seconds": a.clip_seconds, "load1": round(os.getloadavg()[0], 2)})
    if a.fast_caches and not list(cache.glob("*/compare.h5")):
        t0 = time.perf_counter()
        write_fast_caches(data, cache)
        emit({"stage": "fast_caches", "clips": a.clips, "seconds": round(time.perf_counter() - t0, 2)})


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=2000, help="N clips (ExVo: 59,201)")
    ap.add_argument("--clip-seconds", type=float, default=0.5)
    ap.add_argument("--work", type=Path, default=None, help="folder kept between runs (default: a temporary one)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    ap.add_argument("--fast-caches", action="store_true",
                    help="write synthetic eGeMAPS/ComParE caches through CacheWriter instead of extracting")
    ap.add_argument("--learn-args", default="", help="extra options of learn_mlp, e.g. '--preset fast' (recorded)")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines to this file too")
    ap.add_argument("--fit", type=Path, default=None, help="only fit exponents of a JSON-lines file (and --figure)")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.fit:
        recs = [json.loads(line) for line in a.fit.read_text().splitlines() if line.strip().startswith("{")]
        print_fits(fit_exponents(recs))
        if a.figure:
            draw(recs, a.figure)
        return 0
    stages = [s for s in a.stages.split(",") if s]
    if bad := [s for s in stages if s not in STAGES]:
        ap.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    tmp = a.work is None
    work = Path(a.work or f"/tmp/exvo_scale_{os.getpid()}") / f"N{a.clips}"
    data, cache, runs = work / "data", work / "cache", work / "runs"
    exe = [str(Path(sys.executable).with_name("exvo"))]
    recs = []

    def emit(r):
        recs.append(r)
        line = json.dumps(r)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")
    if a.prepare:       # the child that makes the corpus (and caches), so the parent stays small
        prepare(a, data, cache, emit)
        return 0
    try:
        cache.mkdir(parents=True, exist_ok=True)
        runs.mkdir(exist_ok=True)
        # a fork inherits the parent's RSS into the child's ru_maxrss: the big arrays are made in a child
        subprocess.run([sys.executable, __file__, "--prepare", "--clips", str(a.clips), "--clip-seconds",
                        str(a.clip_seconds), "--work", str(work.parent)] + (["--fast-caches"] if a.fast_caches else [])
                       + (["--out", str(a.out)] if a.out else []), check=True)
        if a.fast_caches:
            stages = [s for s in stages if s not in EXTRACT_STAGES]
        elif "load" in stages:       # load checks the caches the extract stages make
            stages = [s for s in stages if s != "load"] + ["load"]
        extra = a.learn_args.split()
        for st in stages:
            r = run_stage(st, stage_command(st, exe, data, cache, runs, extra), work, a.clips, work / "stages.log")
            if st == "learn_mlp" and extra:
                r["args"] = a.learn_args
            emit(r)
        if not tmp:
            print(f"# log of every stage's output: {work / 'stages.log'}", file=sys.stderr)
    finally:
        if tmp:
            shutil.rmtree(work.parent, ignore_errors=True)
    return 0 if all(r.get("rc", 0) == 0 for r in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
