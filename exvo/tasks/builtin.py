"""The built-in tasks: ExVo-MTL (the default) and the four A-VB 2022 tasks, and :func:`get_task`.

Column names and orders are the organisers' (HumeAI/competitions: ExVo-MultiTask's
``data_info.csv``; A-VB2022's ``labels/<task>_info.csv`` and submission formats).
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from exvo.metrics import COUNTRIES, EMOTIONS
from exvo.tasks.spec import TargetGroup, TaskError, TaskSpec

DEFAULT_TASK = "exvo-mtl"

AVB_TYPES: tuple[str, ...] = ("Gasp", "Laugh", "Cry", "Scream", "Grunt", "Groan", "Pant", "Other")
"""The 8 A-VB vocal-burst types (``Voc_Type`` cells are these names)."""

AVB_TWO: tuple[str, ...] = ("Valence", "Arousal")
"""A-VB Two's columns, in the organisers' order (values scaled to [0, 1])."""

AVB_CULTURES: tuple[str, ...] = ("China", "United States", "South Africa", "Venezuela")


def avb_culture_columns() -> tuple[str, ...]:
    """The 40 A-VB Culture columns in the organisers' order: each culture's 9 emotions other than
    Surprise (China, United States, South Africa, Venezuela), then the four ``<culture>_Surprise``."""
    nine = [e for e in EMOTIONS if e != "Surprise"]
    return tuple(f"{c}_{e}" for c in AVB_CULTURES for e in nine) + tuple(f"{c}_Surprise" for c in AVB_CULTURES)


def _intensities(name: str, columns) -> TargetGroup:
    return TargetGroup(name, "regression", tuple(columns), "ccc", (0.0, 1.0))


BUILTIN: dict[str, TaskSpec] = {
    "exvo-mtl": TaskSpec(
        "exvo-mtl",
        (_intensities("emotions", EMOTIONS),
         TargetGroup("country", "classification", ("Country",), "uar", classes=COUNTRIES),
         TargetGroup("age", "regression", ("Age",), "mae")),
        combine="harmonic", score_name="s_mtl", class_codes=True,
        description="ExVo 2022 Multi-Task: 10 emotion intensities (CCC), country (UAR over 4), age (MAE); S_MTL"),
    "avb-high": TaskSpec("avb-high", (_intensities("high", EMOTIONS),),
                         description="A-VB High: the 10 emotion intensities, mean CCC"),
    "avb-two": TaskSpec("avb-two", (_intensities("two", AVB_TWO),),
                        description="A-VB Two: valence and arousal in [0, 1], mean CCC"),
    "avb-culture": TaskSpec("avb-culture", (_intensities("culture", avb_culture_columns()),),
                            description="A-VB Culture: 10 emotions x 4 cultures' ratings (40 columns), mean CCC"),
    "avb-type": TaskSpec("avb-type", (TargetGroup("type", "classification", ("Voc_Type",), "uar", classes=AVB_TYPES),),
                         description="A-VB Type: the vocal-burst type, 8 classes, UAR"),
}

AVB_FILES: dict[str, str] = {"avb-high": "high_info.csv", "avb-two": "two_info.csv",
                             "avb-culture": "culture_info.csv", "avb-type": "type_info.csv"}
"""The A-VB release's label file (under ``labels/``) of each A-VB task."""


def require_exvo(corpus, what: str) -> None:
    """Refuse an ExVo-only track (``what``) for a corpus read for another task."""
    if corpus.task.name != DEFAULT_TASK:
        raise TaskError(f"{what} works on the ExVo-MTL labels (10 emotions, country, age) by design; the corpus was "
                        f"read for task {corpus.task.name!r}. Read it with the default task (no --task)")


def names() -> list[str]:
    return list(BUILTIN)


def get_task(task: "str | Path | TaskSpec | dict | None" = None) -> TaskSpec:
    """A task from a built-in name, a TOML file path, a dict (``config.json``) or a spec; None → ExVo-MTL."""
    if task is None:
        return BUILTIN[DEFAULT_TASK]
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, dict):
        return TaskSpec.from_dict(task)
    text = str(task)
    if text in BUILTIN:
        return BUILTIN[text]
    path = Path(text)
    if path.suffix.lower() == ".toml" or path.is_file():
        return read_task_file(path)
    raise TaskError(f"unknown task {text!r}; choose one of {', '.join(BUILTIN)} or give a .toml task file")


def read_task_file(path: str | Path) -> TaskSpec:
    """A user's task from TOML (``[[targets]]`` tables; see docs/api.md 'Tasks')::

        name = "my-affect"
        combine = "mean"                  # or "harmonic"
        [[targets]]
        name = "affect"; kind = "regression"; columns = ["Arousal", "Valence"]; range = [0, 1]
        [[targets]]
        name = "gender"; kind = "classification"; columns = ["Gender"]; classes = ["female", "male"]
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} not found; give a built-in task ({', '.join(BUILTIN)}) or a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TaskError(f"task file {path} is not valid TOML ({e})") from None
    data = dict(data)
    data.setdefault("name", path.stem)
    if "groups" in data:
        raise TaskError(f"{path}: write target groups as [[targets]] tables, not 'groups'")
    data["groups"] = data.pop("targets", [])
    if not isinstance(data["groups"], list):
        raise TaskError(f"{path}: 'targets' must be an array of tables ([[targets]])")
    try:
        return TaskSpec.from_dict(data)
    except TaskError as e:
        raise TaskError(f"{path}: {e}") from None
