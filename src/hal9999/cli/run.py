"""``hal run``: hand a prompt to an agent on a repository, in a sandbox.

Its own module so that only ``hal run`` imports what it needs; see :mod:`hal9999.cli.lazy`.
Light at import: through a running ``hal serve`` the thin client
(:mod:`hal9999.cli.daemon_run`) runs without the config, the task service or any model;
the full path (:mod:`hal9999.cli.run_full`) imports them when it runs. Both are also taken
without click, from :mod:`hal9999.cli.run_argv`, when the options are plain.
"""

from __future__ import annotations

import sys

import click

from hal9999.cli.daemon_run import RunArgs
from hal9999.cli.main import cli
from hal9999.cli.options import (
    MAX_COST,
    MAX_TOKENS_OPTION,
    NAME,
    PRIORITY,
    RETRIES,
    TIMEOUT,
    json_option,
)


@cli.command()
@click.argument("prompt", required=False)
@click.option("--prompt-file", help="Read the prompt from this file ('-': standard input).")
@click.option("--repo", help="Repository path or git URL (default: the current repository).")
@click.option("--ref", help="Branch, tag or commit to start from (default: the repo's HEAD).")
@click.option(
    "--agent", type=NAME, help="Agent preset name or a command template with {{prompt_file}} etc."
)
@click.option("--provider", type=NAME, help="Sandbox provider (default from config: bwrap).")
@click.option("--process-manager", type=NAME, help="tmux (default) or direct.")
@click.option("--timeout", type=TIMEOUT, help="Seconds before the task is stopped as timed out.")
@click.option(
    "--env",
    "env",
    multiple=True,
    help="NAME forwards a host variable (masked when it looks like a secret); NAME=VALUE "
    "sets one (configuration, never masked).",
)
@click.option(
    "--secret",
    "secret",
    multiple=True,
    help="NAME: forward a host variable as a secret (masked in every log and event).",
)
@click.option("--raw", is_flag=True, help="Show the agent CLI's own output (sanitised).")
@click.option("--events", "as_events", is_flag=True, help="Print hal's events as JSON lines.")
@click.option("--detach", is_flag=True, help="Return at once; the task runs in the background.")
@click.option(
    "--priority",
    type=PRIORITY,
    default=0,
    help="Queue order under hal serve: higher first (default 0; a negative one waits).",
)
@click.option("--retries", type=RETRIES, default=0, help="Retry an agent failure up to N times.")
@click.option("--max-cost", type=MAX_COST, help="Budget of the task in USD.")
@click.option(
    "--max-tokens", type=MAX_TOKENS_OPTION, help="Budget of the task in tokens (up to 10^12)."
)
@click.option(
    "--egress",
    multiple=True,
    help="HOST[:PORT] or *.DOMAIN the task may reach through the egress proxy (repeatable).",
)
@click.option(
    "--egress-only",
    multiple=True,
    help="Narrow egress: only these of the hosts config allows (repeatable; 'none' for none).",
)
@json_option("Print JSON instead of text.")
def run(
    prompt: str | None,
    prompt_file: str | None,
    repo: str | None,
    ref: str | None,
    agent: str | None,
    provider: str | None,
    process_manager: str | None,
    timeout: float | None,
    env: tuple[str, ...],
    secret: tuple[str, ...],
    raw: bool,
    as_events: bool,
    detach: bool,
    priority: int,
    retries: int,
    max_cost: float | None,
    max_tokens: int | None,
    egress: tuple[str, ...],
    egress_only: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run PROMPT with a coding agent on a repository, in a sandbox.

    PROMPT ``-`` (or ``--prompt-file -``) reads the prompt from standard input.
    PROVIDER may be a list in priority order (``bwrap,local``): the first fills up to its
    limits and the rest take the overflow (under ``hal serve``)."""
    from hal9999.cli.daemon_run import thin_run
    from hal9999.cli.prompt import read_prompt

    prompt = read_prompt(prompt, prompt_file, sys.stdin.buffer)
    args = RunArgs(
        prompt, repo, ref, agent, provider, process_manager, timeout, env, secret, raw,
        as_events, detach, priority, retries, max_cost, max_tokens, egress, egress_only, as_json,
    )  # fmt: skip
    if not thin_run(args):
        from hal9999.cli.run_full import full_run

        full_run(args)
