"""Imports every extractor family so that its ``@register`` calls run.

Add a new family here (one line) after writing its module.
"""
import importlib

for _mod in ("exvo.extract.smile", "exvo.extract.ssl", "exvo.extract.cnn.extractor"):
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError as e:  # a family still being written must not break the others
        if e.name != _mod:
            raise
