"""The one table of ``hal run``'s options, and the light wire request built from it.

Each row is one option: its flag, the parameter name the command gets, how it is parsed,
its ``--help`` line, and the field of the request it fills (``wire``; None for the ones that
only change how this process shows the run). The click command (:mod:`hal9999.cli.run`)
and the click-free parser (:mod:`hal9999.cli.run_argv`) are both made from it, and
:func:`run_wire` turns what they parsed into the request every task API takes: a plain
dictionary with the JSON body's field names, validated once where it is executed (the
daemon, or the local API) by :class:`hal9999.tasks.request.RunRequest`.

Light at import (no :mod:`typing`, no pydantic): a ``hal run`` through a running daemon
builds its request with nothing else loaded.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

VALUE = "value"
"""One value, taken as given."""
NAME = "name"
"""One value that must not be blank (click's ``NAME`` type; refused by the model too)."""
TYPED = "typed"
"""One value of a click type of :mod:`hal9999.cli.options` (``type`` names it)."""
MULTIPLE = "multiple"
"""A value that may be repeated, in order."""
FLAG = "flag"
"""An on/off flag."""
JSON = "json"
"""``--json`` (:func:`hal9999.cli.options.json_option`: a failure is JSON too)."""


class RunOption:
    """One option of ``hal run``."""

    __slots__ = ("default", "dest", "flag", "help", "kind", "to_wire", "type", "wire")

    def __init__(
        self,
        flag: str,
        dest: str,
        kind: str,
        help: str,  # click's word
        *,
        wire: str | None = None,
        type: str | None = None,
        default: object = None,
        to_wire: Callable[[Any], Any] | None = None,
    ) -> None:
        self.flag = flag
        """The long option, e.g. ``--max-cost``."""
        self.dest = dest
        """The parameter's name (an attribute of :class:`RunArgs`)."""
        self.kind = kind
        """How it is parsed: :data:`VALUE`, :data:`NAME`, :data:`TYPED`, ..."""
        self.help = help
        """Its line of ``hal run --help``."""
        self.wire = wire
        """The request field it fills; None: it only changes how the run is shown."""
        self.type = type
        """For :data:`TYPED`: the click type's name in :mod:`hal9999.cli.options`."""
        self.default = default
        """Its value when not given (a :data:`MULTIPLE` is ``()``, a flag ``False``)."""
        self.to_wire = to_wire
        """What the request holds for a parsed value (default: the value; a list for a
        :data:`MULTIPLE`)."""

    def unset(self) -> object:
        """The parameter's value when the option is not given."""
        if self.kind == MULTIPLE:
            return ()
        if self.kind in (FLAG, JSON):
            return False
        return self.default


def _narrowing(hosts: tuple[str, ...]) -> list[str] | None:
    """``--egress-only``: none given is no narrowing; ``none`` is no host at all."""
    return [h for h in hosts if h != "none"] if hosts else None


OPTIONS = (
    RunOption("--prompt-file", "prompt_file", VALUE,
              "Read the prompt from this file ('-': standard input)."),
    RunOption("--repo", "repo", VALUE,
              "Repository path or git URL (default: the current repository).", wire="repo"),
    RunOption("--issue", "issue", VALUE,
              "Work on this issue: github:OWNER/REPO#N, gitlab:GROUP/PROJECT#N or its URL "
              "(its repository is cloned; a PROMPT adds instructions).", wire="issue"),
    RunOption("--ref", "ref", VALUE,
              "Branch, tag or commit to start from (default: the repo's HEAD).", wire="ref"),
    RunOption("--agent", "agent", NAME,
              "Agent preset name or a command template with {{prompt_file}} etc.",
              wire="agent"),
    RunOption("--model", "model", NAME,
              "The agent's model, given to its preset's own model option (a preset only).",
              wire="model"),
    RunOption("--provider", "provider", NAME, "Sandbox provider (default from config: bwrap).",
              wire="provider"),
    RunOption("--process-manager", "process_manager", NAME, "tmux (default) or direct.",
              wire="process_manager"),
    RunOption("--timeout", "timeout", TYPED, "Seconds before the task is stopped as timed out.",
              wire="timeout_s", type="TIMEOUT"),
    RunOption("--env", "env", MULTIPLE,
              "NAME forwards a host variable (masked when it looks like a secret); NAME=VALUE "
              "sets one (configuration, never masked)."),
    RunOption("--secret", "secret", MULTIPLE,
              "NAME: forward a host variable as a secret (masked in every log and event)."),
    RunOption("--raw", "raw", FLAG, "Show the agent CLI's own output (sanitised)."),
    RunOption("--events", "as_events", FLAG, "Print hal's events as JSON lines."),
    RunOption("--detach", "detach", FLAG, "Return at once; the task runs in the background."),
    RunOption("--priority", "priority", TYPED,
              "Queue order under hal serve: higher first (default 0; a negative one waits).",
              wire="priority", type="PRIORITY", default=0),
    RunOption("--retries", "retries", TYPED, "Retry an agent failure up to N times.",
              wire="retries", type="RETRIES", default=0),
    RunOption("--max-cost", "max_cost", TYPED, "Budget of the task in USD.",
              wire="max_cost_usd", type="MAX_COST"),
    RunOption("--max-tokens", "max_tokens", TYPED,
              "Budget of the task in tokens (up to 10^12).", wire="max_tokens",
              type="MAX_TOKENS_OPTION"),
    RunOption("--egress", "egress", MULTIPLE,
              "HOST[:PORT] or *.DOMAIN the task may reach through the egress proxy "
              "(repeatable).", wire="egress"),
    RunOption("--egress-only", "egress_only", MULTIPLE,
              "Narrow egress: only these of the hosts config allows (repeatable; 'none' for "
              "none).", wire="egress_only", to_wire=_narrowing),
    RunOption("--json", "as_json", JSON, "Print JSON instead of text."),
)  # fmt: skip
"""``hal run``'s options, in ``--help``'s order (the PROMPT argument comes first)."""


class RunArgs:
    """``hal run``'s parameters as parsed: ``prompt`` and one attribute per row of
    :data:`OPTIONS` (its ``dest``)."""

    def __init__(self, **params: Any) -> None:
        self.__dict__.update(params)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)

    @classmethod
    def parsed(cls, prompt: str, **given: Any) -> RunArgs:
        """The parameters: ``given`` ones, the table's defaults for the rest."""
        return cls(prompt=prompt, **{**{o.dest: o.unset() for o in OPTIONS}, **given})

    def replace(self, **changes: Any) -> RunArgs:
        """A copy with ``changes``."""
        return RunArgs(**{**self.__dict__, **changes})


DEFAULTED = (
    ("agent", "default_agent"), ("provider", "default_provider"),
    ("process_manager", "process_manager"), ("timeout_s", "timeout_s"),
)  # fmt: skip
"""The request fields a caller's config fills when the option is not given, with its key."""


def run_wire(args: RunArgs, defaults: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """The request of ``args``: each option's field (the ``defaults`` config's value where
    it fills one left unset), and ``fields`` this process worked out (the variables' values,
    its directory, its config)."""
    wire: dict[str, Any] = {"prompt": args.prompt}
    for option in OPTIONS:
        if option.wire is None:
            continue
        value = getattr(args, option.dest)
        if option.to_wire is not None:
            value = option.to_wire(value)
        elif option.kind == MULTIPLE:
            value = list(value)
        wire[option.wire] = value
    for name, key in DEFAULTED:
        if wire[name] is None:
            wire[name] = defaults[key]
    wire.update(fields)
    return wire
