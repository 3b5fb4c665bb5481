"""``hal auth claude login|status|logout``: Claude credentials on the host, for the gateway."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import click

from hal9999 import fs
from hal9999.cli.main import cli, emit_json, run_async
from hal9999.cli.options import TIMEOUT, json_option
from hal9999.config import load_config
from hal9999.errors import CredentialsError, UsageError


@cli.group()
def auth() -> None:
    """Sign in to model vendors; credentials stay on this host (mode 600) and reach the
    vendor only through hal's gateway, never a sandbox."""


@auth.group()
def claude() -> None:
    """Claude credentials for the claude agent (see docs/auth.md)."""


@claude.command()
@click.option("--method", type=click.Choice(["setup-token", "pkce"]), default="setup-token",
              show_default=True, help="setup-token: paste the token `claude setup-token` "
              "prints; pkce: OAuth PKCE with your organisation's OAuth client.")  # fmt: skip
@click.option("--token-stdin", is_flag=True, help="Read the setup token from stdin.")
@click.option("--no-browser", is_flag=True, help="pkce: print the sign-in URL only.")
@click.option("--timeout", type=TIMEOUT, default=300.0, show_default=True,
              help="pkce: seconds to wait for the browser.")  # fmt: skip
def login(method: str, token_stdin: bool, no_browser: bool, timeout: float) -> None:
    """Store Claude credentials for the gateway."""
    from hal9999.auth import claude as auth_claude

    file = auth_claude.CredentialFile(load_config(os.environ).home)
    if method == "setup-token":
        if token_stdin:
            token = sys.stdin.readline()
        elif sys.stdin.isatty():
            click.echo("Run `claude setup-token` (Claude Code, signed in to your Claude plan) "
                       "and paste the token it prints.", err=True)  # fmt: skip
            token = click.prompt("token", hide_input=True, err=True)
        else:
            raise UsageError("no terminal to paste the token into",
                             hint="pipe it in with --token-stdin")  # fmt: skip
        creds = auth_claude.from_setup_token(token)
    else:
        client = auth_claude.OAuthClient.from_env()
        if client is None:
            raise CredentialsError(
                "hal has no OAuth client of its own with Anthropic",
                hint="set HAL_CLAUDE_OAUTH_CLIENT_ID (an OAuth client Anthropic gave your "
                "organisation), or use the default --method setup-token",
            )

        async def show(url: str) -> None:
            click.echo(f"Open this URL to sign in:\n  {url}", err=True)
            if not no_browser:
                import webbrowser

                await asyncio.to_thread(webbrowser.open, url)

        creds = run_async(auth_claude.login_pkce(client, show, timeout_s=timeout))
    file.save(creds)
    days = (creds.expires_at - time.time()) / 86400
    click.echo(f"signed in ({creds.method}); stored in {file.path} (mode 600); "
               f"expires in {days:.1f} days", err=True)  # fmt: skip


@claude.command()
@json_option("Print JSON.")
def status(as_json: bool) -> None:
    """Whether Claude credentials are stored, how obtained, and when they expire."""
    from hal9999.auth import claude as auth_claude

    file = auth_claude.CredentialFile(load_config(os.environ).home)
    creds = file.load()
    if as_json:
        emit_json({"signed_in": creds is not None, "path": str(file.path)}
                  | (auth_claude.describe(creds) if creds else {}))  # fmt: skip
        return
    if creds is None:
        click.echo("not signed in (hal auth claude login)")
        return
    info = auth_claude.describe(creds)
    left = info["expires_in_s"] / 86400
    state = "EXPIRED" if info["expired"] else f"expires in {left:.1f} days"
    renew = "refreshed automatically" if info["refreshable"] else "renew with login"
    click.echo(f"signed in ({info['method']}, {info['scopes'] or 'no scopes'}): {state}, {renew}")


@claude.command("agent-file")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--yes", is_flag=True, help="Accept that the agent can read the credentials.")
def agent_file(path: str, yes: bool) -> None:
    """Write the stored sign-in as Claude Code's own credentials file at PATH (mode 600),
    for use as a [[credentials]] file (target ~/.claude/.credentials.json)."""
    from hal9999.auth import claude as auth_claude

    creds = auth_claude.CredentialFile(load_config(os.environ).home).load()
    if creds is None:
        raise CredentialsError("no Claude credentials stored", hint="run hal auth claude login")
    target = _agent_file_target(path)
    refresh = " for as long as the refresh token lives" if creds.refresh_token else ""
    click.echo(auth_claude.AGENT_FILE_WARNING.format(refresh=refresh), err=True)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("the agent file needs your explicit consent", hint="add --yes")
        click.confirm("write it anyway?", abort=True, err=True)
    try:
        fs.write_text(target, auth_claude.agent_credentials(creds), mode=0o600)
    except OSError as exc:
        raise UsageError(
            f"cannot write {target}: {exc.strerror or exc}", hint="give a path you can write"
        ) from exc
    click.echo(
        f"wrote {target} (mode 600); add to your config:\n  [[credentials]]\n"
        f'  source = "{target}"\n  target = "~/.claude/.credentials.json"',
        err=True,
    )


def _agent_file_target(path: str) -> Path:
    """Where ``agent-file`` may write: a file in an existing directory, new or a Claude
    credentials file already (an empty PATH or a missing directory was a crash report, and
    any existing file, README.md too, was replaced by the credentials without a word)."""
    import json

    if not path.strip():
        raise UsageError("PATH is empty", hint="give the file to write, e.g. ./claude-agent.json")
    target = Path(path).absolute()  # the config line printed must not depend on the cwd
    if not target.parent.is_dir():
        raise UsageError(
            f"{target.parent} is not a directory",
            hint="create it first, or give a path in an existing directory",
        )
    if not os.path.lexists(target):
        return target
    try:
        data = json.loads(target.read_bytes()) if target.stat().st_size < 1 << 20 else None
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or "claudeAiOauth" not in data:
        raise UsageError(
            f"{target} exists and is not a Claude credentials file",
            hint="give a new path, or remove the file first",
        )
    return target


@claude.command()
def logout() -> None:
    """Forget the stored Claude credentials."""
    from hal9999.auth.claude import CredentialFile

    file = CredentialFile(load_config(os.environ).home)
    click.echo("signed out" if file.delete() else "was not signed in")
