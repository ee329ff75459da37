"""A task CNN's files: the model (``<name>.pt`` + its training record ``<name>.json``) and, while it
trains, the per-epoch checkpoint ``<name>.pt.resume`` that a killed training resumes from.

Every file is written to a temporary name and renamed, and read back with
:func:`exvo.runs.store.load_torch` (weights only: nothing in a file runs). The checkpoint
holds everything the next epoch depends on (model, optimiser, best weights, learning-rate
schedule, the sampler's place in its pass, torch's random state, the history) and the
training's settings (:func:`checkpoint_key`): a checkpoint of other settings is not resumed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from exvo.extract.cnn.model import CNNConfig, build_model, weights_sha256
from exvo.runs.store import load_torch, save_torch

FORMAT = "exvo-waveform-cnn/2"
CHECKPOINT_FORMAT = "exvo-waveform-cnn-checkpoint/1"


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_model(model, meta: dict, info: dict, out_path: str | Path) -> None:
    """Write ``out_path`` (weights + meta) and its ``.json`` (meta + training record), each atomically."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(out.with_suffix(".json"), lambda p: p.write_text(json.dumps(info, indent=1)))
    _replace_atomically(out, lambda p: save_torch({**meta, "state_dict": model.state_dict()}, p))


@dataclass
class LoadedModel:
    model: object
    meta: dict
    sha256: str
    path: Path

    @property
    def info(self) -> dict:
        """The training record (``<model>.json``), or {} when absent."""
        p = self.path.with_suffix(".json")
        return json.loads(p.read_text()) if p.is_file() else {}


def load_model(path: str | Path) -> LoadedModel:
    """Load a saved CNN (CPU, eval mode); a wrong or damaged file raises ``ValueError`` saying so."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trained CNN at {path}; train it with `exvo train-cnn` or `exvo extract`")
    try:
        d = load_torch(path)          # weights only: nothing in the file runs
    except Exception as e:
        raise ValueError(f"{path} is not a readable exvo CNN ({type(e).__name__}: {e}); delete it and retrain") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path} is not an exvo waveform CNN (format {d.get('format') if isinstance(d, dict) else '?'}, "
                         f"expected {FORMAT}); delete it and retrain")
    mcfg = CNNConfig.from_dict(d["model_config"])
    model = build_model(mcfg)
    model.load_state_dict(d["state_dict"])
    model.eval()
    meta = {k: v for k, v in d.items() if k != "state_dict"}
    return LoadedModel(model, meta, weights_sha256(model), path)


# ----------------------------------------------------------------------------- per-epoch checkpoint
def checkpoint_path(out_path: str | Path) -> Path:
    """Where the training of model ``out_path`` keeps its per-epoch checkpoint."""
    return Path(str(out_path) + ".resume")


def checkpoint_key(meta: dict, train_ids: list[str], held_ids: list[str]) -> str:
    """The settings a checkpoint must share with the training that resumes it: the model's meta
    (architecture, recipe, labels, signal), the clips it trains and cross-validates on; not
    ``max_epochs``, the budget (a training cut at 3 of 6 epochs may resume with 10)."""
    def budget_free(d):
        return {k: v for k, v in d.items() if k != "max_epochs"} if isinstance(d, dict) else d

    m = dict(meta, train_config=budget_free(meta.get("train_config")), request=budget_free(meta.get("request")))
    return json.dumps({"format": CHECKPOINT_FORMAT, "meta": m, "train": train_ids, "heldout": held_ids},
                      sort_keys=True, default=str)


def save_checkpoint(path: Path, key: str, state: dict) -> None:
    """Write the checkpoint ``state`` (tensors, numbers, lists, dicts) with its ``key``, atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(Path(path), lambda p: save_torch({"key": key, **state}, p))


def load_checkpoint(path: Path, key: str, echo: Callable[[str], None]) -> dict | None:
    """The checkpoint at ``path`` when it was written with ``key``; None (training starts afresh,
    and ``echo`` says why) when there is none, or it is of other settings, or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = load_torch(path)
    except Exception as e:        # damaged, or not ours: it is only a cache of work
        echo(f"  {path} cannot be resumed from ({type(e).__name__}: {e}); training from the first epoch")
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        echo(f"  {path} is the checkpoint of a training with other settings or clips; training from the first "
             "epoch (it is replaced)")
        return None
    return state
