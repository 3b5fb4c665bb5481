"""hal's MCP server in each agent CLI's own configuration (the hive's tools).

Every CLI starts the server as a stdio command inside the sandbox (hal's forwarder to the
agent's own socket, see :mod:`hal9999.hive.mcp.channel`); only the shape of the config differs:

* Claude Code: ``--mcp-config FILE --strict-mcp-config`` (no other server: neither the user's
  nor a repository's ``.mcp.json``) and ``--allowedTools mcp__<name>`` (every tool of that
  server, without a prompt); ``MCP_TOOL_TIMEOUT`` (ms) bounds one call and
  ``ENABLE_TOOL_SEARCH=false`` offers the tools directly (not deferred behind a search).
* Codex: an ``[mcp_servers.<name>]`` table in ``config.toml`` (``command``, ``args``,
  ``startup_timeout_sec``, ``tool_timeout_sec``).
* opencode: ``mcp.<name>`` in its config, ``{"type": "local", "command": [...]}``.
* Gemini CLI: ``mcpServers.<name>`` in ``settings.json`` (``command``, ``args``, ``timeout``
  in ms, ``trust`` so no confirmation is asked).
"""

from __future__ import annotations

import json
from typing import Any

from hal9999.agents.base import McpServer

STARTUP_TIMEOUT_S = 20
"""How long a CLI may wait for the server's handshake (the daemon answers at once)."""


def claude_mcp_json(server: McpServer) -> bytes:
    """The file given to ``claude --mcp-config``."""
    entry = {"type": "stdio", "command": server.command, "args": list(server.args), "env": {}}
    return json.dumps({"mcpServers": {server.name: entry}}, indent=2).encode()


def claude_mcp_args(server: McpServer, config_file: str) -> list[str]:
    """Claude Code's flags for ``server`` (its config written at ``config_file``).

    The ``=`` forms matter: both options take a variable number of values and would eat a
    following argument otherwise."""
    return [
        f"--mcp-config={config_file}",
        "--strict-mcp-config",
        f"--allowedTools=mcp__{server.name}",
    ]


def claude_mcp_env(server: McpServer) -> dict[str, str]:
    """Claude Code's per-call timeout for MCP tools (milliseconds), and its tool search
    off: it would defer the server's tools behind a search round trip, and hal's few
    tools cost less context than that search does."""
    return {"MCP_TOOL_TIMEOUT": str(server.timeout_s * 1000), "ENABLE_TOOL_SEARCH": "false"}


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string once DEL is escaped too.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def codex_mcp_toml(server: McpServer) -> str:
    """The ``[mcp_servers.<name>]`` table for Codex's ``config.toml``."""
    args = ", ".join(_toml_str(arg) for arg in server.args)
    return "\n".join(
        [
            f"[mcp_servers.{server.name}]",
            f"command = {_toml_str(server.command)}",
            f"args = [{args}]",
            f"startup_timeout_sec = {STARTUP_TIMEOUT_S}",
            f"tool_timeout_sec = {server.timeout_s}",
        ]
    )


def opencode_mcp(server: McpServer) -> dict[str, Any]:
    """The ``mcp`` object of opencode's config."""
    command = [server.command, *server.args]
    return {
        server.name: {
            "type": "local",
            "command": command,
            "enabled": True,
            "timeout": server.timeout_s * 1000,
        }
    }


def gemini_mcp(server: McpServer) -> dict[str, Any]:
    """The ``mcpServers`` object of Gemini CLI's ``settings.json``."""
    return {
        server.name: {
            "command": server.command,
            "args": list(server.args),
            "timeout": server.timeout_s * 1000,
            "trust": True,
        }
    }
