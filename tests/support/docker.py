"""The docker provider on the Podman service, and a workspace for its sandboxes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from hal9999.providers.docker.provider import DockerProvider
from hal9999.providers.registry import load_provider


@contextlib.asynccontextmanager
async def docker_provider(hal_home: Path) -> AsyncIterator[DockerProvider]:
    """The docker provider with its state under ``hal_home``; its containers removed after."""
    made = load_provider("docker", state_dir=hal_home / "sandboxes" / "docker")
    assert isinstance(made, DockerProvider)
    yield made
    for info in await made.list():  # a failed test leaves no container behind
        await made.destroy(info.id)


def docker_workspace(tmp_path: Path) -> Path:
    """A sandbox's workspace holding one file, ``task.txt``."""
    path = tmp_path / "ws"
    path.mkdir()
    (path / "task.txt").write_text("task\n")
    return path
