"""``hal dashboard``: print a fresh one-time login link to the running daemon's dashboard."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hal9999.cli.main import cli, emit_json
from hal9999.config import load_config
from hal9999.errors import HalError, UsageError
from hal9999.server.runtime import DaemonFiles

if TYPE_CHECKING:
    from hal9999.server.daemon import Daemon


def dashboard_link(home: Path, port: int) -> str:
    """A fresh login link for the dashboard of ``home`` served on 127.0.0.1:``port``."""
    from hal9999.dashboard.auth import login_url

    return login_url(home, f"http://127.0.0.1:{port}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dashboard(as_json: bool) -> None:
    """Print a one-time link that logs a browser in to the dashboard of hal serve."""
    config = load_config()
    info = DaemonFiles(config.home).running()
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
    while daemon.info is None:  # noqa: ASYNC110  (the daemon has no "listening" event to await)
        await asyncio.sleep(0.05)
    if sys.stdout.isatty():
        click.echo(f"dashboard: {dashboard_link(home, daemon.info.port)}")
        if (elsewhere := listen_link(home)) is not None:
            click.echo(f"dashboard over TLS: {elsewhere}")


def use_listen(listen: str | None, cert: str | None, key: str | None) -> None:
    """Check ``hal serve --listen/--tls-cert/--tls-key`` and hand them to the daemon (through
    its environment, so a detached daemon gets them too), with a warning."""
    from hal9999.dashboard.tls import CERT_ENV, KEY_ENV, LISTEN_ENV, parse_listen

    if listen is None:
        if cert or key:
            raise UsageError(
                "--tls-cert and --tls-key need --listen HOST:PORT",
                hint="add --listen, or leave the certificate out",
            )
        return
    host, port = parse_listen(listen)
    if bool(cert) != bool(key):
        raise UsageError("--tls-cert and --tls-key go together", hint="give both, or neither")
    os.environ[LISTEN_ENV] = listen
    if cert and key:
        os.environ[CERT_ENV], os.environ[KEY_ENV] = (
            str(Path(cert).resolve()),
            str(Path(key).resolve()),
        )
    made = "" if cert else " with a self-signed certificate hal makes"
    click.echo(
        f"warning: hal serve will also listen on {host}:{port} over TLS{made}; anyone who "
        "reaches it and holds a login link or the API token controls hal",
        err=True,
    )


def listen_link(home: Path) -> str | None:
    """A login link for the ``--listen`` address, when there is one."""
    from hal9999.dashboard.auth import login_url
    from hal9999.dashboard.tls import listen_address

    address = listen_address(os.environ)
    return login_url(home, address.url) if address is not None else None
