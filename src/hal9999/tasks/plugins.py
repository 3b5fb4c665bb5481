"""Where the task layer composes configured plugins: providers and process managers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from hal9999.agents.registry import ENTRY_POINT_GROUP as AGENTS
from hal9999.agents.registry import available_agents, check_agent_name, is_template
from hal9999.config import HalConfig
from hal9999.entrypoints import find_entry_point
from hal9999.errors import ConfigError, HalError, UnknownAgent
from hal9999.home import HalPaths
from hal9999.hostlimits import Totals
from hal9999.process.base import ProcessManager
from hal9999.process.registry import GROUP as MANAGERS
from hal9999.process.registry import available_process_managers
from hal9999.process.registry import load_process_manager as _load_manager
from hal9999.providers.base import Provider
from hal9999.providers.registry import GROUP, available_providers, check_table, load_provider
from hal9999.tasks.request import provider_list
from hal9999.values import every_error


def load_provider_for(config: HalConfig, name: str) -> Provider:
    """The provider ``name`` with its state dir and ``[providers.<name>]`` settings, and
    the config's totals in use (the limits every sandbox shares, :func:`use_config_totals`)."""
    use_config_totals(config)
    paths = HalPaths(config.home)
    return load_provider(
        name,
        state_dir=paths.sandbox_state(name),
        settings=config.providers.get(name),
        origin=config._origin,
    )


class Plugins:
    """The providers and process managers of one hal process, each built once under its
    config: the daemon's pool, its runs, their recovery and every stop or kill share one
    provider object per name (a provider is made to be shared, and building one validates
    its settings and checks its host). Built by :mod:`hal9999.app`."""

    def __init__(self, config: HalConfig) -> None:
        self.config = config
        self._providers: dict[str, Provider] = {}
        self._managers: dict[str, ProcessManager] = {}

    def provider(self, name: str) -> Provider:
        """The provider ``name``, built on first use."""
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = load_provider_for(self.config, name)
        return found

    def manager(self, name: str) -> ProcessManager:
        """The process manager ``name``, built on first use."""
        found = self._managers.get(name)
        if found is None:
            found = self._managers[name] = load_process_manager(self.config, name)
        return found


def use_config_totals(config: HalConfig) -> None:
    """Use the config's ``[totals]`` in this process (:func:`config_totals`)."""
    import os

    from hal9999 import hostlimits

    hostlimits.use_totals(config_totals(config, os.environ))


def config_totals(config: HalConfig, environ: Mapping[str, str]) -> Totals:
    """The config's ``[totals]``, shared by the tasks that may run at once (``[scheduler]
    max_concurrent``); refused in one line when one exceeds the host, or a ``[resources]``
    limit exceeds its total."""
    from hal9999 import hostlimits
    from hal9999.pool.settings import scheduler_settings

    concurrent = scheduler_settings(config, environ).max_concurrent
    total = hostlimits.Totals.of(config.totals.memory_mb, config.totals.pids, concurrent)
    for name in ("memory_mb", "pids"):
        asked, bound = getattr(config.resources, name), getattr(total, name)
        if asked and bound is not None and asked > bound:
            raise ConfigError(
                f"[resources] {name} = {asked} is more than [totals] {name} = {bound}, "
                "which every sandbox of hal's shares",
                hint=f"lower [resources] {name}, or raise [totals] {name} (0: no bound)",
            )
    return total


def check_provider_tables(config: HalConfig) -> None:
    """Refuse a name the config gives that no installed package registers (plugins included),
    naming the file or variable it came from: a table of a provider (``[providers.<name>]``,
    ``[pool.<name>]``, ``[gateway.provider_egress] <name>``) or of an agent preset
    (``[agents.<name>]``) would be ignored without a word, and a default (``default_provider``,
    ``default_agent``, ``process_manager``) would fail a run without saying where it is set.
    The first such name (:func:`table_problems` has them all)."""
    found = table_problems(config)
    if found:
        raise found[0]


def table_problems(config: HalConfig) -> list[ConfigError]:
    """Each name :func:`check_provider_tables` refuses, in its order."""
    found = []
    pooled = [name for name, table in config.pool.items() if isinstance(table, dict)]
    provider_egress = config.gateway.provider_egress
    tables = [
        *((f"[providers.{name}]", name, "table") for name in config.providers),
        *((f"[pool.{name}]", name, "table") for name in pooled),
        *((f"[gateway.provider_egress] {name}", name, "key") for name in provider_egress),
    ]
    for where, name, what in tables:
        if find_entry_point(GROUP, name) is None:
            found.append(ConfigError(
                f"{where}: no provider named {name!r}",
                hint=f"providers: {', '.join(available_providers())}; or remove the {what}",
            ))  # fmt: skip
    for name in config.agents:
        if not is_template(name) and find_entry_point(AGENTS, name) is None:
            found.append(ConfigError(
                f"[agents.{name}]: no agent preset named {name!r}",
                hint=f"presets: {', '.join(available_agents())}; or remove the table",
            ))  # fmt: skip
    return found + _wrong_defaults(config)


