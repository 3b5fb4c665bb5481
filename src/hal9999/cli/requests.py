"""``hal task requests ID [--json]``: the model calls a task made through the LLM gateway."""

from __future__ import annotations

import click

from hal9999.cli.main import app, emit_json
from hal9999.cli.options import json_option
from hal9999.cli.task_group import task


@task.command()
@click.argument("task_id")
@json_option("Print JSON.")
@click.option(
    "--bodies", is_flag=True, help="With --json: each call's stored (masked) request body."
)
def requests(task_id: str, as_json: bool, bodies: bool) -> None:
    """List the model calls of a task (through the LLM gateway): model, status, tokens, cost.
    Request bodies are kept only with ``[gateway] store_bodies = true``, masked."""
    from hal9999.cli.approvals import plain

    a = app()
    found = a.find(task_id)  # the task service only for a task whose runner died
    rows = a.store.gateway_requests(found.id)
    if as_json:
        emit_json([row.model_dump(exclude=set() if bodies else {"body"}) for row in rows])
        return
    if not rows:
        click.echo(f"no model calls through the gateway for task {found.id}")
        return
    click.echo(f"{'#':>4}  {'status':>6}  {'model':<28} {'in':>8} {'out':>7} {'cache':>8} "
               f"{'ms':>8}  {'cost':>9}  error")  # fmt: skip
    for n, row in enumerate(rows, 1):
        model = " ".join(plain(row.model or "-").split())  # a refused call's is the agent's
        cost = f"${row.cost_usd:.4f}" if row.cost_usd is not None else "-"
        cache = row.cache_read_tokens + row.cache_write_tokens
        click.echo(
            f"{n:>4}  {row.status:>6}  {model[:28]:<28} {row.input_tokens:>8} "
            f"{row.output_tokens:>7} {cache:>8} {row.latency_ms:>8.0f}  {cost:>9}  "
            f"{row.error or ''}"
        )
    tokens = sum(row.total_tokens for row in rows)
    priced = [row.cost_usd for row in rows if row.cost_usd is not None]
    total = f"${sum(priced):.4f}" if priced else "unpriced"
    click.echo(f"{len(rows)} calls, {tokens} tokens, {total}")
