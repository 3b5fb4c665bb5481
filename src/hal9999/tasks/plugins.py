"""Where the task layer composes configured plugins: providers and process managers."""

from __future__ import annotations

from hal9999.config import HalConfig
from hal9999.entrypoints import find_entry_point
from hal9999.errors import ConfigError
from hal9999.home import HalPaths
from hal9999.process.base import ProcessManager
from hal9999.process.registry import load_process_manager as _load_manager
from hal9999.providers.base import Provider
from hal9999.providers.registry import GROUP, available_providers, load_provider


def load_provider_for(config: HalConfig, name: str) -> Provider:
    """The provider ``name`` with its state dir and ``[providers.<name>]`` settings."""
    paths = HalPaths(config.home)
    return load_provider(
        name, state_dir=paths.sandbox_state(name), settings=config.providers.get(name)
    )


def check_provider_tables(config: HalConfig) -> None:
    """Refuse ``[providers.<name>]`` or ``[pool.<name>]`` of a provider no installed package
    registers (plugins included): a misspelt name would be ignored without a word."""
    pooled = [name for name, table in config.pool.items() if isinstance(table, dict)]
    for section, names in (("providers", list(config.providers)), ("pool", pooled)):
        for name in names:
            if find_entry_point(GROUP, name) is None:
                raise ConfigError(
                    f"[{section}.{name}]: no provider named {name!r}",
                    hint=f"providers: {', '.join(available_providers())}; or remove the table",
                )


def load_process_manager(config: HalConfig, name: str) -> ProcessManager:
    """The process manager ``name`` with its runtime dir."""
    return _load_manager(name, runtime_dir=HalPaths(config.home).run)
