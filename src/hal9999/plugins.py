"""hal's plugins, loaded one way with one error policy.

Providers, agent presets and process managers are entry points (``hal9999.providers``,
``hal9999.agents``, ``hal9999.process_managers``); the built-in ones are declared in
``pyproject.toml`` and load exactly as a third-party package's do. :mod:`hal9999.entrypoints`
finds them; this module loads them:

- a plugin asked for by name (``--provider``, ``default_agent``, ``process_manager``) that no
  package registers, or that cannot be loaded, is one error line naming it, what went wrong
  and the fix (:func:`load`);
- where every plugin of a kind is loaded (``hal doctor``), a broken one is one warning line
  naming it and the fix, and the rest load (:func:`load_all`).

The registries (:mod:`hal9999.providers.registry`, :mod:`hal9999.agents.registry`,
:mod:`hal9999.process.registry`) build and check what a plugin gives, through these.
"""

from __future__ import annotations

import sys

from hal9999.entrypoints import find_entry_point, group_entry_points, scanned_names
from hal9999.errors import (
    AgentError,
    ConfigError,
    HalError,
    ProcessError,
    ProviderUnavailable,
    UnknownAgent,
    UnknownProvider,
)

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NamedTuple

    from hal9999.entrypoints import EntryPointLike
else:
    from hal9999.lighttyping import NamedTuple


class Kind(NamedTuple):
    """One kind of plugin: its entry point group, how messages name it, and its errors."""

    group: str
    """The entry point group."""
    what: str
    """How a message names one (``provider``)."""
    unknown: type[HalError]
    """Raised for a name no installed package registers."""
    broken: type[HalError]
    """Raised for a registered plugin that cannot be loaded."""


PROVIDERS = Kind("hal9999.providers", "provider", UnknownProvider, ProviderUnavailable)
AGENTS = Kind("hal9999.agents", "agent preset", UnknownAgent, AgentError)
PROCESS_MANAGERS = Kind("hal9999.process_managers", "process manager", ConfigError, ProcessError)
FIX = "reinstall the package that provides it, or uninstall it"
"""What to do about a plugin that cannot be loaded."""


def names(kind: Kind) -> list[str]:
    """The names of the installed plugins of ``kind``, sorted (none is loaded)."""
    return sorted({ep.name for ep in group_entry_points(kind.group)})


def installed(kind: Kind, name: str) -> bool:
    """Whether an installed package registers ``name`` (it is not loaded)."""
    return find_entry_point(kind.group, name) is not None


def find(kind: Kind, name: str) -> EntryPointLike:
    """The entry point of the plugin ``name``; ``kind.unknown`` when no package has one."""
    entry = find_entry_point(kind.group, name)  # a scan found it, or finds it now
    if entry is None:
        raise kind.unknown(
            f"no {kind.what} named {name!r}",
            hint=f"available: {', '.join(scanned_names(kind.group)) or 'none installed'}",
        )
    return entry


def load(kind: Kind, name: str) -> Any:
    """The object the plugin ``name`` of ``kind`` registers (a class or a factory).

    ``kind.unknown`` when no installed package registers it, ``kind.broken`` when it cannot
    be loaded (whatever its import raised): each one line that names it and the fix."""
    entry = find(kind, name)
    try:
        return entry.load()
    except Exception as exc:  # a plugin's import may raise anything: it is not hal's bug
        raise broken(kind, name, entry.value, exc) from exc


def build(kind: Kind, name: str, *args: Any, **kwargs: Any) -> Any:
    """The plugin ``name`` loaded and called with ``args`` (a class built, a factory run):
    what its own code raises, but a :class:`HalError` (already one line with its fix), is
    ``kind.broken``."""
    factory = load(kind, name)
    try:
        return factory(*args, **kwargs)
    except HalError:
        raise
    except Exception as exc:  # a plugin's own code: one line, not a traceback
        raise broken(kind, name, find(kind, name).value, exc) from exc


def broken(kind: Kind, name: str, value: str, exc: BaseException) -> HalError:
    """The error of a plugin that cannot be loaded or built."""
    said = str(exc).strip().splitlines()
    reason = said[0] if said else type(exc).__name__
    return kind.broken(f"{kind.what} {name!r} ({value}) cannot be loaded: {reason}", hint=FIX)


def load_all(kind: Kind, *, build: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """Every installed plugin of ``kind`` by name, each built by ``build(name, loaded)`` when
    given; a broken one is left out with a warning line on stderr (its name and the fix)."""
    found: dict[str, Any] = {}
    for name in names(kind):
        try:
            loaded = load(kind, name)
            found[name] = build(name, loaded) if build is not None else loaded
        except HalError as exc:
            warn(exc)
    return found


def warn(exc: HalError) -> None:
    """Say ``exc`` as one warning line on stderr: ``hal: warning: <what> (<fix>)``."""
    sys.stderr.write(f"hal: warning: {exc.one_line()}\n")
