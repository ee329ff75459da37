"""Let ``exvo.extract(...)`` call the API function while ``exvo.extract.cache`` stays a module.

``exvo.extract``, ``exvo.learn``, ``exvo.fewshot`` and ``exvo.verify`` are both subpackages and
API functions (docs/api.md). Importing a subpackage binds its module as the attribute of
``exvo``, which would hide a function of the same name, so each of these subpackages makes
its own module object callable (a documented use of assigning a module's ``__class__``),
forwarding the call to :mod:`exvo.api`.
"""
from __future__ import annotations

import sys
import types


class CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from exvo import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    sys.modules[module_name].__class__ = CallableModule
