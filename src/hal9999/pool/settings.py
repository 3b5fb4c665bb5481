"""Per-provider pool and placement settings, and the daemon's queue settings.

Each setting of a provider comes from the first of::

    HAL_<PROVIDER>_<NAME>  >  HAL_<NAME>  >  [pool.<provider>] key  >  [pool] key  >  default

so ``HAL_BWRAP_MAX_POOL_SIZE=4`` caps bwrap alone and ``HAL_MAX_POOL_SIZE=4`` every provider.
``network`` and the resource limits default to the top-level config (which already folds in
``HAL_NETWORK`` and friends), so a mixed pool can, say, give ``local`` host networking.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from hal9999.config import HalConfig
from hal9999.errors import ConfigError
from hal9999.hostlimits import DEFAULT_CONCURRENT
from hal9999.spec import NetworkMode, Resources
from hal9999.values import defaults_of, describe, setting_hint, with_others

Policy = Literal["reset", "destroy"]

DEFAULT_POLICY: dict[str, Policy] = {"bwrap": "reset", "fake": "reset"}
"""How a provider's sandbox is returned after a task when no setting says otherwise.

``reset`` kills what is left inside, wipes its scratch space and detaches the task's session;
providers without isolation (``local``) are destroyed and replaced instead, since a task may
have changed the host itself."""


RESOURCE_OVERRIDES = ("memory_mb", "cpus", "pids", "disk_mb", "disk_files")
"""The ``[resources]`` limits a provider's settings may override (each under its rule)."""


class ProviderSettings(BaseModel):
    """How many sandboxes of one provider exist, and how they are placed and returned."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    max_size: int = Field(default=8, ge=0)
    """Sandboxes of this provider at most, idle and in use (``HAL_<P>_MAX_POOL_SIZE``)."""
    min_warm: int = Field(default=0, ge=0)
    """Idle sandboxes kept ready for the provider's default spec (``HAL_<P>_MIN_WARM``)."""
    key_max_size: int | None = Field(default=None, ge=0)
    """Sandboxes at most per pool key (one spec); ``max_size`` when unset."""
    key_min_warm: int = Field(default=0, ge=0)
    """Idle sandboxes kept ready for every spec seen since the daemon started."""
    idle_timeout_s: float = Field(default=300.0, gt=0)
    """An idle sandbox above the warm minimum is destroyed after this long."""
    max_concurrent: int | None = Field(default=None, ge=0)
    """Tasks running on this provider at once; ``max_size`` when unset."""
    policy: Policy | None = None
    """``reset`` or ``destroy`` a sandbox after its task; the provider's default when unset."""
    network: NetworkMode | None = None
    """Network of this provider's sandboxes; the config's ``network`` when unset."""
    memory_mb: int | None = Field(default=None, ge=0)
    """Memory limit override for this provider."""
    cpus: float | None = Field(default=None, ge=0)
    """CPU quota override for this provider."""
    pids: int | None = Field(default=None, ge=0)
    """Process limit override for this provider."""
    disk_mb: int | None = Field(default=None, ge=0)
    """Disk limit override for this provider (``0``, like for the others: no limit)."""
    disk_files: int | None = Field(default=None, ge=0)
    """File-count limit override for this provider (``[resources] disk_files``' rule)."""

    @field_validator(*RESOURCE_OVERRIDES)
    @classmethod
    def _limit(cls, value: float | None, info: ValidationInfo) -> float | None:
        # The rule of [resources] itself (pids = 1 could start nothing): one rule for both.
        try:
            Resources.model_validate({info.field_name: value})
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return value


