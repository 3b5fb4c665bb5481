"""hal's configuration: pydantic models and the layered loader.

Layers, later wins, tables merged key by key::

    defaults < $XDG_CONFIG_HOME/hal9999/config.toml < ./hal.toml < HAL_* environment

``./hal.toml`` is the file in the directory hal runs in (not the ``--repo`` target). It is
usually part of a repository someone else wrote, so until the user runs ``hal trust`` it may
only narrow what a task gets (see :mod:`hal9999.trust`); the rest of it is ignored and
reported in :class:`ConfigSources`.

A bad value is reported with where it came from, e.g. ``hal.toml: timeout_s: expected a
number`` or ``HAL_NETWORK: network: expected one of 'none', 'host'``. The same field types
check the command line (:func:`check_value`), so one rule holds for CLI, files and env.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
import os
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from hal9999.configfile import merge, read_toml
from hal9999.errors import ConfigError
from hal9999.spec import AgentSettings, Resources
from hal9999.values import (
    AGENT_HOME,
    MAX_TOKENS,
    BaseUrl,
    EgressHost,
    EnvName,
    Name,
    TimeoutSeconds,
    empty_list,
    is_text,
    toml_checked,
)
from hal9999.workdir import current_dir as current_dir  # re-exported (light module)
from hal9999.workdir import working_dir as working_dir

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from hal9999.trust import ProjectConfig

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
    "HAL_DISK_FILES": ("resources", "disk_files"),
    "HAL_TOTAL_MEMORY_MB": ("totals", "memory_mb"),
    "HAL_TOTAL_PIDS": ("totals", "pids"),
}
"""Environment variables and the config key each one sets."""


def expand_user(path: Path) -> Path:
    """``path`` with ``~`` or ``~user`` expanded; an unknown user is a ValueError (which the
    config reports with the file or variable it came from), not a RuntimeError."""
    try:
        return path.expanduser()
    except RuntimeError as exc:
        raise ValueError(f"cannot expand {str(path).split('/')[0]}: no such user") from exc


def plain_path(value: Any) -> Any:
    """A path's text, refused when empty or padded with spaces: ``""`` would be the current
    directory, ``" x"`` a directory named so there (a ``field_validator(mode="before")``)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    if isinstance(value, str) and value != value.strip():
        raise ValueError("has spaces or tabs around the path")
    return value


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class AgentConfig(_Config):
    """Settings of one agent, from ``[agents.<name>]``."""

    model: str | None = None
    """Model name passed to the agent."""
    base_url: BaseUrl | None = None
    """API endpoint the agent talks to: an ``http(s)://`` URL (the LLM gateway routes it)."""
    api_key_env: EnvName | None = None
    """Host environment variable holding the API key (forwarded at exec time only)."""
    command: str | None = None
    """Override of the agent's program (path or name)."""
    extra_args: list[str] = Field(default_factory=empty_list)
    """Arguments appended to the agent's command line."""

    def to_settings(self) -> AgentSettings:
        """The agent-facing form of these settings."""
        return AgentSettings(
            model=self.model, base_url=self.base_url, api_key_env=self.api_key_env,
            command=self.command, extra_args=tuple(self.extra_args),
        )  # fmt: skip


class TotalsConfig(_Config):
    """What every sandbox of hal's on this host may use together (``[totals]``): the limits
    of the cgroup that holds them all, which also size each sandbox's defaults
    (:mod:`hal9999.hostlimits`). A value over what the host has is refused."""

    memory_mb: int | None = Field(default=None, ge=0)
    """Memory of every sandbox together, in MiB (``HAL_TOTAL_MEMORY_MB``); unset: 75% of the
    host's RAM less 1 GiB; ``0``: no bound."""
    pids: int | None = Field(default=None, ge=0)
    """Processes and threads of every sandbox together (``HAL_TOTAL_PIDS``); unset: 75% of
    the host's ``kernel.pid_max`` (or ``threads-max``, when lower); ``0``: no bound."""


