"""hal's modules: the command line that runs one in a new interpreter, and a package's
names imported from their module only when first asked for."""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing is dear for the thin `hal task list` (see hal9999.store)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def module_argv(module: str, *args: str) -> list[str]:
    """``python -P -m MODULE ARGS...``.

    ``-m`` alone puts the working directory first on the new interpreter's path, and hal
    starts these from wherever it runs, usually the user's repository: a cloned project's
    ``enum.py`` ran as the gateway (which holds the keys), the runner or a relay, in place of
    the standard module. ``-P`` (Python 3.11) leaves it off; unlike ``-I`` it keeps
    ``PYTHONPATH``, through which hal may have found itself."""
    return [sys.executable, "-P", "-m", module, *args]


def lazy_names(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A package's module ``__getattr__``: each name in ``homes`` imported from its module
    when first asked for, then kept in the package's ``namespace``."""

    def get(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    return get
