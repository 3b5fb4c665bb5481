"""hal's configuration: pydantic models and the layered loader.

Layers, later wins, tables merged key by key::

    defaults < $XDG_CONFIG_HOME/hal9999/config.toml < ./hal.toml < HAL_* environment

A bad value is reported with where it came from, e.g. ``hal.toml: timeout_s: expected a
number`` or ``HAL_NETWORK: network: expected one of 'none', 'host'``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hal9999.agents.base import AgentSettings
from hal9999.errors import ConfigError
from hal9999.spec import Resources

CONFIG_FILE_NAME = "hal.toml"
"""The per-project config file, read from the current directory."""

ENV_KEYS: dict[str, tuple[str, ...]] = {
    "HAL_HOME": ("home",),
    "HAL_AGENT": ("default_agent",),
    "HAL_PROVIDER": ("default_provider",),
    "HAL_PROCESS_MANAGER": ("process_manager",),
    "HAL_TIMEOUT": ("timeout_s",),
    "HAL_NETWORK": ("network",),
    "HAL_MEMORY_MB": ("resources", "memory_mb"),
    "HAL_CPUS": ("resources", "cpus"),
    "HAL_PIDS": ("resources", "pids"),
    "HAL_DISK_MB": ("resources", "disk_mb"),
}
"""Environment variables and the config key each one sets."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentConfig(_Config):
    """Settings of one agent, from ``[agents.<name>]``."""

    model: str | None = None
    """Model name passed to the agent."""
    base_url: str | None = None
    """API endpoint the agent talks to."""
    api_key_env: str | None = None
    """Host environment variable holding the API key (forwarded at exec time only)."""
    command: str | None = None
    """Override of the agent's program (path or name)."""
    extra_args: list[str] = Field(default_factory=list)
    """Arguments appended to the agent's command line."""

    def to_settings(self) -> AgentSettings:
        """The agent-facing form of these settings."""
        return AgentSettings(
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            command=self.command,
            extra_args=tuple(self.extra_args),
        )


class CredentialFile(_Config):
    """A host file copied into every sandbox (atomically, private), e.g. an agent login."""

    source: Path
    """Path on the host; ``~`` is expanded."""
    target: str
    """Path inside the sandbox; a relative one is relative to the agent's home."""
    mode: int = Field(default=0o600, ge=0, le=0o777)
    """File mode inside the sandbox."""

    @field_validator("source")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class HalConfig(_Config):
    """Everything configurable about hal."""

    home: Path
    """Data directory: database, sessions, provider state (``HAL_HOME``)."""
    default_agent: str = "claude"
    """Agent used when a task names none (``HAL_AGENT``)."""
    default_provider: str = "bwrap"
    """Sandbox provider used when a task names none (``HAL_PROVIDER``)."""
    process_manager: str = "tmux"
    """How the agent process is run inside the sandbox (``HAL_PROCESS_MANAGER``)."""
    timeout_s: float = Field(default=3600, gt=0)
    """Default run time limit of a task, in seconds (``HAL_TIMEOUT``)."""
    network: Literal["none", "host"] = "none"
    """Default network access of sandboxes (``HAL_NETWORK``)."""
    resources: Resources = Resources()
    """Default resource limits (``HAL_MEMORY_MB``, ``HAL_CPUS``, ``HAL_PIDS``, ``HAL_DISK_MB``);
    unset ones get safe defaults, ``0`` means unlimited (see :mod:`hal9999.providers.limits`)."""
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    """Per-agent settings, keyed by agent name."""
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-provider settings, keyed by provider name; each provider validates its own."""
    credentials: list[CredentialFile] = Field(default_factory=list)
    """Files installed into every sandbox."""
    forward_env: list[str] = Field(default_factory=list)
    """Host environment variables forwarded to the agent on every run (names only)."""
    secrets: list[str] = Field(default_factory=list)
    """Host environment variables that are secrets: forwarded to the agent when set and
    masked in every log, event and record (names only; like ``hal run --secret NAME``)."""
    pool: dict[str, Any] = Field(default_factory=dict)
    """Warm-pool and placement settings: ``[pool]`` for every provider, ``[pool.<name>]`` for
    one; validated by :mod:`hal9999.pool.settings` (``HAL_<PROVIDER>_*``, ``HAL_*`` win)."""
    scheduler: dict[str, Any] = Field(default_factory=dict)
    """Daemon queue settings (``[scheduler]``), validated by :mod:`hal9999.pool.settings`."""

    @field_validator("home")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def agent_settings(self, name: str) -> AgentSettings:
        """Settings for an agent; defaults when the config has no table for it."""
        return self.agents.get(name, AgentConfig()).to_settings()


# -- loading ------------------------------------------------------------------------------

Layer = tuple[str, dict[str, Any]]
"""A source name (file or variable) and the table it contributes."""


def _xdg_dir(environ: Mapping[str, str], var: str, fallback: str) -> Path:
    # The XDG spec says relative values are invalid and must be ignored.
    value = environ.get(var, "")
    if value and Path(value).is_absolute():
        return Path(value)
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / fallback


def user_config_path(environ: Mapping[str, str]) -> Path:
    """Where the user's config file lives."""
    return _xdg_dir(environ, "XDG_CONFIG_HOME", ".config") / "hal9999" / "config.toml"


