"""The ``sandboxes`` table's row as a pydantic model.

Its own module: every store mixes in the table (:mod:`hal9999.store.sandboxes`), but only
the daemon's warm pool and recovery read or write its rows, so an in-process ``hal run``
never defines the model.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
from pydantic import BaseModel, ConfigDict

from hal9999.store.records import SandboxState


class SandboxRow(BaseModel):
    """A sandbox the warm pool or a daemon-run task holds, as the store keeps it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    provider: str
    """Provider that owns it."""
    id: str
    """The provider's sandbox id."""
    pool_key: str
    """The pool key of its spec (provider, image, resources, network...)."""
    state: SandboxState
    """Lifecycle state in the pool."""
    task_id: str | None = None
    """The task it is leased to, if any."""
    owner_pid: int | None = None
    """Pid of the daemon that holds it."""
    created_at: float
    """Unix time it was created."""
    last_used_at: float
    """Unix time it was last handed out or returned."""
    detail: str | None = None
    """A short human note (why it was reaped, what failed)."""
