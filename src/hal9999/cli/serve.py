"""``hal serve`` and ``hal status``: run the daemon, and ask what it is doing."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import click

from hal9999.cli.main import app, cli, emit_json
from hal9999.cli.options import json_option
from hal9999.config import load_config
from hal9999.errors import DiskFull, HalError, UsageError, error_class_for_status
from hal9999.pymodule import module_argv
from hal9999.server.runtime import DaemonFiles

if TYPE_CHECKING:
    from hal9999.dashboard.tls import ListenAddress

START_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 10.0
"""How long ``hal status`` waits for the daemon's answer (a few ms when it is well)."""
START_POLL_S = 0.01
"""How often ``--detach`` looks for the daemon's info file: its wait ends this long at
most after the daemon is up (short, since a look is only a read, a ``stat`` and a
``flock``)."""


@cli.command()
@click.option("--detach", is_flag=True, help="Start in the background and return once it is up.")
@click.option("--stop", is_flag=True, help="Stop the running daemon (agents keep running).")
@click.option("--ray", "ray_address", metavar="HOST:PORT",
              help="Ray cluster for the ray provider (sets HAL_RAY_ADDRESS).")  # fmt: skip
@json_option("Print JSON.")
@click.option(
    "--listen", metavar="HOST:PORT", help="Also serve the dashboard and API there, over TLS only."
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate for --listen (default: one hal makes).",
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False),
              help="PEM private key of --tls-cert.")  # fmt: skip
def serve(
    detach: bool,
    stop: bool,
    as_json: bool,
    listen: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    ray_address: str | None = None,
) -> None:
    """Run the daemon: queue, warm pool, reaper and API (unix socket + 127.0.0.1)."""
    if stop and detach:
        raise UsageError(
            "--stop and --detach cannot be combined",
            hint="to restart it: hal serve --stop, then hal serve --detach",
        )
    if ray_address is not None:
        from hal9999.providers.ray.address import check_address

        # The daemon (and a detached one, which inherits it) reads it like the config's.
        os.environ["HAL_RAY_ADDRESS"] = check_address(ray_address)
    config = load_config()
    files = DaemonFiles(config.home)
    if stop:
        _stop(files, as_json)
        return
    running = files.running()
    if running is not None:
        raise HalError(f"hal serve is already running (pid {running.pid})", hint="see `hal status`")
    from hal9999.cli.dashboard import use_listen
    from hal9999.dashboard.tls import listen_address

    address, options = use_listen(listen, tls_cert, tls_key)
    address = address or listen_address(os.environ)  # checked before the daemon starts
    if detach:
        _detach(files, as_json, options, address)
        return
    from hal9999.hive.keys import keyless_agents

    # Said by the daemon itself, before it is ready: a detached one's reach its starter
    # through its log (see _detach).
    for line in keyless_agents(config, os.environ):
        click.echo(f"{WARNING}{line}", err=True)
    # The daemon's own: `hal serve --stop`, `--detach` and `hal status` need none of these.
    import asyncio
    import logging

    from hal9999.cli.app import collect_less_often
    from hal9999.cli.dashboard import announce_when_up
    from hal9999.config import log_level
    from hal9999.credentials import host_log_masker
    from hal9999.redact import configure_logging
    from hal9999.server.daemon import Daemon

    configure_logging(
        host_log_masker(config, os.environ), level=log_level(os.environ, default="INFO")
    )
    logging.getLogger(__name__).info("hal serve starting for %s", config.home)
    collect_less_often()

    async def main() -> None:
        daemon = Daemon(config, os.environ, listen=address)
        announce = asyncio.create_task(announce_when_up(daemon, config.home))
        try:
            await daemon.serve_forever()
        finally:
            announce.cancel()

    asyncio.run(main())


WARNING = "hal: warning: "
"""How the daemon's start begins a line the user who started it must see."""