class CredentialFile(_Config):
    """A host file copied into every sandbox (atomically, private), e.g. an agent login."""

    source: Path
    """Path on the host; ``~`` is expanded."""
    target: str
    """Path inside the sandbox, below the agent's home: relative (to the home), ``~/...`` or
    an absolute path under ``/home/hal``; never ``..`` and never the workspace."""
    mode: int = Field(default=0o600, ge=0, le=0o777)
    """File mode inside the sandbox."""

    _plain_source = field_validator("source", mode="before")(plain_path)

    @field_validator("source")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return expand_user(value)

    @field_validator("target")
    @classmethod
    def _inside_home(cls, value: str) -> str:
        # A credential in the workspace would be committed to the result branch.
        rest = value[2:] if value.startswith("~/") else value
        if rest.startswith("/"):
            if not rest.startswith(AGENT_HOME + "/"):
                raise ValueError(f"must be inside the agent's home {AGENT_HOME}")
            rest = rest[len(AGENT_HOME) + 1 :]
        parts = [p for p in rest.split("/") if p not in ("", ".")]
        if not parts or ".." in parts or "\0" in rest:
            raise ValueError("expected a file path below the agent's home, without '..'")
        return posixpath.join(AGENT_HOME, *parts) if value.startswith("/") else value


class ModelPrice(_Config):
    """USD per million tokens of one model (``[gateway.prices."<model>"]``)."""

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)
    cache_read: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Cache reads; the input price when unset."""
    cache_write: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Cache writes; the input price when unset."""
    max_output_tokens: int | None = Field(default=None, gt=0, le=100_000_000)
    """The most output tokens (thinking included) the model emits in one call: what a call
    that sets no output cap reserves under a budget; ``assumed_max_output_tokens`` when
    unset."""


class GatewayConfig(_Config):
    """The host-side LLM gateway (``[gateway]``): user config only, never a project's
    hal.toml (the trust allow-list does not name it), since it holds budgets and egress."""

    enabled: bool = Field(default=True, strict=True)
    """Route preset agents through the gateway (the real key stays on the host)."""
    concurrency: int = Field(default=8, ge=1, le=1024)
    """Upstream calls at once per upstream and key, across every task of this HAL_HOME."""
    requests_per_minute: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Token-bucket rate of new upstream calls per upstream and key; unlimited when unset."""
    max_retries: int = Field(default=6, ge=0, le=50)
    """Retries of a 429/529/5xx answer (honouring ``retry-after``) before the agent sees it."""
    max_cost_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Default budget of one task in dollars (``hal run --max-cost`` overrides)."""
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    """Default budget of one task in tokens (``hal run --max-tokens`` overrides)."""
    daily_max_cost_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Dollars all tasks may spend per UTC day."""
    daily_max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    """Tokens all tasks may use per UTC day."""
    assumed_max_output_tokens: int = Field(default=128_000, gt=0, le=100_000_000)
    """The output tokens a call that sets no output cap (no ``max_tokens``,
    ``max_completion_tokens`` or ``max_output_tokens``) is assumed to emit at most, for a
    model whose price entry gives no ``max_output_tokens``: what it reserves under a budget
    (see :mod:`hal9999.gateway.inflight`). A model that emits more passes a budget by the
    excess; a larger value lets fewer such calls go at once."""
    models: list[str] | None = None
    """Model allow-list: a request for any other model is refused; every model when unset."""
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """Prices by model, over the shipped table (:mod:`hal9999.gateway.prices`)."""
    ca_file: Path | None = None
    """Extra CA certificates (PEM) the gateway trusts for upstreams (a private endpoint);
    the system's trusted roots otherwise."""
    _plain_ca_file = field_validator("ca_file", mode="before")(plain_path)
    egress: list[EgressHost] = Field(default_factory=empty_list)
    """Hosts (``host`` or ``host:port``, ``*.domain``) every task may reach through the egress
    proxy when the sandbox has no network."""
    provider_egress: dict[str, list[EgressHost]] = Field(default_factory=dict)
    """More hosts for the tasks of one provider (``[gateway.provider_egress] qemu = [...]``)."""
    egress_only: list[EgressHost] | None = None
    """When set, tasks reach only the hosts of the lists above that this list allows too: it
    narrows, never widens (an untrusted project hal.toml may set it; ``--egress-only``)."""
    store_bodies: bool = Field(default=False, strict=True)
    """Keep each call's request body in the store, masked (the task's secrets, the key and
    the placeholder token) before it touches disk; ``hal task requests ID --bodies``."""


