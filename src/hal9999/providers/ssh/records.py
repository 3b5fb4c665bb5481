"""What the ``ssh`` provider keeps on the hal host about each sandbox (``<state>/<id>.json``).

A record holds everything needed to reach the sandbox again (the host entry, the mirror's
location, how commands are isolated), so another hal process, or the launch relay, can run
commands in it without the provider's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hal9999.providers.records import JsonRecords, SandboxRecord
from hal9999.providers.ssh.config import SshHost


class MountRecord(BaseModel):
    """One directory of the sandbox: its path inside, in the mirror, and on the hal host."""

    model_config = ConfigDict(extra="forbid")

    target: str
    """Path inside (bwrap) or what the spec calls it."""
    remote: str
    """Directory of the mirror on the remote host."""
    writable: bool
    """Whether commands may change it (and so it is pulled back)."""
    host: Path | None = None
    """Its session directory on the hal host (None: the sandbox's own, e.g. /tmp)."""


class SshRecord(SandboxRecord):
    """One sandbox on one ssh host."""

    host: SshHost
    """Where it runs and how to reach it."""
    root: str
    """The mirror's directory on the remote host."""
    mounts: tuple[MountRecord, ...]
    """Its directories."""
    isolation: Literal["bwrap", "disposable", "none"]
    """How commands are isolated there."""
    bwrap: str = "bwrap"
    """The bubblewrap program on the remote host."""
    checkpoint_s: float = 60.0
    """How often the relay pulls a running agent's work back."""
    seccomp: bool = False
    """Whether the sandbox's root holds bwrap's filter (made by a hal that installs it),
    which every bwrap command then runs under; an older sandbox's commands run as before."""
    user_ids: tuple[int, int] | None = None
    """The login user's uid and gid on the host (None: a record of an older hal), which a
    ``network = "host"`` sandbox's commands run as inside, as a local one's do."""
    reaper: bool = False
    """Whether the host had python3 when the sandbox was made, so a bare command runs under
    :mod:`.reaper`, which ends all it left (nothing left to hunt by marker after it)."""


class SshRecords(JsonRecords[SshRecord]):
    """Records as JSON files under the provider's state dir (``<id>.json``)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, SshRecord, layout="file")
