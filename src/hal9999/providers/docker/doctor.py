"""What ``hal doctor`` says about the ``docker`` provider: the SDK, the engine (reachable,
which one), the image, how many sandboxes exist."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hal9999.errors import HalError
from hal9999.providers.doctor import Check, DoctorScope


async def checks(scope: DoctorScope) -> list[Check]:
    """The ``docker`` lines of the report; none where the config or HAL_HOME is unusable
    (the provider's state lives there)."""
    if scope.state_dir is None or isinstance(scope.config, HalError):
        return []
    return await docker_findings(scope.settings, scope.state_dir)


async def docker_findings(settings: Mapping[str, Any] | None, state_dir: Path) -> list[Check]:
    """The docker provider's lines of the report (never raises)."""
    from hal9999.providers.docker.provider import DockerConfig, DockerProvider
    from hal9999.providers.registry import checked_settings

    try:
        import docker  # noqa: F401
    except ImportError:
        return [Check("docker provider", False, "the docker SDK is not installed",
                      "pip install 'hal9999[docker]'", required=False)]  # fmt: skip
    try:
        config = checked_settings("docker", DockerConfig, settings or {})
        provider = DockerProvider(state_dir=state_dir, config=config)
        version = await provider.call("version", provider.client().version)
    except HalError as exc:
        return [Check("docker engine", False, exc.message, exc.hint, required=False)]
    except ValueError as exc:
        return [Check("docker engine", False, f"[providers.docker]: {exc}", "fix the config",
                      required=False)]  # fmt: skip
    parts = version.get("Components") or [{}]
    engine = f"{parts[0].get('Name', '')} {parts[0].get('Version', '')}".strip()
    found = [Check("docker engine", True, f"{provider.url}: {engine or 'answers'}",
                   required=False)]  # fmt: skip
    try:
        await provider._check_image(config.image)
        found.append(Check("docker image", True, config.image, required=False))
    except HalError as exc:
        found.append(Check("docker image", False, exc.message, exc.hint, required=False))
    try:
        sandboxes = await provider.list()
        running = sum(1 for info in sandboxes if info.state == "running")
        found.append(Check("docker sandboxes", True, f"{len(sandboxes)} ({running} running)",
                           required=False))  # fmt: skip
    except HalError as exc:
        found.append(Check("docker sandboxes", False, exc.message, exc.hint, required=False))
    return found
