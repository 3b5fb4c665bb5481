"""``hal serve`` builds each provider and process manager once (hal9999.app): its pool,
its runs, its recovery and every stop or kill of a run use the same objects."""

from __future__ import annotations

from pathlib import Path

from hal9999.config import HalConfig
from hal9999.server.daemon import Daemon


def test_a_kill_and_a_run_use_the_daemons_own_provider_and_manager(tmp_path: Path) -> None:
    config = HalConfig(home=tmp_path / "home", process_manager="direct", default_provider="local")
    daemon = Daemon(config, {})
    try:
        pooled = daemon.provider("local")
        # TaskService.kill and the recovery ask the service's plugins; runs, the runner's.
        assert daemon.service.plugins.provider("local") is pooled
        assert daemon.service.runner.provider("local") is pooled
        assert daemon.service.plugins.manager("direct") is daemon.service.plugins.manager("direct")
        assert daemon.tasks.service is daemon.service and daemon.hive.tasks is daemon.tasks
    finally:
        daemon.store.close()