class SchedulerSettings(BaseModel):
    """The daemon's queue: how much runs at once, how failures are retried."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    max_concurrent: int = Field(default=DEFAULT_CONCURRENT, ge=1)
    """Tasks running at once over all providers (``HAL_MAX_CONCURRENT``)."""
    max_infra_retries: int = Field(default=5, ge=0)
    """Infrastructure failures (sandbox, provider, process) retried at most this often."""
    backoff_base_s: float = Field(default=0.5, gt=0)
    """First retry delay; doubled each retry, with jitter."""
    backoff_max_s: float = Field(default=30.0, gt=0)
    """Retry delays are capped here."""
    stuck_after_s: float = Field(default=900.0, gt=0)
    """A task this long in provisioning, preparing or collecting is reaped."""
    reap_interval_s: float = Field(default=2.0, gt=0)
    """How often the reaper looks for idle sandboxes and stuck tasks."""


_Settings = TypeVar("_Settings", bound=BaseModel)

ENV_NAMES: dict[str, str] = {
    "max_size": "MAX_POOL_SIZE",
    "min_warm": "MIN_WARM",
    "key_max_size": "KEY_MAX_POOL_SIZE",
    "key_min_warm": "KEY_MIN_WARM",
    "idle_timeout_s": "IDLE_TIMEOUT_S",
    "max_concurrent": "MAX_CONCURRENT",
    "policy": "POOL_POLICY",
    "network": "NETWORK",
    "memory_mb": "MEMORY_MB",
    "cpus": "CPUS",
    "pids": "PIDS",
    "disk_mb": "DISK_MB",
    "disk_files": "DISK_FILES",
}
"""Setting name -> environment suffix (``HAL_<P>_<SUFFIX>``, ``HAL_<SUFFIX>``)."""

_NO_GLOBAL_ENV = frozenset({"max_concurrent", "network", *RESOURCE_OVERRIDES})
"""Settings whose ``HAL_<NAME>`` means something else (the global limit, the config's
defaults), so only ``HAL_<P>_<NAME>`` sets them per provider."""

_SCHEDULER_ENV: dict[str, str] = {"max_concurrent": "HAL_MAX_CONCURRENT"}


def env_prefix(provider: str) -> str:
    """``HAL_<PROVIDER>_`` for a provider name (``-`` and ``.`` become ``_``)."""
    return "HAL_" + provider.upper().replace("-", "_").replace(".", "_") + "_"


def _file_of(source: str, key: str, config: HalConfig | None) -> str:
    """``source`` (``[pool.bwrap]``) prefixed with the config file that set ``key`` in it,
    when known: a table alone does not say which of the config files to fix."""
    if config is None:
        return source
    from hal9999.config_origin import source_at  # an error's path only

    found = source_at((*source.strip("[]").split("."), key), config._origin)
    return source if found == "config" else f"{found}: {source}"


def _invalid(
    exc: ValidationError,
    origin: Mapping[str, str],
    model: type[BaseModel],
    config: HalConfig | None = None,
) -> ConfigError:
    """One line naming the table or variable a bad setting came from, in :func:`describe`'s
    words (``[pool.bwrap] size: unknown key``, ``HAL_BWRAP_MIN_WARM: expected a whole
    number``)."""
    found = [_one_invalid(err, origin, model, config) for err in exc.errors()]
    return with_others(found)


def _one_invalid(
    err: Any, origin: Mapping[str, str], model: type[BaseModel], config: HalConfig | None
) -> ConfigError:
    key = ".".join(str(p) for p in err["loc"])
    source = origin.get(str(err["loc"][0]) if err["loc"] else "", "")
    if source.startswith("HAL_"):
        return ConfigError(f"{source}: {describe(err)}", hint=f"fix or unset {source}")
    where = _file_of(source, key, config)
    table = " of ".join(reversed(where.split(": ", 1)))  # [pool] of FILE
    return ConfigError(
        f"{where} {key}: {describe(err)}", hint=setting_hint(err, table, model.model_fields)
    )


def _checked(
    model: type[_Settings],
    table: dict[str, Any],
    origin: Mapping[str, str],
    config: HalConfig | None = None,
) -> _Settings:
    """``table`` validated: its config-file values strictly (TOML has real numbers and
    booleans, so ``max_size = "4"`` is a mistake), the variables' text laxly. Nothing set:
    the defaults, without building the model's validator (:func:`defaults_of`)."""
    files = {k: v for k, v in table.items() if not origin[k].startswith("HAL_")}
    try:
        if not table:
            return defaults_of(model)
        checked = model.model_validate(files, strict=True)
        return checked if len(files) == len(table) else model.model_validate(table)
    except ValidationError as exc:
        raise _invalid(exc, origin, model, config) from exc


def provider_settings(
    config: HalConfig, environ: Mapping[str, str], provider: str
) -> ProviderSettings:
    """The resolved settings of ``provider`` (see the module docstring for the order)."""
    table = {k: v for k, v in config.pool.items() if not isinstance(v, dict)}
    origin = dict.fromkeys(table, "[pool]")
    own = config.pool.get(provider)
    if isinstance(own, dict):
        table.update(own)
        origin.update(dict.fromkeys(own, f"[pool.{provider}]"))
    prefix = env_prefix(provider)
    for name, suffix in ENV_NAMES.items():
        var = prefix + suffix
        value = environ.get(var)
        if not value and name not in _NO_GLOBAL_ENV:
            var = "HAL_" + suffix
            value = environ.get(var)
        if value:
            table[name] = value
            origin[name] = var
    settings = _checked(ProviderSettings, table, origin, config)
    _check_floors(settings, origin, config)
    return settings


def _check_floors(
    settings: ProviderSettings, origin: Mapping[str, str], config: HalConfig | None = None
) -> None:
    """A warm floor above its cap cannot be kept: the keeper would try each tick and keep
    fewer without a word. One line naming where the floor came from."""
    key_cap = "key_max_size" if settings.key_max_size is not None else "max_size"
    for floor, cap in (("min_warm", "max_size"), ("key_min_warm", key_cap)):
        wanted, limit = getattr(settings, floor), getattr(settings, cap)
        if wanted <= limit:
            continue
        source = origin.get(floor, "")
        problem = f"{floor} {wanted} is above {cap} {limit}"
        if source.startswith("HAL_"):
            raise ConfigError(f"{source}: {problem}", hint=f"fix or unset {source}")
        where = _file_of(source, floor, config)
        raise ConfigError(f"{where} {problem}", hint=f"lower {floor} or raise {cap}")


def scheduler_settings(config: HalConfig, environ: Mapping[str, str]) -> SchedulerSettings:
    """The resolved queue settings: ``HAL_MAX_CONCURRENT``, then ``[scheduler]``."""
    table: dict[str, Any] = dict(config.scheduler)
    origin = dict.fromkeys(table, "[scheduler]")
    for name, var in _SCHEDULER_ENV.items():
        if environ.get(var):
            table[name] = environ[var]
            origin[name] = var
    return _checked(SchedulerSettings, table, origin, config)


def policy_of(provider: str, settings: ProviderSettings) -> Policy:
    """What happens to a sandbox of ``provider`` after its task."""
    return settings.policy or DEFAULT_POLICY.get(provider, "destroy")


def resources_of(config: HalConfig, settings: ProviderSettings) -> Resources:
    """The config's resource limits with the provider's overrides applied."""
    overrides = {
        name: getattr(settings, name)
        for name in RESOURCE_OVERRIDES
        if getattr(settings, name) is not None
    }
    return config.resources.model_copy(update=overrides)


def network_of(config: HalConfig, settings: ProviderSettings) -> NetworkMode:
    """The provider's network mode, else the config's."""
    return settings.network or config.network