def _detach(
    files: DaemonFiles, as_json: bool, options: list[str], address: ListenAddress | None
) -> None:
    files.paths.ensure()
    with files.log_file.open("ab") as log:
        start = log.seek(0, os.SEEK_END)  # earlier daemons' lines are not this start's
        proc = subprocess.Popen(
            module_argv("hal9999", "serve", *options),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = files.running()
        if info is not None and info.pid == proc.pid:
            from hal9999.cli.dashboard import dashboard_link, listen_link

            with files.log_file.open("rb") as log:  # the warnings of its start, said there
                log.seek(start)
                for line in log.read().decode(errors="replace").splitlines():
                    if line.startswith(WARNING):
                        click.echo(line, err=True)

            link = dashboard_link(files.paths.home, info.port)
            if address is not None and info.tls_port is not None:
                address = address.bound(info.tls_port)  # --listen HOST:0: the port it got
            elsewhere = listen_link(files.paths.home, address)
            if as_json:
                emit_json({"pid": info.pid, "socket": info.socket, "port": info.port,
                           "dashboard": link, "dashboard_tls": elsewhere,
                           "tls_port": info.tls_port})  # fmt: skip
            else:
                click.echo(f"hal serve: pid {info.pid}, socket {info.socket}, port {info.port}")
                click.echo(f"dashboard (the link works once): {link}")
                if elsewhere is not None:
                    click.echo(f"dashboard over TLS (the link works once): {elsewhere}")
            return
        if proc.poll() is not None:
            break
        time.sleep(START_POLL_S)
    with files.log_file.open("rb") as log:
        log.seek(start)
        tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
    if not tail:
        from hal9999.store.sqlite import no_room

        if no_room(files.paths.home):  # nothing, not even its error, fitted in its log
            raise DiskFull(
                "hal serve did not start: the disk holding hal's home is full",
                hint="free space on the filesystem of HAL_HOME",
            )
    # The daemon's own status (2 for a bad config or --listen), as `hal serve` gives it.
    failed = proc.returncode if proc.returncode is not None and proc.returncode > 0 else 1
    raise error_class_for_status(failed)(
        "hal serve did not start" + (f": {tail[-1].removeprefix('hal: error: ')}" if tail else ""),
        hint=f"see {files.log_file}",
    )


def _stop(files: DaemonFiles, as_json: bool) -> None:
    # The lock's holder, not the info file's pid: a daemon whose info file or socket is
    # gone or garbled is stopped all the same.
    pid = files.holder()
    if pid is None:
        if as_json:
            emit_json({"stopped": None})
        else:
            click.echo("hal serve is not running")
        return
    try:  # held from before the signal, so a reused pid is never waited for
        process: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        process = None
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        if process is not None:
            signal.pidfd_send_signal(process, signal.SIGTERM)
        # "stopped" is said once the process is gone (a script's next check found it still
        # there), waited for on its pidfd: woken at its exit, not at the next of
        # several polls. The daemon lets go of its files before its process ends,
        # so they are checked after (polled only when no pidfd could be had).
        gone = process is None or bool(select.select([process], [], [], START_TIMEOUT_S)[0])
    finally:
        if process is not None:
            os.close(process)
    while files.holder() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if files.holder() is not None or not gone:
        raise HalError(f"hal serve (pid {pid}) did not stop", hint=f"kill {pid}")
    if as_json:
        emit_json({"stopped": pid})
    else:
        click.echo(f"stopped hal serve (pid {pid}); running agents keep running")


@cli.command()
@json_option("Print JSON.")
def status(as_json: bool) -> None:
    """Is the daemon up, and what is it doing? (exit 1 when it is not running)

    ``--json``: ``{"up": false}``, or ``{"up": true, ...}`` with the daemon's own status
    (``GET /v1/status``: its ``running`` is the list of tasks it runs). ``up`` was
    ``running`` once, which the daemon's list of running tasks overwrote: an idle daemon read
    as down to a script testing it."""
    from hal9999.server.client import DaemonUnavailable

    client = app().daemon()
    if client is None:
        if as_json:
            emit_json({"up": False})
        else:
            click.echo("hal serve is not running (start it with `hal serve --detach`)")
        sys.exit(1)
    # Blocking: no event loop for one request. Bounded: the command a stuck daemon's user
    # reaches for (the hints say `hal status`) waited for it without end.
    client.timeout_s = STATUS_TIMEOUT_S
    try:
        data = client.request("GET", "/v1/status")
    except DaemonUnavailable as exc:
        if not isinstance(exc.__cause__, TimeoutError):
            raise
        raise DaemonUnavailable(
            f"the hal daemon (pid {client.info.pid}) did not answer in {STATUS_TIMEOUT_S:g} s",
            hint=f"it may be stuck: stop it with `hal serve --stop` (or kill {client.info.pid})"
            ", then start it with `hal serve --detach`",
        ) from exc
    if as_json:
        emit_json({"up": True, **data})
        return
    click.echo(
        f"hal serve: pid {data['pid']}, up {data['uptime_s']:.0f}s, "
        f"socket {data['socket']}, port {data['port']}"
    )
    from hal9999.cli.dashboard import dashboard_line

    click.echo(dashboard_line(app().config.home, data["port"]))
    running = data["running"]
    click.echo(
        f"tasks: {len(running)} running (limit {data['max_concurrent']}), "
        f"{data['queued']} queued, {data['finished']} finished since start"
    )
    from hal9999.cli.runnotes import upstream_waiting
    from hal9999.home import HalPaths

    paths = HalPaths(app().config.home)
    for item in running:
        click.echo(f"  {item['id']}  on {item['provider']}")
        waiting = upstream_waiting(paths.events_path(item["id"]))
        if waiting is not None:  # a model call held for its upstream: not a hung agent
            click.echo(f"    waiting {waiting}")
    for name, row in data["pool"]["providers"].items():
        states = ", ".join(f"{n} {s}" for s, n in sorted(row["states"].items()))
        click.echo(f"pool {name}: {states} (max {row['max_size']}, {row['policy']})")
