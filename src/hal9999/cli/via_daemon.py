"""Which task API a CLI command uses: the running ``hal serve``, or this process.

Commands call only :class:`hal9999.tasks.api.TaskAPI`; this module picks the
implementation. File readers (``logs``, ``events``, ``diff``, ``attach``) read the session
directly either way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hal9999.cli.app import App
    from hal9999.config import HalConfig
    from hal9999.server.client import DaemonClient
    from hal9999.tasks.api import TaskAPI

from hal9999.cli.thin_config import no_daemon


def find_daemon(config: HalConfig, environ: Mapping[str, str]) -> DaemonClient | None:
    """The running daemon of this home, unless ``HAL_NO_DAEMON`` is set."""
    if no_daemon(environ):
        return None
    from hal9999.server.client import DaemonClient  # not for an in-process command

    return DaemonClient.find(config.home)


def task_api(app_: App) -> TaskAPI:
    """The daemon's API when one runs for this home, else the local one."""
    from hal9999.cli.app import spawn_runner

    client = app_.daemon()
    if client is not None:
        from hal9999.server.client import DaemonTaskAPI

        app_.via_daemon = True
        return DaemonTaskAPI(client, app_.config, os.environ)
    from hal9999.tasks.api import LocalTaskAPI  # the in-process API: the service, asyncio

    return LocalTaskAPI(app_.service, lambda task, args, env: spawn_runner(app_, task, args, env))