def _wrong_defaults(config: HalConfig) -> list[ConfigError]:
    """Of the default provider(s), agent and process manager, those no installed plugin
    names."""
    found = []
    for name in provider_list(config.default_provider):
        if find_entry_point(GROUP, name) is None:
            found.append(_wrong_default(
                config,
                "default_provider",
                f"no provider named {name!r}",
                f"providers: {', '.join(available_providers())}",
            ))  # fmt: skip
            break  # one line for the key
    try:
        check_agent_name(config.default_agent, lambda name: bool(find_entry_point(AGENTS, name)))
    except UnknownAgent as exc:
        found.append(_wrong_default(config, "default_agent", exc.message, str(exc.hint)))
    if find_entry_point(MANAGERS, config.process_manager) is None:
        found.append(_wrong_default(
            config,
            "process_manager",
            f"unknown process manager {config.process_manager!r}",
            f"choose one of: {', '.join(available_process_managers())}",
        ))  # fmt: skip
    return found


def _wrong_default(config: HalConfig, key: str, problem: str, hint: str) -> ConfigError:
    """``problem`` of ``key``, named with the file or variable that set it and how to fix it
    there."""
    # Only to report a wrong one: off the path of a run.
    from hal9999.config_origin import fix_hint, source_of

    source = source_of(config, key)
    return ConfigError(f"{source}: {key}: {problem}", hint=f"{hint}; {fix_hint(source)}")


def check_sections(config: HalConfig, environ: Mapping[str, str]) -> None:
    """Check what the config's model leaves to its readers (every ``[providers.*]`` table,
    ``[pool]`` with the ``HAL_<P>_*`` variables, ``[scheduler]``, ``[hive]``, ``[gateway]
    ca_file``), so ``hal doctor`` and ``hal serve`` refuse at once what a run or the daemon's
    pool would refuse later, or use without a word. A run checks only its own provider's
    table: importing every other provider that has one would cost it dearly
    (docs/benchmarks.md). The first problem (:func:`section_problems` has them all)."""
    found = section_problems(config, environ)
    if found:
        raise found[0]


def section_problems(config: HalConfig, environ: Mapping[str, str]) -> list[HalError]:
    """Every problem :func:`check_sections` finds, each a line (each bad table, each bad key
    of it), in its order, none twice: ``hal doctor`` says them all in one run."""
    from hal9999.forges.settings import check_forges
    from hal9999.hivesettings import hive_settings
    from hal9999.pool.settings import provider_settings, scheduler_settings
    from hal9999.process.caplog import log_cap_from

    found: list[HalError] = list(table_problems(config))
    checks: list[Callable[[], object]] = [
        # each table, not only those in use today
        *(partial(check_table, name, table, config._origin)
          for name, table in config.providers.items()),
        partial(_check_ca_file, config),  # else every call of every agent is refused
        partial(scheduler_settings, config, environ),
        partial(log_cap_from, environ),
        partial(hive_settings, config),
        partial(check_forges, config),
        partial(config_totals, config, environ),
    ]  # fmt: skip
    pooled = [name for name, table in config.pool.items() if isinstance(table, dict)]
    for name in dict.fromkeys([*provider_list(config.default_provider), *pooled]):
        if find_entry_point(GROUP, name) is not None:  # else named above
            checks.append(partial(provider_settings, config, environ, name))
    for check in checks:
        try:
            check()
        except HalError as exc:
            found += every_error(exc)
    # [pool]'s own keys are every provider's: one line each, not one per provider.
    return list({error.one_line(): error for error in found}.values())


def _check_ca_file(config: HalConfig) -> None:
    if config.gateway.ca_file is not None:
        from hal9999.gateway.upstream import UpstreamPool, ca_file_error

        try:
            UpstreamPool(str(config.gateway.ca_file))
        except OSError as exc:
            raise ca_file_error(config.gateway.ca_file, exc) from exc


def load_process_manager(config: HalConfig, name: str) -> ProcessManager:
    """The process manager ``name`` with its runtime dir."""
    return _load_manager(name, runtime_dir=HalPaths(config.home).run)
