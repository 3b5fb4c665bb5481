"""Where the task layer composes configured plugins: providers and process managers."""

from __future__ import annotations

from hal9999.config import HalConfig
from hal9999.home import HalPaths
from hal9999.process.base import ProcessManager
from hal9999.process.registry import load_process_manager as _load_manager
from hal9999.providers.base import Provider
from hal9999.providers.registry import load_provider


def load_provider_for(config: HalConfig, name: str) -> Provider:
    """The provider ``name`` with its state dir and ``[providers.<name>]`` settings."""
    paths = HalPaths(config.home)
    return load_provider(
        name, state_dir=paths.sandbox_state(name), settings=config.providers.get(name)
    )


def load_process_manager(config: HalConfig, name: str) -> ProcessManager:
    """The process manager ``name`` with its runtime dir."""
    return _load_manager(name, runtime_dir=HalPaths(config.home).run)
