"""``hal run``'s options read without click.

Through a running ``hal serve`` the client only posts the task and prints what comes back
(:mod:`hal9999.cli.daemon_run`), yet click, its command tree and what it imports would be about
a third of the client's start-up before the task is posted; an
in-process run (:mod:`hal9999.cli.run_full`) has no use for them either. This
parser reads the forms click reads the same way without a doubt: long options as
``--name VALUE`` or ``--name=VALUE``, flags, and one PROMPT. Anything else (a short or
unknown option, ``--help``, ``--``, an option given twice, a value that starts with ``-``, a
typed option such as ``--timeout``, a blank name, an argument that is not ASCII, shell
completion) returns None and click parses the command as before; either way the run then
takes the thin client or the full path. ``tests/cli/test_run_argv.py`` parses a table of
command lines with both and compares.
"""

from __future__ import annotations

import os
import sys

from hal9999.runoptions import FLAG, JSON, MULTIPLE, NAME, OPTIONS, VALUE, RunArgs

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from typing import Any


VALUED = {o.flag: o.dest for o in OPTIONS if o.kind in (VALUE, NAME)}
"""Options with one value (click's default type, or ``NAME``)."""
NAMES = frozenset(o.dest for o in OPTIONS if o.kind == NAME)
"""Of those, the ``NAME`` ones: click refuses a blank value (left to it here)."""
MULTIPLES = {o.flag: o.dest for o in OPTIONS if o.kind == MULTIPLE}
"""Options that may be repeated, in order."""
FLAGS = {o.flag: o.dest for o in OPTIONS if o.kind in (FLAG, JSON)}
"""Flags."""
COMPLETE_VAR = "_HAL_COMPLETE"
"""Set by a shell asking click for completions."""


def parse(argv: list[str]) -> dict[str, Any] | None:
    """The ``run`` command's parameters as click passes them (``prompt`` and ``prompt_file``
    unread), or None when click must parse ``argv``."""
    if not all(arg.isascii() for arg in argv):
        return None  # the entry point's UTF-8 check of non-ASCII arguments needs pydantic
    params: dict[str, Any] = {
        "prompt": None, **dict.fromkeys(VALUED.values()), **{k: [] for k in MULTIPLES.values()},
        **dict.fromkeys(FLAGS.values(), False),
    }  # fmt: skip
    seen: set[str] = set()
    rest = iter(argv)
    for arg in rest:
        if not arg.startswith("-") or arg == "-":
            if params["prompt"] is not None:
                return None  # click's "unexpected extra argument"
            params["prompt"] = arg
            continue
        name, equals, value = arg.partition("=")
        if name in FLAGS and not equals:
            params[FLAGS[name]] = True
            continue
        if name not in VALUED and name not in MULTIPLES:
            return None
        if not equals:
            value = next(rest, "")
            if value.startswith("-") and value != "-":
                return None  # click takes it as the value; said plainly only there
            if not value:
                return None  # no value at all, or an empty one: click's to word
        if name in MULTIPLES:
            params[MULTIPLES[name]].append(value)
            continue
        key = VALUED[name]
        if key in seen or (key in NAMES and not value.strip()):
            return None
        seen.add(key)
        params[key] = value
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def run_without_click(argv: list[str]) -> None:
    """Run ``hal run ARGV`` without click when this parser reads its options (then it exits:
    through the daemon's thin client, else the full path, in-process or through the daemon);
    return, with nothing printed, read or sent, when click must run it."""
    if COMPLETE_VAR in os.environ:
        return
    params = parse(argv)
    if params is None:
        return
    from hal9999.cli.daemon_run import plan, run_planned

    prompt, prompt_file = params.pop("prompt"), params.pop("prompt_file")
    args = RunArgs.parsed("", **params)
    try:
        from hal9999.cli.prompt import read_prompt

        # What the click command does, in its order: the prompt, then the thin path or
        # the full one.
        text = read_prompt(prompt, prompt_file, sys.stdin.buffer, optional=bool(args.issue))
        args = args.replace(prompt=text)
        found = plan(args, os.environ)
        if found is not None:
            run_planned(args, found, os.environ)
        from hal9999.cli.run_full import full_run

        full_run(args)
    except (Exception, KeyboardInterrupt) as exc:
        # What hal's click group does with an error of a command: its one line and status.
        from hal9999.cli.app import report_failure

        sys.exit(report_failure(exc, as_json=args.as_json))
    sys.exit(0)  # a detached run returns
