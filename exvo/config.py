"""Config dataclasses round-trip: ``asdict`` when a run is saved, :func:`from_dict` when read.

:func:`config_of` gives back the dataclass a run was made with, from its ``config.json``.
"""
from __future__ import annotations

import dataclasses
import typing


def from_dict(cls, data: dict):
    """``cls(**data)`` for the fields ``cls`` has (keys it does not know are ignored, so a
    config saved by a newer exvo still reads); lists saved for tuple fields become tuples."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            if isinstance(v, list) and "tuple" in str(hints.get(f.name, "")):
                v = tuple(v)
            kw[f.name] = v
    return cls(**kw)


def _kinds() -> dict[str, tuple[type, str]]:
    from exvo.fewshot.api import FewShotConfig
    from exvo.learn.api import LearnConfig
    from exvo.learn.finetune import FinetuneConfig
    from exvo.verify.api import VerifyConfig

    return {"learn": (LearnConfig, "learn_config"), "fewshot": (FewShotConfig, "fewshot_config"),
            "verify": (VerifyConfig, "verify_config"), "finetune": (FinetuneConfig, "finetune")}


def config_of(record: dict):
    """The config dataclass saved in a run's ``config.json`` record, or the record itself for
    kinds without one (fusions: their settings are the record's ``mode``, ``top``, …)."""
    kind = record.get("kind")
    if kind == "learn" and "finetune" in record:
        kind = "finetune"            # an `exvo finetune` run: audio in, a learn run's files out
    known = _kinds()
    if kind in known and isinstance(record.get(known[kind][1]), dict):
        cls, key = known[kind]
        return from_dict(cls, record[key])
    return record
