"""``hal approvals list|show|approve|deny``: the operator's side of the hive's approval queue.

Everything a proposal carries came from an agent (its title, summary, commit messages, diff),
so it is printed with every escape sequence and control character removed, colours too.
"""

from __future__ import annotations

import re
import time
from typing import Any

import click

from hal9999.cli.main import app, cli, emit_json, run_async
from hal9999.cli.options import json_option

_SGR = re.compile(r"\x1b\[[0-9;:]*m")


def plain(text: str) -> str:
    """``text`` with no escape sequence or control character but newline and tab."""
    from hal9999.cli.output import sanitize

    return _SGR.sub("", sanitize(text))


def one_line(text: str) -> str:
    """``text`` (an agent's) on one line: a newline in it printed a line of its choosing,
    such as a forged proposal from another agent in ``hal approvals list``."""
    return " ".join(text.split())


def indented(text: str) -> str:
    """``text`` (an agent's) with its later lines indented under the line that labels it."""
    return text.replace("\n", "\n    ")


def when(ts: float | None) -> str:
    """A unix time as a person reads it (local time), ``-`` for none."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@cli.group()
def approvals() -> None:
    """The hive's approval queue: proposals agents made (spawn, apply a branch, destroy, tool)."""


@approvals.command("list")
@click.option("--all", "show_all", is_flag=True, help="Resolved proposals too, not only pending.")
@json_option("Print JSON.")
def list_(show_all: bool, as_json: bool) -> None:
    """List pending proposals (oldest first)."""
    from hal9999.hive.approvals import list_approvals

    rows = list_approvals(app().store, state=None if show_all else "pending")
    if as_json:
        emit_json([row.model_dump() for row in rows])
        return
    if not rows:
        click.echo("no proposals" + ("" if show_all else " pending"))
        return
    for row in rows:
        expiry = f", expires {when(row.expires)}" if row.state == "pending" and row.expires else ""
        click.echo(plain(f"{row.id}  {row.state:<8} {row.kind:<7} from {row.proposer}: "
                         f"{one_line(row.title)}  ({when(row.created)}{expiry})"))  # fmt: skip


@approvals.command()
@click.argument("approval_id")
@json_option("Print JSON.")
def show(approval_id: str, as_json: bool) -> None:
    """Show a proposal; for an apply, its commits and the unified diff that approval merges."""
    from hal9999.hive.approvals import show as view_of

    view = run_async(view_of(app().store, approval_id))
    if as_json:
        emit_json(view)
        return
    click.echo(plain(_describe(view)))


def _describe(view: dict[str, Any]) -> str:
    approval = view["approval"]
    lines = [
        f"proposal {approval['id']}: {one_line(approval['title'])}",
        f"kind {approval['kind']}, from {approval['proposer']}, {approval['state']}"
        + (f" by {approval['resolved_by']}" if approval["resolved_by"] else ""),
        f"created {when(approval['created'])}, expires {when(approval['expires'])}",
    ]
    if approval["reason"]:
        lines.append(f"reason: {indented(approval['reason'])}")
    payload = approval["payload"]
    if approval["kind"] == "apply":
        lines.append(f"repository {payload['repo']}: {payload['branch']} at "
                     f"{payload['head'][:12]} onto {payload['target']}")  # fmt: skip
        if payload.get("summary"):
            lines.append(f"summary: {indented(payload['summary'])}")
        preview = view.get("preview") or {}
        if preview.get("refused"):
            lines.append(f"approving now would be refused: {preview['refused']}")
        elif preview:
            lines.append(f"approving now: {preview['how']} of {preview['target']}")
        lines += ["", "commits:", view["commits"], "", view["review"]]
        if view["diff_truncated"]:
            lines.append("... (the diff goes on; see it in the repository with git diff "
                         f"{payload['base'][:12]} {payload['head'][:12]})")  # fmt: skip
    else:
        lines += [f"{key}: {indented(str(value))}" for key, value in payload.items()]
    if approval["result"]:
        lines.append(f"result: {approval['result']}")
    return "\n".join(lines)


@approvals.command()
@click.argument("approval_id")
@click.option("--reason", help="Why; the proposing agent receives it.")
@json_option("Print JSON.")
def approve(approval_id: str, reason: str | None, as_json: bool) -> None:
    """Approve a proposal and carry it out (an apply merges the exact commit shown).

    With ``hal serve`` running, the daemon carries it out (a spawn or destroy acts through
    its hive); without, spawn and destroy proposals wait for it."""
    from urllib.parse import quote

    from hal9999.hive.approvals import approve as approve_
    from hal9999.hive.approvals import get as get_approval
    from hal9999.hive.threads import Approval

    a = app()
    client = a.daemon()
    if client is not None:
        # Named in the store's words first: an id that is no path segment ("", "a/b") became
        # a request the daemon could not route ("hal: error: POST /v1/hive/approvals//...").
        approval_id = get_approval(a.store, approval_id).id
        path = f"/v1/hive/approvals/{quote(approval_id, safe='')}/approve"
        data = run_async(client.call("POST", path, {"reason": reason} if reason else {}))
        done = Approval.model_validate(data)
    else:
        done = run_async(approve_(a.store, approval_id, reason=reason))
    if as_json:
        emit_json(done.model_dump())
        return
    result = done.result or {}
    how = f": {result['how']}, {result['target']} now at {str(result['to'])[:12]}" \
        if "how" in result else ""  # fmt: skip
    click.echo(plain(f"approved {done.id} ({one_line(done.title)}){how}"))


@approvals.command()
@click.argument("approval_id")
@click.option("--reason", help="Why; the proposing agent receives it.")
@json_option("Print JSON.")
def deny(approval_id: str, reason: str | None, as_json: bool) -> None:
    """Deny a proposal; the reason reaches the proposing agent."""
    from hal9999.hive.approvals import deny as deny_

    done = deny_(app().store, approval_id, reason=reason or "(no reason given)")
    if as_json:
        emit_json(done.model_dump())
        return
    click.echo(plain(f"denied {done.id} ({one_line(done.title)})"))
