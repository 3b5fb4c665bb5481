"""Which file or ``HAL_*`` variable set each setting, for errors that name it.

:func:`hal9999.config.load_config_sources` records, as it merges the layers, the source of
every key in the config's ``_origin``; this module reads that record. A config that does not
validate is reported key by key with its sources (:func:`invalid_config`); a setting found
wrong later (a ``default_provider`` naming nothing installed) names its source with
:func:`source_of`; and the record travels with a config sent to the daemon
(:func:`origin_json`, :func:`with_origin`). Only errors and the daemon's client and server
use it, so an ordinary run never imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999 import agentfs
from hal9999.config import ENV_KEYS, HalConfig
from hal9999.errors import ConfigError
from hal9999.values import describe

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails


def source_of(config: HalConfig, *key: str) -> str:
    """The file or ``HAL_*`` variable that set ``key`` of ``config`` (``config`` when that is
    not known: a config sent as JSON to the daemon without its ``config_origin``), for an
    error that names it."""
    return source_at(key, config._origin)


def origin_json(config: HalConfig) -> list[dict[str, Any]]:
    """Which file or variable set each key of ``config``, as JSON: the ``config_origin`` a
    client sends with the config, so the daemon's errors name them as its own would."""
    return [{"key": list(key), "source": source} for key, source in config._origin.items()]


def with_origin(config: HalConfig, entries: Sequence[Mapping[str, Any]]) -> HalConfig:
    """``config`` knowing where its keys came from, from :func:`origin_json`'s form."""
    config._origin = {tuple(str(k) for k in e["key"]): str(e["source"]) for e in entries}
    return config


def fix_hint(source: str) -> str:
    """How to fix a value that came from ``source`` (a file or a ``HAL_*`` variable)."""
    return f"fix or unset {source}" if source in ENV_KEYS else f"fix it in {source}"


def source_at(loc: tuple[str | int, ...], origin: Mapping[tuple[str, ...], str]) -> str:
    """The source of the key at ``loc`` (or of the nearest table holding it) in ``origin``;
    ``config`` when none is recorded."""
    keys = tuple(str(part) for part in loc)
    for end in range(len(keys), 0, -1):
        if keys[:end] in origin:
            return origin[keys[:end]]
    return "config"


def invalid_config(
    errors: Sequence[ErrorDetails], origin: Mapping[tuple[str, ...], str]
) -> ConfigError:
    """Every problem of a config that did not validate, each with where it came from."""
    problems = [
        f"{source_at(err['loc'], origin)}: {'.'.join(str(p) for p in err['loc'])}: {describe(err)}"
        for err in errors
    ]
    first = errors[0]
    return ConfigError(
        problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
        hint=f"fix it in {source_at(first['loc'], origin)}",
        problems=problems,
    )


def save_origin(config: HalConfig, path: Path) -> None:
    """Keep where ``config``'s keys came from in ``path`` (a task's own settings, for the
    errors of its resume); nothing when none is known."""
    if origin := origin_json(config):
        agentfs.write_host_file(path, iter([json.dumps(origin).encode()]))


def load_origin(config: HalConfig, path: Path) -> HalConfig:
    """``config`` knowing where its keys came from, as :func:`save_origin` kept in ``path``;
    as it is when nothing was kept (a task from before, or all defaults: its errors name
    ``config``) or the file cannot be read."""
    try:
        return with_origin(config, json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return config
