"""Agents run from a command template, and the launch plumbing every preset shares.

Every agent command runs through one fixed POSIX shell launcher (:data:`LAUNCH_SCRIPT`), given
as an :class:`~hal9999.spec.ArgvCommand` ``sh -c LAUNCH_SCRIPT hal-agent PROGRAM ARGS...``
(``sh``, not bash: dash starts in about half of bash's CPU time, on every task's path, and
every image has one). The script text never changes; everything variable reaches
it as exact argv elements or through the environment, so nothing is ever quoted into a shell
line. It

* feeds the prompt file to the agent on stdin (never a terminal or an open pipe: Codex and
  Gemini read stdin when it is not a TTY and would wait on it forever),
* replaces ``{{prompt}}`` inside argv elements with the prompt text when ``HAL_PROMPT_MARK``
  is set (templates only; presets read the prompt from stdin or a file), so the prompt never
  travels through a process manager's command line, where size limits apply (tmux's are
  ~16 KiB),
* copies the API key from the host variable the user named (forwarded under its own name via
  ``AgentLaunch.secret_env``) to the variable names the agent reads, when they differ,
* starts the LLM gateway's forwarder on ``127.0.0.1:$HAL_GATEWAY_PORT`` when set (the key the
  agent then holds is the task's placeholder token; see :mod:`hal9999.gateway`), and with
  ``HAL_EGRESS_PORT`` the egress proxy too, named in ``HTTPS_PROXY``/``HTTP_PROXY`` with the
  token as its password (built here, at exec time: the token is in no stored command).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence

from hal9999.agents.base import AgentContext, AgentLaunch, AgentSettings, OutputParser
from hal9999.agents.parsing import PlainTextParser
from hal9999.errors import ConfigError, UsageError
from hal9999.spec import ArgvCommand

PROMPT_MARK = "{{prompt}}"
"""Template placeholder for the prompt text, substituted by the launcher at exec time."""

LAUNCH_SCRIPT = """\
set -eu
if [ -n "${HAL_API_KEY_ENV-}" ]; then
  case $HAL_API_KEY_ENV in  # only a name reaches `eval`
    [0-9]* | *[!A-Za-z0-9_]*)
      printf 'hal: HAL_API_KEY_ENV is not a variable name\\n' >&2
      exit 2
      ;;
  esac
  eval "hal_key=\\${$HAL_API_KEY_ENV-}"
  if [ -n "$hal_key" ]; then
    for hal_name in ${HAL_API_KEY_AS-}; do export "$hal_name=$hal_key"; done
  fi
  unset hal_key hal_name
fi
if [ -n "${HAL_PROMPT_MARK-}" ]; then
  hal_prompt="$(cat -- "$HAL_PROMPT_FILE")"
  hal_left=$#
  while [ "$hal_left" -gt 0 ]; do  # each argument once, rotated to the end substituted
    hal_rest=$1 hal_arg=
    while :; do
      case $hal_rest in
        *"$HAL_PROMPT_MARK"*)
          hal_arg=$hal_arg${hal_rest%%"$HAL_PROMPT_MARK"*}$hal_prompt
          hal_rest=${hal_rest#*"$HAL_PROMPT_MARK"}
          ;;
        *) break ;;
      esac
    done
    shift
    set -- "$@" "$hal_arg$hal_rest"
    hal_left=$((hal_left - 1))
  done
  unset hal_prompt hal_left hal_rest hal_arg
fi
if [ -n "${HAL_GATEWAY_PORT-}" ]; then
  # The LLM gateway's forwarder, in this exec's own network namespace (see hal9999.gateway).
  # Without HAL_GATEWAY_DIR the provider forwards the ports itself (a microVM's ssh).
  hal_forward() {
    if command -v python3 >/dev/null 2>&1; then
      python3 -I -S "$HAL_GATEWAY_DIR/forwarder.py" "$@"
    else  # an image without python (perl-base is Essential)
      perl "$HAL_GATEWAY_DIR/forwarder.pl" "$@"
    fi
  }
  if [ -n "${HAL_EGRESS_PORT-}" ]; then
    hal_proxy="http://hal:${HAL_GATEWAY_TOKEN-}@127.0.0.1:$HAL_EGRESS_PORT"
    export HTTPS_PROXY="$hal_proxy" HTTP_PROXY="$hal_proxy"
    export https_proxy="$hal_proxy" http_proxy="$hal_proxy"
    export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"
    unset hal_proxy
    if [ -n "${HAL_GATEWAY_DIR-}" ]; then
      hal_forward "$HAL_GATEWAY_PORT" "$HAL_GATEWAY_DIR/llm.sock" \\
        "$HAL_EGRESS_PORT" "$HAL_GATEWAY_DIR/egress.sock"
    fi
  elif [ -n "${HAL_GATEWAY_DIR-}" ]; then
    hal_forward "$HAL_GATEWAY_PORT" "$HAL_GATEWAY_DIR/llm.sock"
  fi
  unset -f hal_forward
