"""The uses of approvals that gate a tool call (the manager's stop and restart): each
approval is carried out once.

A use is claimed (a row of ``hive_gate_uses``, held by this process) in a store transaction
before the action and marked done in another after it: two calls never both carry it out,
and a use, once recorded, is never lost (the store is one file written in transactions, not
a JSON list rewritten by whoever comes last). The gated actions are idempotent (stop an
agent; stop it, then start it), so a use claimed by a process that died on the way (a
daemon killed mid-action) is taken over by the next call, which does the action again: a
kill can delay a use, never spend it without its action.
"""

from __future__ import annotations

import os
import secrets
import time

from hal9999.errors import UsageError
from hal9999.store import Store

HOLDER = f"{os.getpid()}-{secrets.token_hex(4)}"
"""This process, as the holder of the uses it claims (a dead holder's are taken over)."""


def claim(store: Store, approval_id: str) -> None:
    """Claim the use of ``approval_id`` for this process; a clear error when it was carried
    out already or another call of this process is carrying it out."""
    with store._write() as conn:
        row = conn.execute(
            "SELECT holder, state FROM hive_gate_uses WHERE approval_id = ?", (approval_id,)
        ).fetchone()
        if row is not None and row["state"] == "done":
            raise UsageError(f"proposal {approval_id} was carried out already")
        if row is not None and row["holder"] == HOLDER:
            raise UsageError(f"proposal {approval_id} is being carried out",
                             hint="wait for that call to return")  # fmt: skip
        conn.execute(
            "INSERT INTO hive_gate_uses (approval_id, holder, state, updated)"
            " VALUES (?, ?, 'claimed', ?) ON CONFLICT (approval_id) DO UPDATE"
            " SET holder = excluded.holder, updated = excluded.updated",
            (approval_id, HOLDER, time.time()),
        )


def release(store: Store, approval_id: str) -> None:
    """Give up this process's claim (its action failed): the approval may be used again."""
    with store._write() as conn:
        conn.execute(
            "DELETE FROM hive_gate_uses WHERE approval_id = ? AND holder = ? AND state = 'claimed'",
            (approval_id, HOLDER),
        )


def done(store: Store, approval_id: str) -> None:
    """Record that the use of ``approval_id`` was carried out: it is spent."""
    with store._write() as conn:
        conn.execute(
            "UPDATE hive_gate_uses SET state = 'done', updated = ? WHERE approval_id = ?",
            (time.time(), approval_id),
        )
