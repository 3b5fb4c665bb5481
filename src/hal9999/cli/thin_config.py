"""When hal's configuration is only its defaults and a few variables, without reading it.

The layered config (:mod:`hal9999.config`) is pydantic models: about 240 modules, most of
a light command's start-up. The thin paths (``hal task list``, ``hal run`` through the
daemon) use it only when something could make it differ from what they know: a user config
file, a ``./hal.toml``, or a ``HAL_*`` variable they do not understand. Anything else is
the full path's to read, resolve and, when it is wrong, report.
"""

from __future__ import annotations

import os

from hal9999.workdir import pure_path

TYPE_CHECKING = False  # typing, pathlib: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

THIN_VARS = frozenset({"HAL_HOME", "HAL_NO_DAEMON"})
"""``HAL_*`` variables every thin path understands."""
NAME_VARS = {
    "HAL_AGENT": "default_agent",
    "HAL_PROVIDER": "default_provider",
    "HAL_PROCESS_MANAGER": "process_manager",
}
"""The name settings a thin path reads from ``HAL_*`` (``config.ENV_KEYS``' order)."""
NAME_AND_THIN_VARS = THIN_VARS | frozenset(NAME_VARS)
"""``THIN_VARS`` and the name settings: what the thin ``hal run`` and ``hal task list``
understand."""

NO_DAEMON_VAR = "HAL_NO_DAEMON"
"""Set to 1 to work in-process even while a daemon runs."""

_YES = frozenset({"1", "true", "yes", "on"})
_NO = frozenset({"", "0", "false", "no", "off"})


def no_daemon(environ: Mapping[str, str]) -> bool:
    """Whether ``HAL_NO_DAEMON`` asks for an in-process command. A value that is neither yes
    nor no is a ConfigError: ``HAL_NO_DAEMON=false`` used to mean "no daemon" too."""
    value = environ.get(NO_DAEMON_VAR, "")
    if value.lower() in _YES:
        return True
    if value.lower() in _NO:
        return False
    from hal9999.errors import ConfigError

    raise ConfigError(
        f"{NO_DAEMON_VAR}: expected 1 or 0, got {value!r}",
        hint=f"{NO_DAEMON_VAR}=1 works without the daemon; unset it to use a running one",
    )


def names_set(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The name variables that apply (variable: value, in ``NAME_VARS``' order), when the
    full config would take each of them as it is; None when one is the full path's to judge
    (and, for most, to refuse in one line: ``HAL_PROVIDER: default_provider: must not be
    empty``, ``HAL_AGENT is set but empty``, ``HAL_PROVIDER: not UTF-8 text``)."""
    applied: dict[str, str] = {}
    for var in NAME_VARS:
        value = environ.get(var, "")
        if not value and var == "HAL_AGENT" and var in environ:
            return None  # refused (``config.REFUSED_EMPTY``)
        if not value:
            continue  # empty means unset, as in the config
        if not value.isascii() or not value.strip():
            return None  # blank, or maybe not UTF-8 (an escaped byte): the full path says so
        applied[var] = value
    return applied


def listing_home(environ: Mapping[str, str], cwd: str | None) -> str | None:
    """:func:`home_path` for a command that reads the store and no setting but the home
    (``hal task list``): the name variables cannot change what it shows, and are taken when
    the full config would take them as they are (:func:`names_set`)."""
    if environ.get(NO_DAEMON_VAR, "").lower() not in _YES | _NO:
        return None  # the full path refuses it (:func:`no_daemon`), even for a listing
    home = home_path(environ, cwd, NAME_AND_THIN_VARS)
    return None if home is None or names_set(environ) is None else home


def thin_home(
    environ: Mapping[str, str], cwd: Path | None, allowed: frozenset[str] = THIN_VARS
) -> Path | None:
    """The home the full config would give, when only defaults and ``allowed`` variables
    apply; None when anything else might (then the full path decides). ``cwd`` None: it was
    deleted (no ``./hal.toml`` then)."""
    home = home_path(environ, None if cwd is None else str(cwd), allowed)
    if home is None:
        return None
    from pathlib import Path

    return Path(home)


def home_path(
    environ: Mapping[str, str], cwd: str | None, allowed: frozenset[str] = THIN_VARS
) -> str | None:
    """:func:`thin_home` as a string (the thin ``hal run`` imports no :mod:`pathlib`)."""
    for name, value in environ.items():
        if name.startswith("HAL_") and value and name not in allowed:
            return None
    # lexists: a link to a missing file is the full path's to report, not "no config".
    user, project = _user_config(environ), pure_path(cwd, "hal.toml") if cwd is not None else None
    if os.path.lexists(user) or (project is not None and os.path.lexists(project)):
        return None
    given = environ.get("HAL_HOME", "")
    if "HAL_HOME" in environ and not given:
        return None  # refused by the full path (``config.REFUSED_EMPTY``)
    if given:
        # Relative, `~`, non-ASCII and space-padded homes are the config's to resolve and check.
        plain = given.isascii() and given.startswith("/") and given == given.rstrip()
        return pure_path(given) if plain else None
    home = pure_path(_xdg(environ, "XDG_DATA_HOME", ".local/share"), "hal9999")
    # The config expands `~` in it (a HOME of `~x`, say): its to resolve, as above.
    return home if home.startswith("/") and home.isascii() else None


def _xdg(environ: Mapping[str, str], var: str, fallback: str) -> str:
    # As hal9999.config._xdg_dir: a relative value is invalid and ignored.
    value = environ.get(var, "")
    if value and value.startswith("/"):
        return pure_path(value)
    home = environ.get("HOME")
    if not home:
        from pathlib import Path

        home = str(Path.home())
    return pure_path(home, fallback)


def _user_config(environ: Mapping[str, str]) -> str:
    return pure_path(_xdg(environ, "XDG_CONFIG_HOME", ".config"), "hal9999", "config.toml")
