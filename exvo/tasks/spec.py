"""A task as data: which label columns are learned, how each is scored, how the scores combine.

A :class:`TaskSpec` holds up to three target groups, one of each kind the learners have a head for:

``intensities``  a regression group of ``k`` bounded columns (``range``), scored by the mean CCC over
                 its columns (ExVo's 10 emotions; A-VB High, Two, Culture);
``class``        one categorical column with named ``classes``, scored by UAR (ExVo's country;
                 A-VB Type; a user's gender);
``value``        one unbounded regression column, learned standardised (Train mean/std), scored by
                 MAE (ExVo's age).

The group's *slot* follows from its kind and metric (regression + ccc → intensities, classification
→ class, regression + mae → value); a task has at most one group per slot. ``combine`` says how the
group metrics make the one score that selection and fusion use: ``harmonic`` (``G / (Σ 1/m + Σ
MAE)``, S_MTL's form for ExVo) or ``mean`` (the mean of the higher-is-better metrics; with one group,
the group's own metric). The spec round-trips with :meth:`TaskSpec.to_dict` /
:meth:`TaskSpec.from_dict` (saved in every run's ``config.json``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = ("regression", "classification")
METRICS = {"regression": ("ccc", "mae"), "classification": ("uar",)}
COMBINES = ("harmonic", "mean")
CONVENTIONS = ("challenge", "population")
SLOTS = ("intensities", "class", "value")


class TaskError(ValueError):
    """A task specification (built-in name or TOML file) is unusable; the message says how to fix it."""


@dataclass(frozen=True)
class TargetGroup:
    """One group of targets. ``columns``: the label columns (regression: ``k`` of them; classification:
    exactly one). ``range``: ``(low, high)`` of an intensities group (its head is scaled to it).
    ``classes``: class names of a classification group (codes are indices into it)."""

    name: str
    kind: str
    columns: tuple[str, ...]
    metric: str
    range: tuple[float, float] | None = None
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.range is not None:
            object.__setattr__(self, "range", tuple(float(v) for v in self.range))
        where = f"target group {self.name!r}"
        if self.kind not in KINDS:
            raise TaskError(f"{where}: kind {self.kind!r}; expected one of {KINDS}")
        if self.metric not in METRICS[self.kind]:
            raise TaskError(f"{where}: metric {self.metric!r} for a {self.kind} group; expected one of "
                            f"{METRICS[self.kind]}")
        if not self.columns or len(set(self.columns)) != len(self.columns):
            raise TaskError(f"{where}: columns {list(self.columns)}; expected one or more distinct column names")
        if self.kind == "classification":
            if len(self.columns) != 1:
                raise TaskError(f"{where}: a classification group reads one column, got {list(self.columns)}")
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise TaskError(f"{where}: classes {list(self.classes)}; expected two or more distinct names")
        elif self.classes:
            raise TaskError(f"{where}: a regression group has no classes (got {list(self.classes)})")
        if self.metric == "ccc":
            if self.range is None or len(self.range) != 2 or not self.range[0] < self.range[1]:
                raise TaskError(f"{where}: a CCC regression group needs range = [low, high] with low < high "
                                f"(its outputs are scaled to it), got {self.range}")
        elif self.range is not None:
            raise TaskError(f"{where}: range applies to CCC regression groups only (an MAE group is learned "
                            "standardised)")
        if self.metric == "mae" and len(self.columns) != 1:
            raise TaskError(f"{where}: an MAE regression group reads one column, got {list(self.columns)}")

    @property
    def slot(self) -> str:
        if self.kind == "classification":
            return "class"
        return "intensities" if self.metric == "ccc" else "value"


@dataclass(frozen=True)
class TaskSpec:
    """A task: target groups, how their metrics combine (``score_name`` names the result), the CCC
    convention, and the submission file's column order (``submission``: label columns after
    ``File_ID``; classification cells are class names, or integer codes with ``class_codes``)."""

    name: str
    groups: tuple[TargetGroup, ...]
    combine: str = "mean"
    score_name: str = "score"
    convention: str = "challenge"
    submission: tuple[str, ...] = ()
    class_codes: bool = False
    description: str = ""
    _slots: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        groups = tuple(g if isinstance(g, TargetGroup) else TargetGroup(**_group_kw(g)) for g in self.groups)
        object.__setattr__(self, "groups", groups)
        where = f"task {self.name!r}"
        if not groups:
            raise TaskError(f"{where} has no target groups; add at least one [[targets]] table")
        slots: dict[str, TargetGroup] = {}
        for g in groups:
            if g.slot in slots:
                raise TaskError(f"{where}: groups {slots[g.slot].name!r} and {g.name!r} are both {g.slot} groups; a "
                                "task has at most one CCC regression group (any number of columns), one "
                                "classification group and one MAE regression group")
            slots[g.slot] = g
        object.__setattr__(self, "_slots", slots)
        cols = [c for g in groups for c in g.columns]
        if len(set(cols)) != len(cols):
            raise TaskError(f"{where}: a column is in two groups ({cols})")
        if len({g.name for g in groups}) != len(groups):
            raise TaskError(f"{where}: two groups share a name ({[g.name for g in groups]})")
        if self.combine not in COMBINES:
            raise TaskError(f"{where}: combine {self.combine!r}; expected one of {COMBINES}")
        if self.combine == "mean" and "value" in slots:
            raise TaskError(f"{where}: combine = 'mean' cannot mix an MAE group (lower is better) with the others; "
                            "use combine = 'harmonic' (S_MTL's form)")
        if self.convention not in CONVENTIONS:
            raise TaskError(f"{where}: convention {self.convention!r}; expected one of {CONVENTIONS}")
        if self.score_name in {g.metric for g in groups} and len(groups) > 1:
            raise TaskError(f"{where}: score_name {self.score_name!r} is also a group metric")
        sub = tuple(self.submission) or tuple(self.default_submission())
        if sorted(sub) != sorted(cols):
            raise TaskError(f"{where}: submission columns {list(sub)} must be exactly the label columns {cols}")
        object.__setattr__(self, "submission", sub)

    # ------------------------------------------------------------------ slots
    def group(self, slot: str) -> TargetGroup | None:
        """The group in ``slot`` (one of :data:`SLOTS`), or None."""
        return self._slots.get(slot)

    def has(self, slot: str) -> bool:
        return slot in self._slots

    @property
    def reg_columns(self) -> tuple[str, ...]:
        g = self.group("intensities")
        return g.columns if g else ()

    @property
    def n_reg(self) -> int:
        return len(self.reg_columns)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names of the classification group; a task without one has a single placeholder class
        (so that every learner keeps its shapes; it is never scored or written)."""
        g = self.group("class")
        return g.classes if g else ("-",)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Score keys of the groups, in ExVo's order (ccc, uar, mae), then the combined score."""
        return tuple(k for k, s in (("ccc", "intensities"), ("uar", "class"), ("mae", "value"))
                     if s in self._slots) + (self.score_name,)

    @property
    def is_exvo(self) -> bool:
        """Whether this is ExVo-MTL's shape (10 emotions, 4 countries, age): the ExVo-only learners need it."""
        from exvo.metrics import COUNTRIES, EMOTIONS

        return (self.reg_columns == EMOTIONS and self.has("value") and self.classes == COUNTRIES)

    def default_submission(self) -> list[str]:
        """ExVo's order: the class column, the value column, then the intensities."""
        out = []
        for slot in ("class", "value", "intensities"):
            if g := self.group(slot):
                out += list(g.columns)
        return out

    def describe(self) -> str:
        parts = []
        for g in self.groups:
            what = (f"{len(g.columns)} column(s) in [{g.range[0]:g}, {g.range[1]:g}], mean CCC" if g.slot == "intensities"
                    else f"{g.columns[0]}: {len(g.classes)} classes, UAR" if g.slot == "class"
                    else f"{g.columns[0]}, MAE")
            parts.append(f"{g.name} ({what})")
        return f"{self.name}: " + "; ".join(parts) + f"; score {self.score_name} = {self.combine}"

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_slots", None)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        if not isinstance(d, dict):
            raise TaskError(f"a task specification must be a table/dict, got {type(d).__name__}")
        known = {"name", "groups", "combine", "score_name", "convention", "submission", "class_codes", "description"}
        if unknown := sorted(set(d) - known):
            raise TaskError(f"unknown task field(s) {unknown}; the fields are {sorted(known)}")
        kw = dict(d)
        kw["groups"] = tuple(_group_kw(g) if isinstance(g, dict) else g for g in d.get("groups", ()))
        kw["submission"] = tuple(d.get("submission", ()))
        if "name" not in kw:
            raise TaskError("a task specification needs a name")
        return cls(**kw)


def _group_kw(g) -> dict:
    if isinstance(g, TargetGroup):
        return asdict(g)
    if not isinstance(g, dict):
        raise TaskError(f"a target group must be a table, got {g!r}")
    known = {"name", "kind", "columns", "metric", "range", "classes"}
    if unknown := sorted(set(g) - known):
        raise TaskError(f"target group {g.get('name', '?')!r}: unknown field(s) {unknown}; the fields are {sorted(known)}")
    kw = dict(g)
    if "name" not in kw or "kind" not in kw or "columns" not in kw:
        raise TaskError(f"target group {g}: name, kind and columns are required")
    if isinstance(kw["columns"], str):
        kw["columns"] = (kw["columns"],)
    kw.setdefault("metric", "uar" if kw["kind"] == "classification" else "ccc")
    return kw
