"""Retention: ``hal vacuum`` and the daemon's periodic job.

Removes read messages older than ``keep_messages_days`` (default 30), hive events older
than ``keep_events_days`` (7) and finished turn statistics older than ``keep_turns_days``
(90). A message that is not ``read`` (sent or delivered: the recipient has not had it) and a
turn still open are never removed, however old.
"""

from __future__ import annotations

import asyncio
import logging
import time

from hal9999.hive.settings import HiveSettings
from hal9999.store import Store

logger = logging.getLogger(__name__)

DAY_S = 86400.0

_RULES: tuple[tuple[str, str, str], ...] = (
    ("messages", "hive_messages", "state = 'read' AND created < ?"),
    ("events", "hive_events", "ts < ?"),
    ("turns", "hive_turns", "ended_at IS NOT NULL AND started_at < ?"),
)


def _cutoffs(settings: HiveSettings, now: float) -> dict[str, float]:
    return {
        "messages": now - settings.keep_messages_days * DAY_S,
        "events": now - settings.keep_events_days * DAY_S,
        "turns": now - settings.keep_turns_days * DAY_S,
    }


def vacuum(
    store: Store, settings: HiveSettings, *, dry_run: bool = False, now: float | None = None
) -> dict[str, int]:
    """Remove (or, with ``dry_run``, count) what retention allows; counts by kind."""
    cutoffs = _cutoffs(settings, time.time() if now is None else now)
    counts: dict[str, int] = {}
    if dry_run:
        for kind, table, where in _RULES:
            [row] = store._query(f"SELECT COUNT(*) FROM {table} WHERE {where}", (cutoffs[kind],))
            counts[kind] = int(row[0])
        return counts
    with store._write() as conn:
        for kind, table, where in _RULES:
            counts[kind] = int(
                conn.execute(f"DELETE FROM {table} WHERE {where}", (cutoffs[kind],)).rowcount
            )
    return counts


async def vacuum_forever(store: Store, settings: HiveSettings) -> None:
    """The daemon's job: vacuum every ``vacuum_interval_s`` (first right away)."""
    while True:
        try:
            removed = await asyncio.to_thread(vacuum, store, settings)
            if any(removed.values()):
                logger.info("hive vacuum removed %s", removed)
        except Exception:
            logger.exception("hive vacuum failed; trying again later")
        await asyncio.sleep(settings.vacuum_interval_s)
