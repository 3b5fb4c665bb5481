"""How much of one agent's mail is not read yet: the broker's bound on it.

Retention never removes a message its recipient has not read, and a stopped agent takes no
turn, so mail to it (like mail to the operator) waits unread however much is sent: the rate
limit alone let one agent leave gigabytes a day in the store, for good. An agent's unread
mail to the operator, and to agents (all of them together), each has its own room.
"""

from __future__ import annotations

from hal9999.errors import HiveLimited
from hal9999.store import Store

_TO_OPERATOR = (
    "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM hive_messages"
    " WHERE recipient = 'operator' AND state != 'read' AND sender = ?"
)
_TO_AGENTS = (  # through the inbox index: each agent's unread mail, never all of the mail
    "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM hive_messages"
    " WHERE recipient IN (SELECT name FROM hive_agents) AND state IN ('sent', 'delivered')"
    " AND sender = ?"
)


def check(store: Store, sender: str, *, to_agent: bool, chars: int, cap: int) -> None:
    """HiveLimited when ``sender``'s mail not read yet, to agents or to the operator, would
    hold more than ``cap`` characters (0: no limit) with ``chars`` more."""
    if cap <= 0:
        return
    [row] = store._query(_TO_AGENTS if to_agent else _TO_OPERATOR, (sender,))
    unread = int(row[0])
    if unread + chars > cap:  # no hive event: a retry loop must not grow the store either
        whom = "agents" if to_agent else "the operator"
        reader = "they have (a stopped agent once started)" if to_agent else "the operator has"
        raise HiveLimited(
            f"agent {sender!r} has {unread} characters of messages to {whom} not read yet;"
            f" this one ({chars}) would pass the limit of {cap}",
            hint=f"wait until {reader} read your messages; send less, or write long text to"
            " a file of the workspace and send its path",
        )