class HalConfig(_Config):
    """Everything configurable about hal."""

    home: Path
    """Data directory: database, sessions, provider state (``HAL_HOME``)."""
    default_agent: Name = "claude"
    """Agent used when a task names none (``HAL_AGENT``)."""
    default_provider: Name = "bwrap"
    """Sandbox provider used when a task names none (``HAL_PROVIDER``)."""
    process_manager: Name = "tmux"
    """How the agent process is run inside the sandbox (``HAL_PROCESS_MANAGER``)."""
    timeout_s: TimeoutSeconds = 3600
    """Default run time limit of a task, in seconds (``HAL_TIMEOUT``)."""
    network: Literal["none", "host"] = "none"
    """Default network access of sandboxes (``HAL_NETWORK``)."""
    resources: Resources = Resources.model_construct()  # Resources(), unbuilt (spec.py)
    """Default resource limits (``HAL_MEMORY_MB``, ``HAL_CPUS``, ``HAL_PIDS``, ``HAL_DISK_MB``,
    ``HAL_DISK_FILES``); unset ones get safe defaults, ``0`` means unlimited (hostlimits.py)."""
    totals: TotalsConfig = TotalsConfig.model_construct()  # TotalsConfig(), unbuilt
    """Limits of every sandbox together (``[totals]``, ``HAL_TOTAL_MEMORY_MB``,
    ``HAL_TOTAL_PIDS``); unset ones get the host's defaults, ``0`` means no bound."""
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    """Per-agent settings, keyed by agent name."""
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-provider settings, keyed by provider name; each provider validates its own."""
    credentials: list[CredentialFile] = Field(default_factory=empty_list)
    """Files installed into every sandbox."""
    forward_env: list[EnvName] = Field(default_factory=empty_list)
    """Host environment variables forwarded to the agent on every run (names only)."""
    secrets: list[EnvName] = Field(default_factory=empty_list)
    """Host environment variables that are secrets: forwarded to the agent when set and
    masked in every log, event and record (names only; like ``hal run --secret NAME``)."""
    pool: dict[str, Any] = Field(default_factory=dict)
    """Warm-pool and placement settings: ``[pool]`` for every provider, ``[pool.<name>]`` for
    one; validated by :mod:`hal9999.pool.settings` (``HAL_<PROVIDER>_*``, ``HAL_*`` win)."""
    scheduler: dict[str, Any] = Field(default_factory=dict)
    """Daemon queue settings (``[scheduler]``), validated by :mod:`hal9999.pool.settings`."""
    gateway: GatewayConfig = GatewayConfig.model_construct()
    """The LLM gateway and egress policy (``[gateway]``). The default is built from the fields'
    defaults without validating them, which would build ``GatewayConfig``'s own validator and
    serializer at import for a run that reads no ``[gateway]``; it equals
    ``GatewayConfig()`` (``tests/test_config.py``)."""
    hive: dict[str, Any] = Field(default_factory=dict)
    """Hive settings (``[hive]``), validated by :mod:`hal9999.hivesettings`."""
    forges: dict[str, Any] = Field(default_factory=dict)
    """Forge settings (``[forges.github]``, ``[forges.gitlab]``: addresses and token
    variables), validated by :mod:`hal9999.forges.settings`."""
    _origin: dict[tuple[str, ...], str] = PrivateAttr(default_factory=dict)
    # Which file or variable set each key (kept by copies; lost when sent as JSON); read
    # by :mod:`hal9999.config_origin`.

    def __eq__(self, other: object) -> bool:
        # Equal settings are equal configs, wherever they came from (pydantic would compare
        # the private ``_origin`` too).
        if not isinstance(other, HalConfig):
            return NotImplemented
        return self.__dict__ == other.__dict__

    _plain_home = field_validator("home", mode="before")(plain_path)

    @field_validator("credentials")
    @classmethod
    def _one_file_per_target(cls, value: list[CredentialFile]) -> list[CredentialFile]:
        # Two files for one target: the later one was written over the first without a word.
        seen: dict[str, int] = {}
        for index, cred in enumerate(value):
            rest = cred.target[2:] if cred.target.startswith("~/") else cred.target
            rest = rest.removeprefix(AGENT_HOME + "/")
            where = posixpath.normpath(rest)
            if where in seen:
                raise ValueError(f"entries {seen[where]} and {index} both have target ~/{where}")
            seen[where] = index
        return value

    @field_validator("home")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return expand_user(value)

    def agent_settings(self, name: str) -> AgentSettings:
        """Settings for an agent; defaults when the config has no table for it."""
        table = self.agents.get(name)
        # `AgentConfig().to_settings()` without building AgentConfig's validator.
        return table.to_settings() if table is not None else AgentSettings()


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


REFUSED_EMPTY = {
    "HAL_AGENT": "set it to an agent (claude, codex, ...) or a command template, or unset it "
    "(`unset HAL_AGENT`) for the default",
    "HAL_HOME": "set it to hal's data directory, or unset it (`unset HAL_HOME`) for the default",
}
"""Variables whose empty value is refused, not read as unset (with the hint): an empty
``HAL_AGENT`` (``HAL_AGENT=$AGENT``, ``AGENT`` unset) ran the default agent, ``claude``, and
spent on its account; an empty ``HAL_HOME`` ran in the user's own home and daemon."""


