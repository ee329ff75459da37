"""The few-shot table of ``exvo report``: every ``<runs>/fewshot/<name>/`` run, best seed-ensemble first.

Columns: system, features, variant (+ heads), seeds, Val query CCC mean ± std over seeds,
the seed ensemble's CCC with its 95 % bootstrap interval, and the Test ensemble CCC where
the corpus's Test labels are known (demo corpus). All CCCs are population CCCs of the
query clips (support clips are never scored); no number was chosen on Val.
"""
from __future__ import annotations

from pathlib import Path

from exvo.fewshot.protocol import RUN_SUBDIR
from exvo.runs.reader import read_json

COLUMNS = ("#", "system", "features", "variant", "seeds", "Val CCC (mean ± std)", "Val ens. CCC [95 % CI]", "Test ens. CCC")


def fewshot_rows(runs_dir: str | Path) -> list[list[str]]:
    """Table cells of the few-shot runs under ``runs_dir/fewshot`` ([] when there are none)."""
    root = Path(runs_dir) / RUN_SUBDIR
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        cfg, met = read_json(p / "config.json"), read_json(p / "metrics.json")
        if p.name.startswith(".") or not cfg or cfg.get("kind") != "fewshot" or not met:
            continue
        try:
            s, e = met["summary"]["ccc"], met["ensemble"]
            lo, hi = e["ci95"]
            t = met.get("test", {}).get("ensemble")
            found.append((float(e["ccc"]), [
                p.name, "+".join(str(b.get("spec", "?")) for b in cfg.get("features", [])),
                str(cfg.get("variant")) + (f" [{','.join(cfg.get('heads') or [])}]" if cfg.get("heads") else ""),
                str(len(met.get("per_seed", []))), f"{s['mean']:.3f} ± {s['std']:.3f}",
                f"{e['ccc']:.3f} [{lo:.3f}–{hi:.3f}]",
                f"{t['ccc']:.3f} [{t['ci95'][0]:.3f}–{t['ci95'][1]:.3f}]" if t else "-"]))
        except (KeyError, TypeError, ValueError):
            found.append((float("-inf"), [p.name, "?", str(cfg.get("variant")), "?", "unreadable metrics.json", "", ""]))
    found.sort(key=lambda r: -r[0])
    return [[str(k + 1), *cells] for k, (_, cells) in enumerate(found)]


NOTE = ("ExVo-FewShot: population CCC of the query clips (support clips never scored), mean over 10 emotions; "
        "mean ± std over seeds and the seed ensemble with a 95 % bootstrap interval (1,000 resamples of query "
        "clips); best epoch per seed chosen on held-out Train speakers, not on Val")


def fewshot_section(runs_dir: str | Path) -> tuple[list[str], list[str]]:
    """``(markdown lines, text lines)`` of the few-shot table; both empty without few-shot runs."""
    rows = fewshot_rows(runs_dir)
    if not rows:
        return [], []
    md = ["## ExVo-FewShot", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(r) + " |" for r in rows] + ["", f"- {NOTE}", ""]
    width = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(COLUMNS)]
    text = ["", "ExVo-FewShot"] + ["  ".join(x.ljust(w) for x, w in zip(r, width)) for r in [list(COLUMNS), *rows]]
    return md, text + [f"  {NOTE}"]


def report_section(rows, out_dir: Path, corpus, runs_dir: Path):
    """``exvo report``'s ExVo-FewShot section (None without few-shot runs)."""
    from exvo.fusion.report import Section

    md, text = fewshot_section(runs_dir)
    if not md:
        return None
    return Section("ExVo-FewShot", "\n".join(md[2:]), text=text)
