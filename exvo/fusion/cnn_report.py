"""The task CNNs in the report: the paper's Table 1 and Fig. 2.

* Table 1: clip-level Val UAR and WAR of each trained task CNN's own softmax classifier
  (argmax of the summed frame posteriors), read from ``val_metrics`` in the model JSON
  that training wrote (:mod:`exvo.extract.cnn.train`). Several CNN seeds: mean ± std.
* Fig. 2 (``cnn_filters.png``): the cumulative frequency response of each CNN's first
  convolution layer (:func:`exvo.extract.cnn.model.cumulative_response`), one panel for
  raw and one for ZFF input, one curve per task (ER, CR, custom), frequency in Hz.

Models are found next to the caches the report's learn runs used
(``<cache>/<corpus>/models/*.json`` of feature blocks whose cache is a waveform CNN), or in
folders given explicitly. Crossfit fold models are left out (they are training aids,
not the extractor's CNN).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

FOLD = re.compile(r"\.cf\d+of\d+$")
SEED = re.compile(r"\.s(\d+)$")
CHANCE = {"emotion": 0.10, "Country": 0.25}


def model_dirs_of_runs(runs: Iterable) -> list[Path]:
    """``models`` folders beside the waveform-CNN caches used by learn runs (``Run`` objects)."""
    out: list[Path] = []
    for r in runs:
        for b in (r.record.get("features") or []):
            if not isinstance(b, dict) or (b.get("cache_config") or {}).get("family") != "waveform_cnn":
                continue
            d = Path(str(b.get("cache", ""))).parent / "models"
            if d.is_dir() and d not in out:
                out.append(d)
    return out


def collect(model_dirs: Sequence[Path]) -> dict[str, list[tuple[Path, dict]]]:
    """``{extractor name: [(model .pt path, its JSON)]}`` of the full (not crossfit) models, seeds together."""
    out: dict[str, list[tuple[Path, dict]]] = {}
    for d in model_dirs:
        for j in sorted(Path(d).glob("*.json")):
            stem = j.stem
            if FOLD.search(stem) or not j.with_suffix(".pt").is_file():
                continue
            try:
                info = json.loads(j.read_text())
            except (OSError, ValueError):
                continue
            if not str(info.get("format", "")).startswith("exvo-waveform-cnn/"):
                continue
            name = info.get("extractor") or SEED.sub("", stem)
            out.setdefault(name, []).append((j.with_suffix(".pt"), info))
    return dict(sorted(out.items()))


def _pm(vals: list[float]) -> str:
    if not vals:
        return "?"
    if len(vals) == 1:
        return f"{100 * vals[0]:.2f}"
    return f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals):.2f}"


def table1(models: dict[str, list[tuple[Path, dict]]]) -> list[list[str]]:
    """Rows ``[system, input, task, classes, CNN seeds, epochs, UAR %, WAR %, chance UAR %]``."""
    rows = []
    for name, items in models.items():
        info = items[0][1]
        vm = [i.get("val_metrics") or {} for _, i in items]
        uars = [m["clip_uar"] for m in vm if "clip_uar" in m]
        wars = [m["clip_war"] for m in vm if "clip_war" in m]
        n_cls = len(info.get("classes") or []) or 0
        rows.append([name, str(info.get("signal", "?")), str(info.get("label_column", "?")), str(n_cls),
                     str(len(items)), "/".join(str(i.get("epochs_run", "?")) for _, i in items),
                     _pm(uars), _pm(wars), f"{100 / n_cls:.2f}" if n_cls else "?"])
    return rows


HEADER = ["system", "input", "labels", "classes", "CNN seeds", "epochs", "Val UAR %", "Val WAR %", "chance UAR %"]


def filters_figure(models: dict[str, list[tuple[Path, dict]]], path: Path) -> Path | None:
    """Fig. 2: cumulative frequency response of the first conv layer, raw and ZFF panels (seed 0 of each)."""
    from exvo.extract.cnn.model import cumulative_response, first_layer_filters
    from exvo.extract.cnn.train import load_model
    from exvo.fusion.plots import new_figure

    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {"raw": [], "zff": []}
    for name, items in models.items():
        p, info = items[0]
        try:
            lm = load_model(p)
        except (OSError, ValueError):
            continue
        f, r = cumulative_response(first_layer_filters(lm.model), lm.model.cfg.sample_rate)
        task = {"emotion": "ER", "Country": "CR"}.get(info.get("label_column"), str(info.get("label_column")))
        curves.setdefault(str(info.get("signal")), []).append((f"{name} ({task}, {lm.model.cfg.arch})", f, r))
    panels = [(k, v) for k, v in curves.items() if v]
    if not panels:
        return None
    fig = new_figure(5.5 * len(panels), 3.8)
    for k, (signal, cs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for label, f, r in cs:
            ax.plot(f, r, label=label, lw=1.2)
        ax.set_xlabel("frequency (Hz)")
        ax.set_ylabel("cumulative response (max = 1)")
        ax.set_title(f"({'ab'[k] if k < 2 else k}) {signal.upper() if signal == 'zff' else signal.capitalize()} input")
        ax.set_xlim(0, cs[0][1][-1])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Cumulative frequency response of the first conv layer")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def cnn_section(runs: Iterable, out_dir: Path, model_dirs: Sequence[Path] = ()) -> tuple[list[str], list[str]]:
    """Markdown lines and text lines of Table 1 and Fig. 2 for the CNNs behind ``runs`` (and ``model_dirs``).

    Returns two empty lists when no task CNN is involved.
    """
    dirs = list(model_dirs) + [d for d in model_dirs_of_runs(runs) if d not in model_dirs]
    models = collect(dirs)
    if not models:
        return [], []
    rows = table1(models)
    note = ("clip-level decisions (argmax of the summed frame posteriors) of each CNN's own softmax on Val; "
            "mean ± std over CNN seeds where several")
    md = ["", "## Task CNNs (the paper's Table 1)", "", "| " + " | ".join(HEADER) + " |",
          "|" + "|".join("---" for _ in HEADER) + "|"] + ["| " + " | ".join(r) + " |" for r in rows] + ["", f"- {note}"]
    widths = [max(len(x[j]) for x in [HEADER, *rows]) for j in range(len(HEADER))]
    text = ["", "Task CNNs (Table 1): " + note, "  ".join(h.ljust(w) for h, w in zip(HEADER, widths))]
    text += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    fig = filters_figure(models, Path(out_dir) / "cnn_filters.png")
    if fig is not None:
        md += ["", "### Cumulative frequency response of the first conv layer (the paper's Fig. 2)", "",
               f"![first-layer responses]({fig.name})", ""]
        text.append(f"  figure: {fig}")
    return md, text


def report_section(rows, out_dir: Path, corpus, runs_dir: Path):
    """``exvo report``'s task-CNN section (None when no run uses a task CNN)."""
    from exvo.fusion.report import Section

    md, text = cnn_section([r.run for r in rows], out_dir)
    if not md:
        return None
    return Section("Task CNNs (the paper's Table 1)", "\n".join(md[3:]), text=text)
