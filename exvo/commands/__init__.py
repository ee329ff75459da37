"""The ``exvo`` commands, one module per area; importing a module registers its commands on ``common.app``.

``common`` (app, shared options, error wrapper) · ``corpus`` · ``extract`` · ``learn`` ·
``tracks`` · ``pipeline``. The entry point is :mod:`exvo.cli`.
"""
