"""Where the task layer composes configured plugins: providers and process managers."""

from __future__ import annotations

from collections.abc import Mapping

from hal9999.agents.registry import ENTRY_POINT_GROUP as AGENTS
from hal9999.agents.registry import available_agents, check_agent_name, is_template
from hal9999.config import HalConfig
from hal9999.entrypoints import find_entry_point
from hal9999.errors import ConfigError, UnknownAgent
from hal9999.home import HalPaths
from hal9999.process.base import ProcessManager
from hal9999.process.registry import GROUP as MANAGERS
from hal9999.process.registry import available_process_managers
from hal9999.process.registry import load_process_manager as _load_manager
from hal9999.providers.base import Provider
from hal9999.providers.registry import GROUP, available_providers, check_table, load_provider
from hal9999.tasks.request import provider_list


def load_provider_for(config: HalConfig, name: str) -> Provider:
    """The provider ``name`` with its state dir and ``[providers.<name>]`` settings."""
    paths = HalPaths(config.home)
    return load_provider(
        name,
        state_dir=paths.sandbox_state(name),
        settings=config.providers.get(name),
        origin=config._origin,
    )


def check_provider_tables(config: HalConfig) -> None:
    """Refuse a name the config gives that no installed package registers (plugins included),
    naming the file or variable it came from: a table of a provider (``[providers.<name>]``,
    ``[pool.<name>]``, ``[gateway.provider_egress] <name>``) or of an agent preset
    (``[agents.<name>]``) would be ignored without a word, and a default (``default_provider``,
    ``default_agent``, ``process_manager``) would fail a run without saying where it is set."""
    pooled = [name for name, table in config.pool.items() if isinstance(table, dict)]
    provider_egress = config.gateway.provider_egress
    tables = [
        *((f"[providers.{name}]", name, "table") for name in config.providers),
        *((f"[pool.{name}]", name, "table") for name in pooled),
        *((f"[gateway.provider_egress] {name}", name, "key") for name in provider_egress),
    ]
    for where, name, what in tables:
        if find_entry_point(GROUP, name) is None:
            raise ConfigError(
                f"{where}: no provider named {name!r}",
                hint=f"providers: {', '.join(available_providers())}; or remove the {what}",
            )
    for name in config.agents:
        if not is_template(name) and find_entry_point(AGENTS, name) is None:
            raise ConfigError(
                f"[agents.{name}]: no agent preset named {name!r}",
                hint=f"presets: {', '.join(available_agents())}; or remove the table",
            )
    _check_defaults(config)


def _check_defaults(config: HalConfig) -> None:
    """The default provider(s), agent and process manager name installed plugins."""
    for name in provider_list(config.default_provider):
        if find_entry_point(GROUP, name) is None:
            raise _wrong_default(
                config,
                "default_provider",
                f"no provider named {name!r}",
                f"providers: {', '.join(available_providers())}",
            )
    try:
        check_agent_name(config.default_agent, lambda name: bool(find_entry_point(AGENTS, name)))
    except UnknownAgent as exc:
        raise _wrong_default(config, "default_agent", exc.message, str(exc.hint)) from exc
    if find_entry_point(MANAGERS, config.process_manager) is None:
        raise _wrong_default(
            config,
            "process_manager",
            f"unknown process manager {config.process_manager!r}",
            f"choose one of: {', '.join(available_process_managers())}",
        )


def _wrong_default(config: HalConfig, key: str, problem: str, hint: str) -> ConfigError:
    """``problem`` of ``key``, named with the file or variable that set it and how to fix it
    there."""
    # Only to report a wrong one: off the path of a run (issue 16).
    from hal9999.config_origin import fix_hint, source_of

    source = source_of(config, key)
    return ConfigError(f"{source}: {key}: {problem}", hint=f"{hint}; {fix_hint(source)}")


def check_sections(config: HalConfig, environ: Mapping[str, str]) -> None:
    """Check what the config's model leaves to its readers (every ``[providers.*]`` table,
    ``[pool]`` with the ``HAL_<P>_*`` variables, ``[scheduler]``, ``[hive]``, ``[gateway]
    ca_file``), so ``hal doctor`` and ``hal serve`` refuse at once what a run or the daemon's
    pool would refuse later, or use without a word. A run checks only its own provider's
    table: importing every other provider that has one would cost it 3-120 ms each
    (docs/benchmarks.md)."""
    from hal9999.hive.settings import hive_settings
    from hal9999.pool.settings import provider_settings, scheduler_settings
    from hal9999.process.caplog import log_cap_from

    check_provider_tables(config)
    for name, table in config.providers.items():  # each table, not only those in use today
        check_table(name, table, config._origin)
    if config.gateway.ca_file is not None:  # else every call of every agent is refused
        from hal9999.gateway.upstream import UpstreamPool, ca_file_error

        try:
            UpstreamPool(str(config.gateway.ca_file))
        except OSError as exc:
            raise ca_file_error(config.gateway.ca_file, exc) from exc
    scheduler_settings(config, environ)
    log_cap_from(environ)
    hive_settings(config)
    pooled = [name for name, table in config.pool.items() if isinstance(table, dict)]
    for name in dict.fromkeys([*provider_list(config.default_provider), *pooled]):
        provider_settings(config, environ, name)


def load_process_manager(config: HalConfig, name: str) -> ProcessManager:
    """The process manager ``name`` with its runtime dir."""
    return _load_manager(name, runtime_dir=HalPaths(config.home).run)
