"""The composition root: what one hal process builds once and shares. An in-process run
gets the store's task service over this process's providers and process managers
(:func:`local_service`); ``hal serve`` gets :class:`DaemonParts`: the store, the event bus,
the same service, the warm pool, the scheduler, the task API every surface calls, and the
hive's turn loop. Nothing else builds a provider for a run: everything that starts, stops,
recovers or kills one asks :class:`~hal9999.tasks.plugins.Plugins` of its process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hal9999.config import HalConfig
from hal9999.store import Store
from hal9999.tasks.plugins import Plugins
from hal9999.tasks.service import TaskService

if TYPE_CHECKING:
    from hal9999.pool.settings import ProviderSettings
    from hal9999.providers.base import Provider


def local_service(
    config: HalConfig, store: Store, environ: Mapping[str, str], plugins: Plugins | None = None
) -> TaskService:
    """The task service of an in-process run (``hal run``, ``hal task ...``), over the
    command's ``plugins`` (its own when none is given)."""
    return _with_hive(TaskService(config, store, environ, plugins or Plugins(config)))


def _with_hive(service: TaskService) -> TaskService:
    """``service`` whose runs of a hive agent's task reach the agent's MCP server."""
    from hal9999.hive.mcp.channel import route_for

    service.runner.channel_for = route_for
    return service


class DaemonParts:
    """Everything ``hal serve`` runs tasks with, built once and wired by constructors."""

    def __init__(self, config: HalConfig, environ: Mapping[str, str]) -> None:
        # Imported here: an in-process run (local_service) loads none of the daemon's parts.
        from hal9999.events.bus import EventBus
        from hal9999.hive.api import HiveAPI
        from hal9999.hive.turns import HiveLoop
        from hal9999.hivesettings import hive_settings
        from hal9999.pool import SlotDir, WarmPool
        from hal9999.pool.settings import scheduler_settings
        from hal9999.tasks.recovery import Recovery
        from hal9999.tasks.sandboxes import PoolSource
        from hal9999.tasks.scheduler import Scheduler
        from hal9999.tasks.served import ServedTaskAPI

        self.config = config
        self.environ = environ
        self.store = Store.open(config.home)
        self.plugins = Plugins(config)
        """The daemon's providers and process managers: its pool's, its runs', its kills'."""
        self.service = _with_hive(TaskService(config, self.store, environ, self.plugins))
        self.bus = EventBus()
        """Every event of every task: written here, or by another process (via the index)."""
        self.service.writers.sinks.append(self.bus.sink)
        self.service.writers.background = True  # event writes never on the event loop
        self._settings: dict[str, ProviderSettings] = {}
        self.pool = WarmPool(
            providers=self.provider,
            settings=self.settings_of,
            slots=SlotDir(config.home / "pool"),
            store=self.store,
        )
        self.source = PoolSource(self.pool)
        self.scheduler = Scheduler(
            self.service, scheduler_settings(config, environ), self.provider_limit
        )
        adopting = Recovery(self.service, self.pool, self.source, self.provider)
        self.tasks = ServedTaskAPI(
            self.service, self.scheduler, self.bus, take_sandbox=adopting.take_sandbox
        )
        """The task API every route, the MCP server, the hive and the dashboard call."""
        self.hive_settings = hive_settings(config)
        self.hive = HiveLoop(self.tasks, self.hive_settings)
        """The hive's turn loop (agents woken by their mail)."""
        self.hive_api = HiveAPI(self.store, config, self.hive_settings, self.hive, self.bus)
        """What the operator does with the hive: the hive routes call it."""
        # Runs take sandboxes from the pool, warm agents' kept between their turns.
        self.service.runner.sandboxes = self.hive.hold_warm(self.source)

    def provider(self, name: str) -> Provider:
        """The provider ``name``, the one instance this daemon uses."""
        return self.plugins.provider(name)

    def settings_of(self, name: str) -> ProviderSettings:
        """The resolved pool settings of provider ``name``."""
        from hal9999.pool.settings import provider_settings

        if name not in self._settings:
            self._settings[name] = provider_settings(self.config, self.environ, name)
        return self._settings[name]

    def provider_limit(self, name: str) -> int:
        """Tasks that may run on provider ``name`` at once."""
        settings = self.settings_of(name)
        return settings.max_concurrent if settings.max_concurrent is not None else settings.max_size
