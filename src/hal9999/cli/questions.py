"""``hal questions list|answer``: questions agents asked the operator (and, to override,
those they asked each other). Question text comes from agents: printed sanitised."""

from __future__ import annotations

import click

from hal9999.cli.approvals import plain, when
from hal9999.cli.main import app, cli, emit_json
from hal9999.cli.options import json_option


@cli.group()
def questions() -> None:
    """Questions agents asked: answer them, and the asker's next turn gets the answer."""


@questions.command("list")
@click.option("--all", "show_all", is_flag=True, help="Answered and expired ones too.")
@json_option("Print JSON.")
def list_(show_all: bool, as_json: bool) -> None:
    """List unanswered questions, to the operator and between agents (oldest first)."""
    from hal9999.hive.questions import list_questions

    rows = list_questions(app().store, open_only=not show_all)
    if as_json:
        emit_json([row.model_dump() for row in rows])
        return
    if not rows:
        click.echo("no questions" + ("" if show_all else " waiting"))
        return
    for row in rows:
        to = "you" if row.target == "operator" else row.target
        state = "" if row.state == "open" else f" [{row.state} by {row.answerer}]"
        expiry = f", expires {when(row.expires)}" if row.state == "open" and row.expires else ""
        click.echo(plain(f"{row.id}  {row.asker} -> {to}{state} ({when(row.created)}{expiry}):"))
        click.echo(plain("    " + row.question.replace("\n", "\n    ")))


@questions.command()
@click.argument("question_id")
@click.argument("text")
@json_option("Print JSON.")
def answer(question_id: str, text: str, as_json: bool) -> None:
    """Answer question QUESTION_ID with TEXT (as the operator; for a question between agents
    this overrides its target)."""
    from hal9999.hive.broker import OPERATOR
    from hal9999.hive.questions import answer as answer_

    done = answer_(app().store, question_id, text, answerer=OPERATOR)
    if as_json:
        emit_json(done.model_dump())
        return
    click.echo(plain(f"answered {done.id}; {done.asker} gets it in its next turn"))