fi
unset HAL_API_KEY_ENV HAL_API_KEY_AS HAL_PROMPT_MARK
unset HAL_GATEWAY_PORT HAL_GATEWAY_DIR HAL_EGRESS_PORT
if ! command -v -- "$1" >/dev/null 2>&1; then
  printf 'hal: agent program %s is not installed in the sandbox\\n' "$1" >&2
  exit 127
fi
exec "$@" < "$HAL_PROMPT_FILE"
"""
"""The fixed launcher; its inputs are its argv and the ``HAL_*`` variables."""

LAUNCHER_NAME = "hal-agent"
"""``$0`` of the launcher, as ``ps`` shows it."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def home_env(home: str) -> dict[str, str]:
    """HOME and the XDG base directories, all inside the session's home."""
    return {
        "HOME": home,
        "XDG_CONFIG_HOME": posixpath.join(home, ".config"),
        "XDG_DATA_HOME": posixpath.join(home, ".local", "share"),
        "XDG_CACHE_HOME": posixpath.join(home, ".cache"),
        "XDG_STATE_HOME": posixpath.join(home, ".local", "state"),
    }


def effective_settings(base: AgentSettings, override: AgentSettings) -> AgentSettings:
    """``base`` (config) with every field ``override`` (the task) sets taking precedence."""
    return AgentSettings(
        model=override.model or base.model,
        base_url=override.base_url or base.base_url,
        api_key_env=override.api_key_env or base.api_key_env,
        command=override.command or base.command,
        extra_args=override.extra_args or base.extra_args,
    )


def checked_env_name(name: str) -> str:
    """``name`` if it is a usable environment variable name, else a ConfigError."""
    if not _ENV_NAME.fullmatch(name):
        raise ConfigError(
            f"api_key_env {name!r} is not an environment variable name",
            hint="give the NAME of the host variable holding the key, e.g. ANTHROPIC_API_KEY",
        )
    return name


