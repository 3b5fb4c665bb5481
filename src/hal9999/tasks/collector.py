"""Bringing a run's result back: once its agent exited, or what a run cut short left.

The steps themselves (commit, patch, bundle, bring back) are :mod:`.finish`'s; this piece
decides what the sandbox needs first and records the move to ``collecting``.
"""

from __future__ import annotations

import functools

from hal9999.config import HalConfig
from hal9999.process import pm2inside
from hal9999.providers.base import Provider
from hal9999.tasks import finish
from hal9999.tasks.context import RunContext, Vanished
from hal9999.tasks.recorder import RunRecorder
from hal9999.tasks.state import TaskStatus


class ResultCollector:
    """Collects a run's work from its sandbox and brings it back to the source repository."""

    def __init__(self, config: HalConfig, record: RunRecorder) -> None:
        self.config = config
        self.record = record

    async def collect(self, ctx: RunContext, provider: Provider) -> int:
        """The work of an agent that exited, with nothing of it left running; returns the
        number of files changed."""
        assert ctx.sandbox is not None
        ctx.sandbox = await finish.end_leftovers(provider, ctx.sandbox)
        # The patch is the agent's until this collection's scan clears it: its
        # marker goes in the move's hop (not a hop of its own).
        marker = ctx.session.patch_checked
        unmark = functools.partial(marker.unlink, missing_ok=True)
        then = unmark if ctx.checks_patch else None
        await self.record.transition(ctx, TaskStatus.COLLECTING, then=then)
        return await finish.collect_result(
            ctx, ctx.sandbox, self.record.update, unchecked=then is not None,
            home=self.config.home,
        )  # fmt: skip

    async def leftovers(self, ctx: RunContext, provider: Provider, exc: Exception) -> int:
        """What a run cut short by ``exc`` (its timeout, its disk limit, its agent vanished)
        left, its agent stopped already; returns the number of files changed."""
        # A vanished agent is stopped by nothing else, and where a process outlives its
        # command (a container, a bare ssh host) stopping the process manager ended only
        # the host's side: the sandbox is restarted first, so nothing the agent left
        # running (its environment cleared, in a session of its own) writes on while its
        # work is collected, past the limit that stopped it.
        outlives = ctx.sandbox is not None and pm2inside.hosts_daemons(ctx.sandbox)
        quiet = provider if isinstance(exc, Vanished) or outlives else None
        return await finish.collect_leftovers(
            ctx, self.record.update, quiet=quiet, home=self.config.home
        )
