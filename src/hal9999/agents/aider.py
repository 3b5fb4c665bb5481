"""aider (``aider --message-file``), plain-text output.

Command (flags from ``aider/args.py``, version 0.86)::

    aider --message-file PROMPT_FILE --yes-always --no-check-update --no-show-release-notes
        --no-analytics --no-auto-commits --no-dirty-commits --no-gitignore --no-pretty
        --no-stream --no-fancy-input --no-detect-urls --no-show-model-warnings
        --input-history-file HOME/.aider.input.history
        --chat-history-file HOME/.aider.chat.history.md
        [--model MODEL] [--openai-api-base URL --edit-format diff] [EXTRA_ARGS...]

Auto-commits are off: hal commits what the agent leaves in the workspace itself, and
aider's commit messages would cost an extra model call. ``--no-gitignore`` stops aider
adding ``.aider*`` to the repository's ``.gitignore``; its history files go to the session
home instead of the workspace, and its repo-map cache (``.aider.tags.cache.v*``, always in
the repository root) is kept out of the result by the checkout's ``.git/info/exclude``.

With a base URL (an OpenAI-compatible endpoint) a bare model name gets litellm's
``openai/`` prefix and the key is handed over as ``OPENAI_API_KEY``; else the key goes under
the variable litellm reads for the model's provider (:data:`MODEL_KEY_VARS`, default
``OPENAI_API_KEY``). A base URL also selects ``--edit-format diff`` (SEARCH/REPLACE
blocks): for a model name aider has no settings for it falls back to ``whole`` (the model
re-sends entire files), which few models served that way do well. ``extra_args`` come
last, so ``["--edit-format", "udiff"]`` there wins.

At start aider downloads litellm's model price list from GitHub unless
``HOME/.aider/caches/model_prices_and_context_window.json`` is younger than a day and not
empty (a failed fetch writes ``{}``, which counts as missing). hal writes a one-entry
placeholder there (:data:`PRICE_CACHE`) so no run makes that download; models litellm knows
keep the prices bundled with it, which ``LITELLM_LOCAL_MODEL_COST_MAP=True`` makes litellm
use instead of its own fetch at import. For a model litellm does not know, aider shows no
cost unless given ``--model-metadata-file``.

The parser reads aider's usage line, ``Tokens: 1.2k sent, 85 received. Cost: $0.01
message, $0.02 session.`` (``Coder.calculate_and_show_tokens_and_cost``; cache figures are
optional and counts over 1000 are rounded by aider), and ``Applied edit to PATH``.
"""

from __future__ import annotations

import json
import math
import posixpath
import re

from hal9999.agents.base import AgentContext, AgentLaunch, AgentSettings, OutputParser
from hal9999.agents.custom import PresetAgent, agent_launch, key_forwarding
from hal9999.agents.parsing import PlainTextParser, as_cost, as_int
from hal9999.events.models import Event, ToolCall, Usage

FLAGS = (
    "--yes-always",
    "--no-check-update",
    "--no-show-release-notes",
    "--no-analytics",
    "--no-auto-commits",
    "--no-dirty-commits",
    "--no-gitignore",
    "--no-pretty",
    "--no-stream",
    "--no-fancy-input",
    "--no-detect-urls",
    "--no-show-model-warnings",
)
"""Non-interactive, no update checks or analytics, no commits, plain output."""

MODEL_KEY_VARS = {
    "anthropic/": "ANTHROPIC_API_KEY",
    "claude-": "ANTHROPIC_API_KEY",
    "gemini/": "GEMINI_API_KEY",
    "openrouter/": "OPENROUTER_API_KEY",
    "deepseek/": "DEEPSEEK_API_KEY",
    "groq/": "GROQ_API_KEY",
    "xai/": "XAI_API_KEY",
}
"""Model-name prefix to the variable litellm reads that provider's key from."""


PRICE_CACHE = ".aider/caches/model_prices_and_context_window.json"
"""aider's price-list cache, relative to HOME."""

PRICE_CACHE_PLACEHOLDER = {
    "hal-placeholder": {
        "comment": "written by hal so aider skips its price-list download; "
        "litellm's bundled prices apply",
        "mode": "chat",
    }
}
"""Non-empty (``{}`` would count as missing) and naming no real model."""

