"""The request bodies the gateway holds in memory, counted by task, so that an agent opening
many connections cannot exhaust the memory every task's calls share."""

from __future__ import annotations

from collections.abc import Callable

from hal9999.gateway.channel import Grant
from hal9999.gateway.wire import BadRequest

MAX_HELD_BODIES = 256 << 20
"""The request bodies one task's calls may hold in the gateway's memory at once (four of the
largest): past it a call is answered 429 before its body is read, so an agent opening many
connections cannot exhaust the memory every task's calls share."""

MAX_HELD_IN_ALL = 1 << 30
"""The request bodies all tasks' calls may hold in the gateway's memory at once (four tasks
at their share): past it a call is answered 429 before more of its body is read. Each task
had its own share and nothing bounded them together: sixteen tasks' agents held 4 GiB.
Bodies are counted as they arrive (``wire.BODY_PIECE`` at a time), so filling it takes
sending a gigabyte, not heads that declare one."""

GrantOf = Callable[[list[tuple[str, str]], str], tuple[str, Grant | None]]
"""The token a request's headers and target carry, and its grant (None: no grant's)."""


class HeldBodies:
    """The request body one connection holds, counted against its token's share."""

    def __init__(self, grant_of: GrantOf, held: dict[str, int]) -> None:
        self.grant_of = grant_of
        self.held = held
        """Bytes of request bodies read or being read, by token: the gateway's, shared by
        every connection."""
        self.token = ""
        self.size = 0

    def __call__(self, target: str, headers: list[tuple[str, str]], size: int) -> None:
        """Before ``size`` more bytes of a body are read: refuse a body no grant owns, or one
        past its task's share."""
        if not self.size:
            self.token, grant = self.grant_of(headers, target)
            if grant is None:
                raise BadRequest(401, "no valid hal gateway token", "unknown_token")
        held = self.held
        if held.get(self.token, 0) + size > MAX_HELD_BODIES:
            raise BadRequest(429, "this task's calls hold too many request bodies; try again",
                             "too_many_bodies")  # fmt: skip
        if sum(held.values()) + size > MAX_HELD_IN_ALL:
            raise BadRequest(429, "the gateway holds too many request bodies; try again",
                             "too_many_bodies")  # fmt: skip
        held[self.token] = held.get(self.token, 0) + size
        self.size += size

    def release(self) -> None:
        """The request is answered (or gone): its body no longer counts."""
        if self.size:
            left = self.held.get(self.token, 0) - self.size
            if left > 0:
                self.held[self.token] = left
            else:
                self.held.pop(self.token, None)
            self.size = 0
