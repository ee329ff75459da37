"""``exvo`` command line: parses options, calls library functions, prints results.

The commands live in :mod:`exvo.commands` (one module per area); this module assembles the
app in the order ``exvo --help`` lists them.

Exit codes: 0 success; 1 the command ran but some clips failed; 2 bad input or
settings (the message says what to fix); 3 aborted by ``--max-failures``; 130
interrupted (Ctrl-C) during ``extract`` (finished clips are kept; rerun to resume).
"""
from __future__ import annotations

from exvo.commands import corpus, extract, learn, layers, pipeline, tracks  # noqa: F401  (register the commands)
from exvo.commands.common import app, use_plain_help

use_plain_help(app)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
