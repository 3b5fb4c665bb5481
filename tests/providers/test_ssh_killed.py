"""hal killed (SIGKILL) after each remote call of an ssh sandbox's creation: what it made on
the host is known to the next hal (a record its sweep destroys), never a mirror left behind
that nothing knows of (the real sshd of tests/sshd.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.sshd import Sshd

from hal9999.providers.registry import load_provider
from hal9999.providers.ssh import channel
from hal9999.providers.ssh.provider import SshProvider
from hal9999.spec import SandboxSpec

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]


class Killed(BaseException):
    """hal dying (SIGKILL) at this point: nothing after it runs."""


def ssh_provider(server: Sshd, state: Path) -> SshProvider:
    provider = load_provider("ssh", state_dir=state, settings={"hosts": [server.host_entry()]})
    assert isinstance(provider, SshProvider)
    return provider


def mirrors(server: Sshd) -> set[str]:
    found = server.home / ".hal9999" / "sandboxes"
    return {entry.name for entry in found.iterdir()} if found.is_dir() else set()


@pytest.mark.parametrize("what", ["reading HOME", "mkdir"])
async def test_a_mirror_made_before_hal_was_killed_is_swept_by_the_next(
    what: str, sshd_server: Sshd, hal_home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = mirrors(sshd_server)
    real_run = channel.run

    async def run_then_die(*args: Any, **kwargs: Any) -> Any:
        result = await real_run(*args, **kwargs)
        if kwargs.get("what") == what:
            raise Killed
        return result

    async def nothing(*args: object) -> None:
        return None  # a killed process undoes nothing

    killed = ssh_provider(sshd_server, hal_home / "ssh")
    with monkeypatch.context() as patch:
        patch.setattr(channel, "run", run_then_die)
        patch.setattr(killed, "_undo", nothing)
        with pytest.raises(Killed):
            await killed.create(SandboxSpec(workspace=workspace))
    # The next hal (a daemon's start-up sweep: every sandbox no task holds is destroyed).
    after = ssh_provider(sshd_server, hal_home / "ssh")
    for info in await after.list():
        await after.destroy(info.id)
    assert mirrors(sshd_server) == before
    assert await after.list() == []
