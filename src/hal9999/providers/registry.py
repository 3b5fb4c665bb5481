"""Providers by name: built-ins and plugins alike come from the ``hal9999.providers`` entry
points, so a third-party backend registers exactly like ``bwrap`` does."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from hal9999 import plugins
from hal9999.errors import ConfigError, ProviderUnavailable
from hal9999.providers.base import Provider, ProviderDoctor
from hal9999.values import defaults_of, describe, setting_hint, toml_checked, with_others

GROUP = plugins.PROVIDERS.group
_Settings = TypeVar("_Settings", bound=BaseModel)


def available_providers() -> list[str]:
    """Names of every registered provider, sorted."""
    return plugins.names(plugins.PROVIDERS)


def provider_doctors() -> list[tuple[str, ProviderDoctor]]:
    """Each installed provider whose class has a ``hal doctor`` hook, by name; one that
    cannot be loaded is a warning line and left out (:func:`hal9999.plugins.load_all`)."""
    loaded = plugins.load_all(plugins.PROVIDERS)
    return [(name, cls) for name, cls in loaded.items() if isinstance(cls, ProviderDoctor)]


def load_provider(
    name: str,
    *,
    state_dir: Path,
    settings: Mapping[str, Any] | None = None,
    origin: Mapping[tuple[str, ...], str] | None = None,
) -> Provider:
    """The provider ``name``, its ``settings`` validated by its ``config_model``.

    ``state_dir`` is the provider's private directory for its sandbox records; ``origin``
    (the config's) says which file set each key, for an error to name it.
    """
    entry = plugins.find(plugins.PROVIDERS, name)
    cls = plugins.load(plugins.PROVIDERS, name)
    model = cast(type[BaseModel] | None, getattr(cls, "config_model", None))
    config = _settings_of(name, model, settings, origin)
    state_dir.mkdir(parents=True, exist_ok=True)
    provider = cls(state_dir=state_dir, config=config) if model else cls(state_dir=state_dir)
    if not isinstance(provider, Provider):
        raise ProviderUnavailable(f"{entry.value} does not implement the provider contract")
    return provider


def check_table(
    name: str, settings: Mapping[str, Any], origin: Mapping[tuple[str, ...], str] | None = None
) -> None:
    """Refuse what :func:`load_provider` would refuse of ``[providers.<name>]`` (a key the
    provider does not take, a value of the wrong type), for a provider no run loads today:
    a typo in its table would otherwise be found only the day it is used. A name no package
    registers, or a provider that cannot be imported here, is left to what loads it
    (``check_provider_tables`` names the first; a run of it says the second)."""
    if not plugins.installed(plugins.PROVIDERS, name):
        return
    try:
        cls = plugins.load(plugins.PROVIDERS, name)
    except ProviderUnavailable:
        return
    _settings_of(name, cast(type[BaseModel] | None, getattr(cls, "config_model", None)),
                 settings, origin)  # fmt: skip


def _settings_of(
    name: str,
    model: type[BaseModel] | None,
    settings: Mapping[str, Any] | None,
    origin: Mapping[tuple[str, ...], str] | None,
) -> BaseModel | None:
    """``settings`` validated by the provider's ``model``; a provider without one takes none."""
    if model is not None:
        return checked_settings(name, model, settings or {}, origin)
    if settings:
        table = _in_file(f"[providers.{name}]", ("providers", name), origin)
        raise ConfigError(
            f"provider {name!r} takes no settings", hint=f"remove {' of '.join(table[::-1])}"
        )
    return None


def checked_settings(
    name: str,
    model: type[_Settings],
    settings: Mapping[str, Any],
    origin: Mapping[tuple[str, ...], str] | None = None,
) -> _Settings:
    """The ``[providers.<name>]`` table validated by the provider's ``model``, with TOML's
    own types; a :class:`ConfigError` naming the table and key, and the config file that
    set it when ``origin`` (the config's) knows, when it is not valid. No table: the model's
    defaults, without building its validator where they need none (:func:`defaults_of`)."""
    try:
        return toml_checked(model, settings) if settings else defaults_of(model)
    except ValidationError as exc:
        found = []
        for err in exc.errors():  # each bad key (hal doctor says them all)
            key = ".".join(str(p) for p in err["loc"])
            loc = ("providers", name, *map(str, err["loc"]))
            table = _in_file(f"[providers.{name}]", loc, origin)
            found.append(ConfigError(
                f"{': '.join(table)}{' ' + key if key else ''}: {describe(err)}",
                hint=setting_hint(err, " of ".join(table[::-1]), model.model_fields),
            ))  # fmt: skip
        raise with_others(found) from exc


def _in_file(
    table: str, loc: tuple[str, ...], origin: Mapping[tuple[str, ...], str] | None
) -> tuple[str, ...]:
    """``(FILE, table)`` when ``origin`` knows the file that set ``loc``, else ``(table,)``:
    a table alone does not say which of the config files (the user's, ./hal.toml) to fix."""
    if not origin:
        return (table,)
    from hal9999.config_origin import source_at  # an error's path only

    found = source_at(loc, origin)
    return (table,) if found == "config" else (found, table)