GIT_EXCLUDE = "/.aider.tags.cache.v*/\n"
"""What the checkout's ``.git/info/exclude`` gets: aider's repo-map cache."""


def aider_key_var(settings: AgentSettings) -> str:
    """The variable aider (litellm) will read the API key from."""
    if settings.base_url:
        return "OPENAI_API_KEY"
    model = settings.model or ""
    for prefix, var in MODEL_KEY_VARS.items():
        if model.startswith(prefix):
            return var
    return "OPENAI_API_KEY"


def aider_model(settings: AgentSettings) -> str:
    """The ``--model`` value: with a base URL a bare name is routed to the OpenAI wire API."""
    model = settings.model or ""
    if settings.base_url and "/" not in model:
        return f"openai/{model}"
    return model


class AiderAgent(PresetAgent):
    """Paul Gauthier's aider."""

    name = "aider"
    default_program = "aider"
    install_hint = "pip install aider-chat==0.86.2"
    supports_resume = False
    upstream = "https://api.openai.com/v1"
    upstream_key_env = "OPENAI_API_KEY"

    model_names_provider = True
    tested_version = "0.86.2"

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """One aider message from the prompt file, then exit."""
        settings = self.settings_for(ctx)
        argv = [self.program_for(settings), "--message-file", ctx.prompt_file, *FLAGS]
        argv += ["--input-history-file", posixpath.join(ctx.home, ".aider.input.history")]
        argv += ["--chat-history-file", posixpath.join(ctx.home, ".aider.chat.history.md")]
        if settings.model:
            argv += ["--model", aider_model(settings)]
        if settings.base_url:
            argv += ["--openai-api-base", settings.base_url, "--edit-format", "diff"]
        argv += settings.extra_args
        key_env, secret_env = key_forwarding(settings, [aider_key_var(settings)])
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"} | key_env
        files = {
            posixpath.join(ctx.home, PRICE_CACHE): json.dumps(PRICE_CACHE_PLACEHOLDER).encode(),
            posixpath.join(ctx.workspace, ".git", "info", "exclude"): GIT_EXCLUDE.encode(),
        }
        return agent_launch(ctx, argv, env=env, files=files, secret_env=secret_env)

    def parser(self) -> OutputParser:
        """A parser for aider's usage and edit lines."""
        return AiderOutputParser()


_COUNT = r"(\d+(?:\.\d+)?k?)"
_TOKENS = re.compile(
    rf"^Tokens: {_COUNT} sent(?:, {_COUNT} cache write)?(?:, {_COUNT} cache hit)?,"
    rf" {_COUNT} received\.(?: Cost: \$(\d+(?:\.\d+)?) message, \$(\d+(?:\.\d+)?) session\.)?"
)
_APPLIED = "Applied edit to "
"""How aider's notice of an edit starts (the path follows). Not a pattern: ``(.+?)\\s*$``
took time quadratic in a line's inner whitespace (100 000 spaces: minutes of the
supervisor, the agent blocked on its full pipe meanwhile)."""


def parse_count(text: str | None) -> int:
    """An aider token count (``85``, ``1.2k``, ``12k``) as an integer."""
    if not text:
        return 0
    value = float(text[:-1]) * 1000 if text.endswith("k") else float(text)
    return as_int(round(value) if math.isfinite(value) else value)  # the agent prints it


class AiderOutputParser(PlainTextParser):
    """Turns aider's usage lines into Usage and its edit notices into ToolCalls."""

    def parse_text_line(self, line: str) -> list[Event]:
        """One line of aider's output."""
        text = line.strip()
        match = _TOKENS.match(text)
        if match:
            sent, write, hit, received, message_cost, _session = match.groups()
            return [
                Usage(
                    input_tokens=parse_count(sent),
                    output_tokens=parse_count(received),
                    cache_read_tokens=parse_count(hit),
                    cache_write_tokens=parse_count(write),
                    cost_usd=as_cost(float(message_cost)) if message_cost else None,
                )
            ]
        if text.startswith(_APPLIED) and len(text) > len(_APPLIED):
            return [ToolCall(name="edit", input={"path": text[len(_APPLIED) :]})]
        return []
