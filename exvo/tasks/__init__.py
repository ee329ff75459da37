"""Tasks as data: :class:`TaskSpec` (target groups, metrics, combination, submission format), the
built-in tasks (``exvo-mtl``, the default; ``avb-high``, ``avb-two``, ``avb-culture``, ``avb-type``)
and user tasks from TOML files (:func:`get_task`). See docs/api.md 'Tasks'."""
from exvo.tasks.builtin import (AVB_CULTURES, AVB_FILES, AVB_TWO, AVB_TYPES, BUILTIN, DEFAULT_TASK, avb_culture_columns,
                                get_task, names, read_task_file, require_exvo)
from exvo.tasks.spec import SLOTS, TargetGroup, TaskError, TaskSpec

__all__ = ["AVB_CULTURES", "AVB_FILES", "AVB_TWO", "AVB_TYPES", "BUILTIN", "DEFAULT_TASK", "SLOTS", "TargetGroup",
           "TaskError", "TaskSpec", "avb_culture_columns", "get_task", "names", "read_task_file", "require_exvo"]
