"""``hal serve``: one process owning the scheduler, the warm pool and its keeper, the reaper
and the HTTP API (a unix socket, and 127.0.0.1 on a free port, both behind a bearer token).

On start it reconciles what an earlier daemon left (see :mod:`hal9999.tasks.recovery`). On
SIGTERM, SIGINT or SIGHUP it stops accepting work, leaves running agents running in tmux (the next
daemon adopts them), destroys its idle warm sandboxes and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hal9999.app import DaemonParts
from hal9999.children import pidfd_child_watcher
from hal9999.config import HalConfig
from hal9999.dashboard.tls import ListenAddress, listen_address
from hal9999.errors import HalError, TaskNotFound
from hal9999.events.bus import IndexTail
from hal9999.hive import broker
from hal9999.hive import store as hive_store
from hal9999.hive.deadlines import DeadlineLoop
from hal9999.hive.retention import vacuum_forever
from hal9999.home import HalPaths
from hal9999.pool.settings import ProviderSettings
from hal9999.providers.base import Provider
from hal9999.server.runtime import DaemonFiles, DaemonInfo
from hal9999.spec import SandboxSpec
from hal9999.store import TaskRecord
from hal9999.tasks.context import sandbox_spec
from hal9999.tasks.plugins import check_sections
from hal9999.tasks.recovery import Recovery, RecoveryReport
from hal9999.tasks.request import provider_list
from hal9999.tasks.session import Session
from hal9999.tasks.state import TaskStatus

if TYPE_CHECKING:
    from hal9999.hive.mcp.server import McpHub
    from hal9999.hive.store import AgentRecord
    from hal9999.server.listen import HalServer
    from hal9999.server.sse import EventFeed

logger = logging.getLogger(__name__)


class Daemon:
    """Composes the store, task service, pool, scheduler and API of one hal home."""

    def __init__(
        self, config: HalConfig, environ: Mapping[str, str], listen: ListenAddress | None = None
    ) -> None:
        check_sections(config, environ)  # a bad pool variable would fail only a later task
        self.config = config
        self.environ = environ
        self.listen = listen or listen_address(environ)
        """Where else to serve over TLS: ``hal serve --listen``, or else ``HAL_LISTEN``."""
        parts = DaemonParts(config, environ)  # the composition root (hal9999.app)
        self.parts = parts
        self.store, self.service, self.bus = parts.store, parts.service, parts.bus
        self.pool, self.source, self.scheduler = parts.pool, parts.source, parts.scheduler
        self.tasks = parts.tasks
        """The task API every route, the MCP server, the hive and the dashboard call."""
        self.hive_settings, self.hive = parts.hive_settings, parts.hive
        self.hive_api = parts.hive_api
        """What the operator does with the hive: the hive routes call it."""
        self.files = DaemonFiles(config.home)
        self.http: HalServer | None = None
        self.feed: EventFeed | None = None
        """Every event in ``gseq`` order for the event streams (set by :meth:`start`)."""
        self.mcp: McpHub | None = None
        """Each hive agent's MCP socket (set by :meth:`start`)."""
        self.info: DaemonInfo | None = None
        self._tmux_due = 0.0  # monotonic time of the next tmux socket sweep: the first round
        self.recovery = RecoveryReport()
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self._lock: IO[str] | None = None
        self._loops: list[asyncio.Task[None]] = []

    # -- composition -------------------------------------------------------------------
    def provider(self, name: str) -> Provider:
        """The provider ``name``, the one instance this daemon uses."""
        return self.parts.provider(name)

    def settings_of(self, name: str) -> ProviderSettings:
        """The resolved pool settings of provider ``name``."""
        return self.parts.settings_of(name)

    def events_path(self, task_id: str) -> Path | None:
        """The events file of a task (None once it is removed)."""
        try:
            return Session(Path(self.store.get_task(task_id).session_dir)).events
        except TaskNotFound:
            return None

    def provider_limit(self, name: str) -> int:
        """Tasks that may run on provider ``name`` at once."""
        return self.parts.provider_limit(name)

    def default_spec(self, provider: str) -> SandboxSpec:
        """The spec a task on ``provider`` gets by default (what ``hal pool warm`` warms)."""
        template = TaskRecord(
            id="warm",
            prompt="",
            agent="",
            provider=provider,
            process_manager="",
            repo="",
            repo_kind="local",
            branch="",
            status=TaskStatus.QUEUED.value,
            created_at=0,
            session_dir="/",
        )
        session = Session(self.config.home / "pool" / "template")
        return sandbox_spec(self.config, template, session, self.environ)

    def warm_targets(self) -> list[str]:
        """Providers ``hal pool warm`` warms when none is named: the default ones."""
        return provider_list(self.config.default_provider)

    def warm_providers(self) -> list[str]:
        """Providers whose default spec the keeper keeps warm."""
        names = provider_list(self.config.default_provider)
        names += [k for k, v in self.config.pool.items() if isinstance(v, dict)]
        return list(dict.fromkeys(n for n in names if self.settings_of(n).min_warm > 0))

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> DaemonInfo:
        """Take the home's lock, reconcile, listen, and start the background loops."""
        self._lock = self.files.lock()
        self.bus.attach(asyncio.get_running_loop())
        tail = IndexTail(self.store, self.bus, self.events_path)
        first_gseq = await asyncio.to_thread(self.store.last_gseq)
        token = self.files.ensure_token()
        recovery = Recovery(
            self.service, self.pool, self.source, self.provider,
            retries=self.scheduler.settings.max_infra_retries,
        )  # fmt: skip
        from hal9999.process.tmux import share_lazily

        # The runs share one tmux server, started (or adopted) at the first tmux
        # run, with the warm panes; a daemon of another manager starts none.
        share_lazily(HalPaths(self.config.home).run)
        # The tasks the pool's rows name: a run killed with its daemon before its end took
        # the credential files out of its session (its record names no sandbox by then).
        leased = {row.task_id for row in await asyncio.to_thread(self.store.list_sandboxes)}
        self.recovery, adoptions = await recovery.run()
        owed = (leased | set(self.recovery.interrupted)) - {t.id for t, _ in adoptions}
        if self.config.credentials and owed - {None}:
            from hal9999.tasks.deadruns import take_out_credentials

            await take_out_credentials(self.service, (t for t in owed if t is not None))
        await self._sweep_pins()
        await self._sweep_uid_drafts()
        # The server stack is imported here: only `hal serve` pays for Starlette and uvicorn.
        from hal9999.server.app import ServerContext, build_app
        from hal9999.server.listen import HalServer
        from hal9999.server.sse import EventFeed

        self.feed = EventFeed(self.store, self.bus, self.events_path)
        await self.feed.start()
        from hal9999.server.api import build_router

        context = ServerContext.of_daemon(self, token)
        routes = build_router(self, context)
        self.http = HalServer(build_app(context, routes))
        sock = self.files.socket_path()
        # The unix socket is the owner's channel: the JSON API alone (bearer token on every
        # path); browsers reach the dashboard over TCP.
        api_only = build_app(context, routes, dashboard=False)
        await self.http.listen_unix(str(sock), api_only)  # mode 600 from its creation
        port = await self._listen_local()
        await self._listen_elsewhere()
        tls_port = self.listen.port if self.listen is not None else None
        self.info = DaemonInfo(os.getpid(), str(sock), port, self.started_at, tls_port)
        self.files.write_info(self.info)
        for task, adopted in adoptions:
            self.scheduler.carry_on(task, adopted)
        self.start_hive()
        self._loops += [
            asyncio.create_task(self.scheduler.run_forever(), name="scheduler"),
            asyncio.create_task(self.keep(), name="keeper"),
            asyncio.create_task(tail.run(start=first_gseq), name="event-index-tail"),
            asyncio.create_task(self.feed.run(), name="event-feed"),
            # Hive reminders and expiries: due ones left by a stopped daemon fire now.
            asyncio.create_task(DeadlineLoop(self.store).run(), name="hive-deadlines"),
        ]
        from hal9999.server.mcp import hub_for  # the MCP SDK: `hal serve` only

        self.mcp = hub_for(self)
        hub = self.mcp

        async def serve_first(agent: AgentRecord) -> None:
            # A pod lists the sockets to carry once, as its agent starts: the agent's own
            # must be there, not only after the hub's next periodic sync.
            try:
                await hub.ensure(agent.name, manager=agent.kind == "manager", born=agent.created_at)
            except (HalError, OSError, ValueError) as exc:  # as the sync loop: logged
                logger.warning("mcp: %s", exc)

        async def removed(agent: AgentRecord) -> None:
            try:  # not an agent made again under its name since, served meanwhile
                await hub.retire(agent.name, born=agent.created_at)
            except (HalError, OSError, ValueError) as exc:  # the next sync does it again
                logger.warning("mcp: %s", exc)

        self.hive.before_turn = serve_first
        self.hive.after_remove = removed
        self._loops.append(asyncio.create_task(self.mcp.run_forever(), name="mcp"))
        logger.info("hal serve: pid %d, socket %s, port %d", os.getpid(), sock, port)
        return self.info

    async def _sweep_pins(self) -> None:
        """Pins of settled proposals a killed process left in repositories go (before the
        API serves: no propose is under way, so unknown ones go too)."""
        from hal9999.hive.approvals import sweep_pins

        try:
            removed = await asyncio.to_thread(sweep_pins, self.store, unknown=True)
        except (HalError, OSError, sqlite3.Error) as exc:  # a cleanup: never stops the start
            logger.warning("hal serve: removing stale approval pins failed: %s", exc)
            return
        if removed:
            logger.info("hal serve: removed %d stale approval pin(s)", removed)

    async def _sweep_uid_drafts(self) -> None:
        """Uid lock drafts of hals killed inside ``allocate`` go (a root hal only: the
        others allocate no uids)."""
        from hal9999.providers.host import user as sandboxuser

        if sandboxuser.privileged():
            removed = await asyncio.to_thread(sandboxuser.sweep_drafts)
            if removed:
                logger.info("hal serve: removed %d dead hal(s)' uid lock draft(s)", removed)

    def start_hive(self) -> None:
        """Wire the broker and hive events to this daemon; start the turn loop and vacuum."""
        s = self.hive_settings
        broker.limits = broker.BrokerLimits(
            s.rate_per_minute,
            s.loop_messages,
            s.loop_window_s,
            s.unread_to_operator_chars,
            s.unread_to_agents_chars,
        )
        broker.set_waker(self.hive.wake)
        hive_store.set_publisher(self.bus.publish_hive)
        self._loops += [
            asyncio.create_task(self.hive.run_forever(), name="hive"),
            asyncio.create_task(
                vacuum_forever(self.store, s, self.config.home), name="hive-vacuum"
            ),
        ]

    async def _listen_local(self) -> int:
        """Listen on 127.0.0.1 at the port the daemon before had, when it is free (the
        dashboard's open pages and bookmarks carry on), else at a free one; and record it."""
        assert self.http is not None
        wanted = self.files.last_port()
        port = None
        if wanted is not None:
            try:
                port = await self.http.listen_tcp("127.0.0.1", wanted)
            except OSError as exc:  # taken meanwhile: the dashboard moves, and says so
                logger.warning("hal serve: port %d is taken (%s): using another", wanted, exc)
        if port is None:
            port = await self.http.listen_tcp("127.0.0.1", 0)
        try:
            self.files.remember_port(port)
        except OSError as exc:  # the next start picks a free port instead: no reason to stop
            logger.warning("hal serve: cannot record port %d: %s", port, exc)
        return port

    async def _listen_elsewhere(self) -> None:
        """``hal serve --listen``: one more listener, TLS only (see hal9999.dashboard.tls)."""
        from hal9999.dashboard.tls import server_context

        address = self.listen
        if address is not None and self.http is not None:
            context, cert = server_context(self.config.home, address)
            try:
                bound = await self.http.listen_tcp(address.host, address.port, context)
            except OSError as exc:  # a busy port, a host that is not this one or no host
                raise address.cannot_listen(str(exc.strerror or exc)) from exc
            self.listen = address = address.bound(bound)  # port 0: the one the system picked
            logger.warning("hal serve also listens on %s (TLS, certificate %s)", address.url, cert)

    async def keep(self) -> None:
        """The pool keeper and reaper: warm floors, idle timeouts, stuck tasks."""
        interval = self.scheduler.settings.reap_interval_s
        while True:
            try:
                defaults = {name: self.default_spec(name) for name in self.warm_providers()}
                await self.pool.keep_warm(defaults)
                await self.pool.reap_idle()
                await self.scheduler.reap_stuck()
            except (HalError, OSError) as exc:
                logger.warning("keeper: %s", exc)
            await self._sweep_tmux()
            await asyncio.sleep(interval)

    async def _sweep_tmux(self) -> None:
        """Dead entries of the per-user tmux socket directory go (a killed hal's, adopted
        runs', a killed daemon's): at the keeper's first round, then hourly (sooner while a
        pass stops at its bound), in a thread."""
        from hal9999.process import tmuxsweep

        now = time.monotonic()
        if now < self._tmux_due:
            return
        swept = await asyncio.to_thread(tmuxsweep.sweep)
        self._tmux_due = now + (tmuxsweep.SWEEP_SOON if swept.more else tmuxsweep.SWEEP_EVERY)
        if swept.removed:
            logger.info("hal serve: removed %d dead tmux socket entries", swept.removed)

    async def stop(self) -> None:
        """Stop serving; running agents stay in tmux for the next daemon to adopt."""
        if self.feed is not None:
            self.feed.close()  # event streams end, so the listeners close at once
        if self.http is not None:
            await self.http.close()
        broker.set_waker(None)
        hive_store.set_publisher(None)
        for loop in [*self._loops, *self.hive.turns.values()]:
            loop.cancel()
        await asyncio.gather(*self._loops, *self.hive.turns.values(), return_exceptions=True)
        if self.mcp is not None:
            await self.mcp.close_all()
        await self.scheduler.shutdown()
        with contextlib.suppress(HalError, OSError):
            await self.hive.shutdown()  # warm agents' sandboxes
        with contextlib.suppress(HalError, OSError):
            await self.pool.drain()
        await self.pool.close()
        from hal9999.process.tmux import unshare_server

        await unshare_server(HalPaths(self.config.home).run)  # running agents keep it
        if self.info is not None:
            self.files.clear(self.info)
        self.store.close()
        if self._lock is not None:
            self._lock.close()

    async def serve_forever(self, ready: Path | None = None) -> None:
        """Run until SIGTERM, SIGINT or SIGHUP (or a shutdown request)."""
        loop = asyncio.get_running_loop()
        # SIGHUP stops it as SIGTERM does: a foreground daemon's terminal closing, or a `kill
        # -HUP` meant as a reload (it reloads nothing: new settings need a restart), ended it
        # without a line in its log and left its info file behind.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signalled, sig)
        # No waiter thread per subprocess (about nine a task): see children.py.
        with pidfd_child_watcher():
            await self.start()
            if ready is not None:
                ready.write_text(str(os.getpid()))
            try:
                await self.stopping.wait()
            finally:
                await self.stop()

    def _signalled(self, sig: signal.Signals) -> None:
        """Stop on ``sig``, saying so in the log (running agents are left to the next start)."""
        if not self.stopping.is_set():
            logger.info(
                "hal serve: %s received: stopping; running agents keep running and the next "
                "`hal serve` adopts them (it reloads no settings: stop and start it again)",
                sig.name,
            )
        self.stopping.set()

    def status(self, queued: int | None = None) -> dict[str, Any]:
        """What the daemon is doing, for ``hal status`` (``queued``: the count, when the
        caller read it off the event loop)."""
        if queued is None:
            queued = len(self.store.list_tasks(status=[TaskStatus.QUEUED.value]))
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "socket": self.info.socket if self.info else None,
            "port": self.info.port if self.info else None,
            "max_concurrent": self.scheduler.settings.max_concurrent,
            "running": [
                {"id": task_id, "provider": provider}
                for task_id, provider in self.scheduler.placed.items()
            ],
            "queued": queued,
            "started": self.scheduler.started,
            "finished": self.scheduler.finished,
            "requests": self.http.requests if self.http else 0,
            "recovery": vars(self.recovery),
            "pool": self.pool.status(),
        }
