"""``hal dashboard``: print a fresh one-time login link to the running daemon's dashboard."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hal9999.cli.main import cli, emit_json
from hal9999.cli.options import json_option
from hal9999.config import load_config
from hal9999.errors import HalError, UsageError
from hal9999.server.runtime import DaemonFiles

if TYPE_CHECKING:
    from hal9999.dashboard.tls import ListenAddress
    from hal9999.server.daemon import Daemon


def dashboard_link(home: Path, port: int) -> str:
    """A fresh login link for the dashboard of ``home`` served on 127.0.0.1:``port``."""
    from hal9999.dashboard.auth import login_url

    return login_url(home, f"http://127.0.0.1:{port}")


def dashboard_line(home: Path, port: int) -> str:
    """``hal status``'s dashboard line: a login link on a terminal; elsewhere (a log, a
    pipe) only the address and how to get a link, which is a credential."""
    if sys.stdout.isatty():
        return f"dashboard (the link works once, for 15 minutes): {dashboard_link(home, port)}"
    return f"dashboard: http://127.0.0.1:{port}/ (`hal dashboard` prints a login link)"


@cli.command()
@json_option("Print JSON.")
def dashboard(as_json: bool) -> None:
    """Print a one-time link that logs a browser in to the dashboard of hal serve."""
    config = load_config()
    files = DaemonFiles(config.home)
    files.paths.ensure()  # a home that is a file is named here, not a crash in running()
    info = files.running()
    if info is None:
        raise HalError(
            "the dashboard is served by hal serve, which is not running",
            hint="start it with `hal serve --detach`",
        )
    link = dashboard_link(config.home, info.port)
    if as_json:
        emit_json({"url": link, "port": info.port})
    else:
        click.echo(f"dashboard (the link works once, for 15 minutes): {link}")


async def announce_when_up(daemon: Daemon, home: Path) -> None:
    """Print the login link once ``daemon`` listens (only to a terminal: the link is a
    credential and must not end up in a log file)."""
    import asyncio  # the daemon's: `hal serve --detach` imports this module for its links

    while daemon.info is None:  # noqa: ASYNC110  (the daemon has no "listening" event to await)
        await asyncio.sleep(0.05)
    if sys.stdout.isatty():
        click.echo(f"dashboard: {dashboard_link(home, daemon.info.port)}")
        if (elsewhere := listen_link(home, daemon.listen)) is not None:
            click.echo(f"dashboard over TLS: {elsewhere}")


def use_listen(
    listen: str | None, cert: str | None, key: str | None
) -> tuple[ListenAddress | None, list[str]]:
    """Check ``hal serve --listen/--tls-cert/--tls-key``, with a warning: the address they
    give (None without ``--listen``: then ``HAL_LISTEN`` may give one) and the same options
    for a detached daemon."""
    from hal9999.dashboard.tls import listen_option

    if listen is None:
        if cert or key:
            raise UsageError(
                "--tls-cert and --tls-key need --listen HOST:PORT",
                hint="add --listen, or leave the certificate out",
            )
        return None, []
    address = listen_option(listen, cert, key, os.environ)
    made = "" if address.cert else " with a self-signed certificate hal makes"
    click.echo(
        f"warning: hal serve will also listen on {address.host}:{address.port} over TLS{made}; "
        "anyone who reaches it and holds a login link or the API token controls hal",
        err=True,
    )
    options = ["--listen", listen]
    if cert and key:
        options += ["--tls-cert", str(Path(cert).resolve()), "--tls-key", str(Path(key).resolve())]
    return address, options


def listen_link(home: Path, address: ListenAddress | None) -> str | None:
    """A login link for the ``--listen`` (or ``HAL_LISTEN``) address, when there is one."""
    from hal9999.dashboard.auth import login_url

    return login_url(home, address.url) if address is not None else None
