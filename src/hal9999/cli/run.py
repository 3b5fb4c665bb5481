"""``hal run``: hand a prompt to an agent on a repository, in a sandbox.

Its own module so that only ``hal run`` imports what it needs; see :mod:`hal9999.cli.lazy`.
Its options are :data:`hal9999.runoptions.OPTIONS`' rows. Light at import: through a running
``hal serve`` the thin client (:mod:`hal9999.cli.daemon_run`) runs without the config, the
task service or any model; the full path (:mod:`hal9999.cli.run_full`) imports them when it
runs. Both are also taken without click, from :mod:`hal9999.cli.run_argv`, when the options
are plain.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from hal9999.cli import options
from hal9999.cli.main import cli
from hal9999.runoptions import FLAG, JSON, MULTIPLE, NAME, OPTIONS, TYPED, RunArgs, RunOption


def click_option(option: RunOption) -> Callable[[Any], Any]:
    """The click option of one row of the table."""
    if option.kind == JSON:
        return options.json_option(option.help)
    how: dict[str, Any] = {"help": option.help}
    if option.kind == FLAG:
        how["is_flag"] = True
    elif option.kind == MULTIPLE:
        how["multiple"] = True
    elif option.kind == NAME:
        how["type"] = options.NAME
    elif option.kind == TYPED:
        how["type"] = getattr(options, str(option.type))
    if option.default is not None:
        how["default"] = option.default
    return click.option(option.flag, option.dest, **how)


def run(prompt: str | None, **params: Any) -> None:
    """Run PROMPT with a coding agent on a repository, in a sandbox.

    PROMPT ``-`` (or ``--prompt-file -``) reads the prompt from standard input.
    PROVIDER may be a list in priority order (``bwrap,local``): the first fills up to its
    limits and the rest take the overflow (under ``hal serve``)."""
    from hal9999.cli.daemon_run import thin_run
    from hal9999.cli.prompt import read_prompt

    prompt_file = params.pop("prompt_file")
    text = read_prompt(prompt, prompt_file, sys.stdin.buffer, optional=bool(params.get("issue")))
    args = RunArgs(prompt=text, **params)
    if not thin_run(args):
        from hal9999.cli.run_full import full_run

        full_run(args)


for _option in reversed(OPTIONS):
    run = click_option(_option)(run)
run = cli.command(name="run")(click.argument("prompt", required=False)(run))