def key_forwarding(
    settings: AgentSettings, agent_vars: Iterable[str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Launcher env and ``secret_env`` that hand the key to the agent under ``agent_vars``.

    The host variable is forwarded under its own name; when the agent reads another name,
    the launcher copies the value over at exec time. The value never appears in argv, env
    or files that hal writes.
    """
    if not settings.api_key_env:
        return {}, ()
    source = checked_env_name(settings.api_key_env)
    targets = [name for name in dict.fromkeys(agent_vars) if name != source]
    env = {"HAL_API_KEY_ENV": source, "HAL_API_KEY_AS": " ".join(targets)} if targets else {}
    return env, (source,)


def agent_launch(
    ctx: AgentContext,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    files: Mapping[str, bytes] | None = None,
    secret_env: tuple[str, ...] = (),
    prompt_mark: bool = False,
) -> AgentLaunch:
    """Wrap ``argv`` in the launcher, with HOME/XDG under ``ctx.home`` and the prompt on stdin."""
    launch_env = home_env(ctx.home) | dict(env or {})
    launch_env["HAL_PROMPT_FILE"] = ctx.prompt_file
    if prompt_mark:
        launch_env["HAL_PROMPT_MARK"] = PROMPT_MARK
    command = ArgvCommand(argv=("sh", "-c", LAUNCH_SCRIPT, LAUNCHER_NAME, *argv), cwd=ctx.workspace)
    return AgentLaunch(
        command=command, env=launch_env, files=dict(files or {}), secret_env=secret_env
    )


_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

TEMPLATE_PLACEHOLDERS: dict[str, str] = {
    "prompt": "the prompt text",
    "prompt_file": "a file holding the prompt",
    "workspace": "the repository checkout",
    "task_id": "the task id",
    "home": "the session's home directory",
}
"""Placeholders a command template may use, with what they stand for."""


class TemplateAgent:
    """An agent given as a command line, e.g. ``my-agent --task-file {{prompt_file}}``.

    The template is split with :func:`shlex.split` first and placeholders are substituted
    inside each resulting element, so a value can never add, split or merge arguments.
    ``{{prompt}}`` is replaced by the launcher at exec time (see the module docstring); the
    prompt is also on the command's stdin. Output is treated as plain text.
    """

    name = "custom"
    supports_resume = False
    needs_network = False
    """Unknown: a custom command may work offline, so hal does not warn about it."""

    def __init__(self, template: str, settings: AgentSettings | None = None) -> None:
        self.template = template
        self.settings = settings or AgentSettings()
        if "\x00" in template:  # no argv carries one: each turn's exec would fail
            raise UsageError("the agent template holds a NUL byte", hint=_template_hint())
        try:
            argv = shlex.split(template)
        except ValueError as exc:
            raise UsageError(
                f"cannot parse agent template {template!r}: {exc}",
                hint="quote arguments the way a POSIX shell would",
            ) from exc
        if not argv:
            raise UsageError("the agent template is empty", hint=_template_hint())
        names = [m.group(1) for element in argv for m in _PLACEHOLDER.finditer(element)]
        for name in names:
            if name not in TEMPLATE_PLACEHOLDERS:
                raise UsageError(
                    f"unknown placeholder {{{{{name}}}}} in agent template "
                    f"(known: {_known_placeholders()})",
                    hint=_template_hint(),
                )
        if any("{{" in _PLACEHOLDER.sub("", element) for element in argv):
            raise UsageError(
                f"unterminated placeholder in agent template {template!r}", hint=_template_hint()
            )
        self.argv: tuple[str, ...] = tuple(argv)
        self.uses_prompt = "prompt" in names
        self.program = self.settings.command or argv[0]
        self.install_hint = f"install `{self.program}` in the sandbox image"

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """The template's argv with placeholders filled in, run through the launcher."""
        settings = effective_settings(self.settings, ctx.settings)
        values = {
            "prompt": PROMPT_MARK,
            "prompt_file": ctx.prompt_file,
            "workspace": ctx.workspace,
            "task_id": ctx.task_id,
            "home": ctx.home,
        }
        argv = [_substitute(element, values) for element in self.argv]
        if settings.command:
            argv[0] = settings.command
        argv.extend(settings.extra_args)
        return agent_launch(ctx, argv, prompt_mark=self.uses_prompt)

    def parser(self) -> OutputParser:
        """Plain text: no structured events (the raw output is recorded anyway)."""
        return PlainTextParser()


def _substitute(element: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], element)


def _known_placeholders() -> str:
    return ", ".join("{{" + name + "}}" for name in TEMPLATE_PLACEHOLDERS)


def _template_hint() -> str:
    example = "--agent 'my-agent --task-file {{prompt_file}}'"
    return f"placeholders: {_known_placeholders()}; e.g. {example}"


class PresetAgent(ABC):
    """Constructor and settings handling shared by the built-in presets."""

    name = ""
    default_program = ""
    """The executable's usual name; ``settings.command`` overrides it."""
    install_hint = ""
    supports_resume = False
    needs_network = True
    """Presets call an LLM API, so a sandbox without network leaves them nothing to talk to."""
    tested_version: str | None = None
    """The CLI version hal's end-to-end tests run (``scripts/install-agents.sh`` pins it)."""
    upstream: str | None = None
    """The API the preset talks to by default (through the LLM gateway)."""
    upstream_key_env: str | None = None
    """The host variable holding that API's key by default."""
    model_names_provider = False
    """A ``provider/model`` (other than ``openai/``) without a base URL makes the CLI call
    that provider's own endpoint, which the gateway does not know: the preset goes direct."""

    def gateway_upstream(self, settings: AgentSettings) -> tuple[str, str] | None:
        """The upstream base URL and the host key variable the gateway uses for this
        preset under ``settings`` (None: the preset cannot go through the gateway)."""
        model = settings.model or ""
        if (self.model_names_provider and not settings.base_url and "/" in model
                and not model.startswith("openai/")):  # fmt: skip
            return None
        upstream = settings.base_url or self.upstream
        key_env = settings.api_key_env or self.upstream_key_env
        if upstream is None or key_env is None:
            return None
        return upstream, key_env

    def __init__(self, settings: AgentSettings | None = None) -> None:
        self.settings = settings or AgentSettings()
        self.program = self.settings.command or self.default_program

    def settings_for(self, ctx: AgentContext) -> AgentSettings:
        """The constructor's settings overlaid with those the task sets."""
        return effective_settings(self.settings, ctx.settings)

    def program_for(self, settings: AgentSettings) -> str:
        """The executable to run under ``settings``."""
        return settings.command or self.default_program

    @abstractmethod
    def build(self, ctx: AgentContext) -> AgentLaunch:
        """The command, environment and files that run the task."""

    @abstractmethod
    def parser(self) -> OutputParser:
        """A fresh parser for one run's output."""
