"""What the ``ssh`` provider keeps on the hal host about each sandbox (``<state>/<id>.json``).

A record holds everything needed to reach the sandbox again (the host entry, the mirror's
location, how commands are isolated), so another hal process, or the launch relay, can run
commands in it without the provider's settings.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from hal9999.errors import ProviderError, SandboxNotFound
from hal9999.providers.base import SandboxInfo, SandboxState
from hal9999.providers.ssh.config import SshHost
from hal9999.spec import SandboxSpec

_ID = re.compile(r"[0-9a-f]{12}")


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


class SshRecord(BaseModel):
    """One sandbox on one ssh host."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """Sandbox id (12 hex digits)."""
    provider: str
    """Owning provider's name (``ssh``, or ``lima`` which runs over it)."""
    state: SandboxState
    """Lifecycle state."""
    spec: SandboxSpec
    """The spec it was created from."""
    created_at: float
    """Creation time, seconds since the epoch."""
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

    def info(self) -> SandboxInfo:
        """The public view."""
        return SandboxInfo(self.id, self.provider, self.state, self.spec, self.created_at)


class SshRecords:
    """Records as JSON files under the provider's state dir."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sandbox_id: str) -> Path:
        """The record file of ``sandbox_id`` (which must look like an id: no path tricks)."""
        if not _ID.fullmatch(sandbox_id):
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}: not a sandbox id")
        return self.root / f"{sandbox_id}.json"

    def load(self, sandbox_id: str) -> SshRecord:
        """The record; :class:`SandboxNotFound` when gone."""
        path = self.path(sandbox_id)
        try:
            return SshRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise SandboxNotFound(f"no sandbox {sandbox_id} under {self.root}") from None
        except ValidationError as exc:
            raise ProviderError(f"corrupt sandbox record {path}: {exc}") from exc

    def save(self, record: SshRecord) -> None:
        """Write atomically."""
        path = self.path(record.id)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.model_dump(mode="json"), indent=2))
        os.replace(tmp, path)

    def delete(self, sandbox_id: str) -> None:
        """Forget the sandbox."""
        self.path(sandbox_id).unlink(missing_ok=True)

    def all(self) -> list[SshRecord]:
        """Every readable record, oldest first."""
        found = []
        for path in self.root.glob("*.json"):
            try:
                found.append(self.load(path.stem))
            except ProviderError:
                continue
        return sorted(found, key=lambda r: r.created_at)
