"""The command line that runs one of hal's modules in a new interpreter."""

from __future__ import annotations

import sys


def module_argv(module: str, *args: str) -> list[str]:
    """``python -P -m MODULE ARGS...``.

    ``-m`` alone puts the working directory first on the new interpreter's path, and hal
    starts these from wherever it runs, usually the user's repository: a cloned project's
    ``enum.py`` ran as the gateway (which holds the keys), the runner or a relay, in place of
    the standard module. ``-P`` (Python 3.11) leaves it off; unlike ``-I`` it keeps
    ``PYTHONPATH``, through which hal may have found itself."""
    return [sys.executable, "-P", "-m", module, *args]
