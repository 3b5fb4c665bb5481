"""What ``hal doctor`` says about the ``docker`` provider and the ``pm2`` process manager:
the SDK, the engine (reachable, which one), the image, how many sandboxes exist, PM2."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hal9999.envvars import absolute_dir
from hal9999.errors import ConfigError

Finding = tuple[str, bool, str, str | None]
"""(name, ok, detail, fix)."""


async def docker_findings(settings: Mapping[str, Any] | None, state_dir: Path) -> list[Finding]:
    """The docker provider's lines of the report (never raises)."""
    from hal9999.errors import HalError
    from hal9999.providers.docker.provider import DockerConfig, DockerProvider
    from hal9999.providers.registry import checked_settings

    try:
        import docker  # noqa: F401
    except ImportError:
        return [("docker provider", False, "the docker SDK is not installed",
                 "pip install 'hal9999[docker]'")]  # fmt: skip
    try:
        config = checked_settings("docker", DockerConfig, settings or {})
        provider = DockerProvider(state_dir=state_dir, config=config)
        version = await provider.call("version", provider.client().version)
    except HalError as exc:
        return [("docker engine", False, exc.message, exc.hint)]
    except ValueError as exc:
        return [("docker engine", False, f"[providers.docker]: {exc}", "fix the config")]
    parts = version.get("Components") or [{}]
    engine = f"{parts[0].get('Name', '')} {parts[0].get('Version', '')}".strip()
    found: list[Finding] = [("docker engine", True, f"{provider.url}: {engine or 'answers'}", None)]
    try:
        await provider._check_image(config.image)
        found.append(("docker image", True, config.image, None))
    except HalError as exc:
        found.append(("docker image", False, exc.message, exc.hint))
    try:
        sandboxes = await provider.list()
        running = sum(1 for info in sandboxes if info.state == "running")
        found.append(("docker sandboxes", True, f"{len(sandboxes)} ({running} running)", None))
    except HalError as exc:
        found.append(("docker sandboxes", False, exc.message, exc.hint))
    return found


def pm2_finding() -> Finding:
    """Whether PM2 is on PATH (for ``--process-manager pm2``)."""
    found = shutil.which("pm2")
    if found is None:
        return ("pm2", False, "not installed (only for --process-manager pm2)",
                "bash scripts/install-pm2.sh (PM2 from npm, pinned)")  # fmt: skip
    try:
        absolute_dir(os.environ, "HAL_PM2_HOME")
    except ConfigError as exc:
        return ("pm2", False, exc.message, exc.hint)
    return ("pm2", True, found, None)