def default_home(environ: Mapping[str, str]) -> Path:
    """The data directory when neither config nor ``HAL_HOME`` sets one."""
    return _xdg_dir(environ, "XDG_DATA_HOME", ".local/share") / "hal9999"


def _read_toml(path: Path, label: str) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read the file: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{label}: invalid TOML: {exc}", hint=f"fix the syntax of {path}", path=str(path)
        ) from exc


def _env_layer(environ: Mapping[str, str]) -> list[Layer]:
    layers: list[Layer] = []
    for var, key in ENV_KEYS.items():
        value = environ.get(var, "")
        if not value:
            continue  # An empty variable means unset, as shells make it easy to produce.
        table: dict[str, Any] = {key[-1]: value}
        for part in reversed(key[:-1]):
            table = {part: table}
        layers.append((var, table))
    return layers


def _merge(
    base: dict[str, Any],
    update: Mapping[str, Any],
    origin: dict[tuple[str, ...], str],
    source: str,
    prefix: tuple[str, ...] = (),
) -> None:
    """Deep-merge ``update`` into ``base``, recording which source set each key."""
    for key, value in update.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, source, path)
        else:
            base[key] = _copy(value)
            # Drop provenance of whatever this value replaced, then claim the whole subtree.
            for old in [p for p in origin if p[: len(path)] == path]:
                del origin[old]
        origin[path] = source


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


_EXPECTED: dict[str, str] = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "string_type": "expected a string",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "path_type": "expected a path",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


_BOUNDS: dict[str, str] = {
    "greater_than": "greater than",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "less_than_equal": "at most",
}


def _describe(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind == "literal_error" and "expected" in ctx:
        return f"expected one of {ctx['expected']}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # "greater than 0", not "greater than 0.0"
        return f"expected a number {_BOUNDS[kind]} {bound}"
    return _EXPECTED.get(kind, str(error.get("msg", "invalid value")))


def _source_of(loc: tuple[str | int, ...], origin: Mapping[tuple[str, ...], str]) -> str:
    keys = tuple(str(part) for part in loc)
    for end in range(len(keys), 0, -1):
        if keys[:end] in origin:
            return origin[keys[:end]]
    return "config"


def load_config(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> HalConfig:
    """Read the layered configuration; raises :class:`ConfigError` on any bad input."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    here = Path.cwd() if cwd is None else cwd

    layers: list[Layer] = [("defaults", {"home": str(default_home(env))})]
    user_file = user_config_path(env)
    for path, label in ((user_file, str(user_file)), (here / CONFIG_FILE_NAME, CONFIG_FILE_NAME)):
        table = _read_toml(path, label)
        if table is not None:
            layers.append((label, table))
    layers.extend(_env_layer(env))

    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for source, table in layers:
        _merge(merged, table, origin, source)

    try:
        config = HalConfig.model_validate(merged)
    except ValidationError as exc:
        problems = [
            f"{_source_of(err['loc'], origin)}: {'.'.join(str(p) for p in err['loc'])}: "
            f"{_describe(err)}"
            for err in exc.errors()
        ]
        first = exc.errors()[0]
        raise ConfigError(
            problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            hint=f"fix it in {_source_of(first['loc'], origin)}",
            problems=problems,
        ) from exc
    if not config.home.is_absolute():
        config = config.model_copy(update={"home": (here / config.home).resolve()})
    return config
