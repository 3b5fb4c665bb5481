"""Retention: ``hal vacuum`` and the daemon's periodic job.

Removes, each past its age in ``[hive]``:

- read messages (``keep_messages_days``, 30), and their bodies from the agents' mailbox
  ledgers (an entry a finished turn took keeps only its id and place);
- hive events (``keep_events_days``, 7): every agent, message and thread event;
- finished turn statistics (``keep_turns_days``, 90);
- closed threads (``keep_threads_days``, 30): resolved proposals (and, first, any pin of
  theirs a killed resolve left in the repository), answered or expired questions, delivered
  reminders.

Nothing pending is ever removed, however old: a message that is not ``read`` (sent or
delivered: the recipient has not had it) or that no finished turn took, a turn still open, a
pending proposal, an open question, a reminder not yet due.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from hal9999.hivesettings import HiveSettings
from hal9999.store import Store

logger = logging.getLogger(__name__)

DAY_S = 86400.0

_RULES: tuple[tuple[str, str, str, str], ...] = (
    # (kind, table, what may go, the setting of its age)
    ("messages", "hive_messages", "state = 'read' AND created < ?", "keep_messages_days"),
    ("events", "hive_events", "ts < ?", "keep_events_days"),
    ("turns", "hive_turns", "ended_at IS NOT NULL AND started_at < ?", "keep_turns_days"),
    ("approvals", "hive_approvals", "state != 'pending' AND COALESCE(resolved, created) < ?",
     "keep_threads_days"),
    ("questions", "hive_questions", "state != 'open' AND COALESCE(answered, created) < ?",
     "keep_threads_days"),
    ("reminders", "hive_reminders", "state = 'delivered' AND COALESCE(delivered, due) < ?",
     "keep_threads_days"),
)  # fmt: skip


def vacuum(
    store: Store, settings: HiveSettings, *, home: Path | None = None, dry_run: bool = False,
    now: float | None = None,
) -> dict[str, int]:  # fmt: skip
    """Remove (or, with ``dry_run``, count) what retention allows; counts by kind. With
    ``home``, the agents' mailbox ledgers there are scrubbed too (``ledger_bodies``)."""
    now = time.time() if now is None else now
    cutoffs = {kind: now - getattr(settings, key) * DAY_S for kind, _, _, key in _RULES}
    counts: dict[str, int] = {}
    if dry_run:
        for kind, table, where, _ in _RULES:
            [row] = store._query(f"SELECT COUNT(*) FROM {table} WHERE {where}", (cutoffs[kind],))
            counts[kind] = int(row[0])
    else:
        _unpin_removed(store, cutoffs["approvals"])
        with store._write() as conn:
            for kind, table, where, _ in _RULES:
                removed = conn.execute(f"DELETE FROM {table} WHERE {where}", (cutoffs[kind],))
                counts[kind] = int(removed.rowcount)
    if home is not None:
        counts["ledger_bodies"] = scrub_ledgers(store, home, cutoffs["messages"], dry_run)
    return counts


def _unpin_removed(store: Store, before: float) -> None:
    """Drop the pins of the ``apply`` proposals about to go, first: once its row is gone, a
    pin a killed resolve left is a proposal's the store does not have, which only the
    daemon's next start removes (before the repositories were recorded, nothing did).
    Killed after this, the rows stay and the next run finds nothing left to unpin."""
    from hal9999.hive.approvals import sweep_pins

    where = next(where for kind, _, where, _ in _RULES if kind == "approvals")
    rows = store._query(
        "SELECT DISTINCT json_extract(payload, '$.repo') FROM hive_approvals"
        f" WHERE kind = 'apply' AND {where}",
        (before,),
    )
    for row in rows:
        if row[0]:
            sweep_pins(store, Path(str(row[0])))


def scrub_ledgers(store: Store, home: Path, before: float, dry_run: bool) -> int:
    """Scrub every agent's ledger of the bodies turns took before ``before``; how many."""
    from hal9999.hive.agents import AgentDir
    from hal9999.hive.store import list_agents

    total = 0
    for agent in list_agents(store):
        paths = AgentDir.of(home, agent.name)
        if paths.root.is_dir():
            try:
                total += paths.scrub(before, dry_run=dry_run)
            except OSError as exc:  # one agent's directory must not stop the others'
                logger.warning("hive vacuum: cannot scrub the ledger of %s: %s", agent.name, exc)
    return total


async def vacuum_forever(store: Store, settings: HiveSettings, home: Path | None = None) -> None:
    """The daemon's job: vacuum every ``vacuum_interval_s`` (first right away)."""
    while True:
        try:
            removed = await asyncio.to_thread(vacuum, store, settings, home=home)
            if any(removed.values()):
                logger.info("hive vacuum removed %s", removed)
        except Exception:
            logger.exception("hive vacuum failed; trying again later")
        await asyncio.sleep(settings.vacuum_interval_s)