def _env_layer(environ: Mapping[str, str]) -> list[Layer]:
    layers: list[Layer] = []
    for var, key in ENV_KEYS.items():
        value = environ.get(var, "")
        if not value and var in REFUSED_EMPTY and var in environ:
            raise ConfigError(f"{var} is set but empty", hint=REFUSED_EMPTY[var])
        if not value:
            continue  # An empty variable means unset, as shells make it easy to produce.
        if not is_text(value):
            raise ConfigError(f"{var}: not UTF-8 text", hint=f"fix or unset {var}")
        table: dict[str, Any] = {key[-1]: value}
        for part in reversed(key[:-1]):
            table = {part: table}
        layers.append((var, table))
    return layers


class ConfigSources(NamedTuple):
    """Where the configuration came from: what ``hal run`` prints and the daemon carries."""

    files: tuple[str, ...] = ()
    """Config files that applied, in order (the user file, then ``hal.toml``)."""
    env: tuple[str, ...] = ()
    """``HAL_*`` variables that applied."""
    project: "ProjectConfig | None" = None
    """The directory's ``hal.toml``, whether it is trusted and what of it was ignored."""

    def describe(self) -> str:
        """One line: ``config: <file>, <file>, HAL_X`` (or ``config: defaults``)."""
        return "config: " + (", ".join([*self.files, *self.env]) or "defaults")

    def notes(self) -> dict[str, str | None]:
        """What a run's events record of them (a request's ``config_sources``): this line,
        and what of ``./hal.toml`` was ignored, if anything."""
        return {
            "describe": self.describe(),
            "notice": self.project.notice() if self.project else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for events and the daemon's API)."""
        project = self.project.to_dict() if self.project else None
        return {"files": list(self.files), "env": list(self.env), "project": project}


def _without(table: Mapping[str, Any], paths: list[tuple[str, ...]]) -> dict[str, Any]:
    """A copy of the nested ``table`` without the keys at ``paths``."""
    kept = dict(table)
    for path in paths:
        where = kept
        for key in path[:-1]:
            inner = dict(where[key])  # copied: ``table`` stays as it is
            where[key] = inner
            where = inner
        where.pop(path[-1], None)
    return kept


def _invalid(
    errors: Sequence["ErrorDetails"], origin: Mapping[tuple[str, ...], str]
) -> ConfigError:
    # Only for a config that does not validate: off the path of a run.
    from hal9999.config_origin import invalid_config

    return invalid_config(errors, origin)


def log_level(environ: Mapping[str, str], default: str = "WARNING") -> str:
    """The level named by ``HAL_LOG_LEVEL`` (else ``default``); a bad name is a ConfigError."""
    value = environ.get("HAL_LOG_LEVEL", "").strip().upper() or default
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    if value not in levels:
        raise ConfigError(
            f"HAL_LOG_LEVEL: expected one of {', '.join(levels)}, got {value!r}",
            hint="fix or unset HAL_LOG_LEVEL",
        )
    return value


def load_config(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> HalConfig:
    """Read the layered configuration; raises :class:`ConfigError` on any bad input."""
    return load_config_sources(environ, cwd)[0]


def load_config_sources(
    environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[HalConfig, ConfigSources]:
    """The configuration and where it came from; raises :class:`ConfigError` on bad input.

    ``cwd`` defaults to the current directory; when that was deleted there is no project
    file to read, and hal carries on with the other layers.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    here = current_dir() if cwd is None else cwd

    base: list[Layer] = [("defaults", {"home": str(default_home(env))})]
    files: list[str] = []
    user_file = user_config_path(env)
    user = read_toml(user_file, str(user_file))
    if user is not None:
        base.append((str(user_file), user[0]))
        files.append(str(user_file))

    layers = list(base)
    project = None  # a ProjectConfig where there is a ./hal.toml
    project_file = here / CONFIG_FILE_NAME if here is not None else None
    found = read_toml(project_file, CONFIG_FILE_NAME) if project_file is not None else None
    if project_file is not None and found is not None:
        # Trust only where a ./hal.toml is: a run without one does not import it.
        from hal9999.trust import ProjectConfig, TrustStore, narrow_project_table

        table, data = found
        trust = TrustStore.for_config_dir(user_file.parent)
        if trust.is_trusted(project_file, data):
            project = ProjectConfig(project_file, trusted=True)
        else:
            # Narrowing is judged against what the user's own layers give.
            from hal9999.hostlimits import defaults  # only for an untrusted file

            table, ignored = narrow_project_table(
                table, _validate(base, here).model_dump(), defaults().model_dump()
            )
            project = ProjectConfig(
                project_file,
                trusted=False,
                ignored=tuple(ignored),
                changed=trust.was_trusted(project_file),
            )
        layers.append((CONFIG_FILE_NAME, table))
        files.append(str(project_file))
    env_layers = _env_layer(env)
    layers.extend(env_layers)
    config = _validate(layers, here)
    sources = ConfigSources(tuple(files), tuple(var for var, _ in env_layers), project)
    return config, sources


def _validate(layers: list[Layer], here: Path | None) -> HalConfig:
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for source, table in layers:
        merge(merged, table, origin, source)
    # What the files set with TOML's own types (`timeout_s = "30"` is refused), the text of
    # the variables that win over them (HAL_TIMEOUT=30) read as what it spells.
    set_by_env = [ENV_KEYS[source] for source, _ in layers if source in ENV_KEYS]
    try:
        if not set_by_env:
            config = toml_checked(HalConfig, merged)
        else:
            try:
                toml_checked(HalConfig, _without(merged, set_by_env))
            except ValidationError as exc:
                wrong = [err for err in exc.errors() if err["type"] != "missing"]
                if wrong:
                    raise _invalid(wrong, origin) from exc
            config = HalConfig.model_validate(merged)
    except ValidationError as exc:
        raise _invalid(exc.errors(), origin) from exc
    if not config.home.is_absolute():
        source = origin.get(("home",), "defaults")
        if source != CONFIG_FILE_NAME:  # only ./hal.toml's is relative to its own directory
            # HAL_HOME=home (or the user file's, or a relative HOME's default) meant another
            # home in each directory: tasks recorded in one, then "no tasks" from another.
            raise ConfigError(
                f"{source}: home: the relative path {config.home} would name another"
                " directory from each current directory",
                hint=f"make it absolute, e.g. {here / config.home if here else '/srv/hal'}",
            )
        if here is None:
            raise ConfigError(
                f"home: the relative path {config.home} needs a current directory, "
                "and it was deleted",
                hint="cd to an existing directory, or make home absolute",
            )
        config = config.model_copy(update={"home": (here / config.home).resolve()})
    config._origin = origin
    return config
