"""Where an agent's MCP socket lives and how a run reaches it (lean: no MCP SDK here).

::

    $HAL_HOME/hive/mcp/            0700: no other host user, no sandbox sees it whole
      <agent>/                     bound read-only into that agent's sandboxes only, at /hal-mcp
        mcp.sock                   the daemon's MCP server for <agent> (0666 inside its mount)
        forwarder.py               the stdio <-> socket forwarder the agent CLI starts

Identity is the socket: the daemon serves each agent on its own socket and attributes every
call to the agent whose socket it arrived on; a sandbox sees only its own agent's directory,
so it can neither reach nor name another agent's socket.

A task is a hive agent's when its run directory holds ``mcp.json`` (written by hal on the
host, never visible inside): the runner then binds the agent's directory and hands the preset
an :class:`~hal9999.agents.base.McpServer` running the forwarder.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from hal9999 import fs
from hal9999.agents.base import McpServer
from hal9999.spec import Bind
from hal9999.store import Store

if TYPE_CHECKING:
    from hal9999.providers.base import Sandbox

CHANNEL_TARGET = "/hal-mcp"
"""Where an agent's MCP directory appears inside its sandbox."""
SOCKET_NAME = "mcp.sock"
FORWARDER_NAME = "forwarder.py"
PERL_FORWARDER_NAME = "forwarder.pl"
LAUNCH = (
    'if command -v python3 >/dev/null 2>&1; then exec python3 -I -S "$0/forwarder.py" "$1"; fi\n'
    'exec perl "$0/forwarder.pl" "$1"\n'
)
"""The CLI's MCP command: the python forwarder, or the perl one in an image without python
(hal's container image: perl-base is Essential in Debian, python is not)."""
MARKER = "mcp.json"
"""In a task's run directory: the hive agent the task's runs belong to."""
SERVER_NAME = "hal"
"""The server's key in the agent CLI's config (tools are ``mcp__hal__<tool>``)."""
AGENT_NAME = r"[a-z][a-z0-9-]{0,31}"
"""A hive agent's name (a path component); compiled on first use, through ``re``'s cache:
an ordinary run asks for its task's agent and finds none."""


class McpPaths(NamedTuple):
    """The MCP sockets of one hal home.

    A tuple, and :class:`McpRoute` a plain class, not dataclasses: every in-process ``hal run``
    imports this module, and a dataclass's generated methods are compiled per class."""

    home: Path

    @property
    def root(self) -> Path:
        """The directory of every agent's socket directory."""
        return self.home / "hive" / "mcp"

    def agent_dir(self, agent: str) -> Path:
        """The directory bound into ``agent``'s sandboxes."""
        return self.root / checked_name(agent)

    def socket(self, agent: str) -> Path:
        """``agent``'s MCP socket on the host."""
        return self.agent_dir(agent) / SOCKET_NAME

    def prepare(self, agent: str) -> Path:
        """Create ``agent``'s directory with the forwarder in it; returns the directory."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        directory = self.agent_dir(agent)
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)  # a sandbox runs as its own uid: it must reach the socket
        for name in (FORWARDER_NAME, PERL_FORWARDER_NAME):
            source = Path(__file__).with_name(name).read_bytes()
            fs.write_bytes(directory / name, source, mode=0o644, durable=False)
        return directory


def checked_name(agent: str) -> str:
    """``agent`` if it is a valid agent name (it becomes a path component), else ValueError."""
    if not re.fullmatch(AGENT_NAME, agent):
        raise ValueError(f"not an agent name: {agent!r}")
    return agent


def forward_port(agent: str) -> int:
    """The guest port of ``agent``'s MCP socket in a sandbox whose provider forwards ports
    to host sockets (a microVM): fixed per agent, apart from the gateway's 20000-49999."""
    digest = hashlib.sha256(f"hal-mcp:{agent}".encode()).digest()
    return 50000 + int.from_bytes(digest[:4], "big") % 10000


class McpRoute:
    """One hive agent's way to its MCP server from inside its sandbox."""

    paths: McpPaths
    agent: str
    directory: str
    """Where the agent's directory is seen by commands inside (the bind's target, or where
    a provider that mirrors its binds keeps it: a pod's ``/hal/b<N>``)."""
    target: str
    """What the forwarder connects to inside: the bound socket, or ``tcp:127.0.0.1:PORT``
    where the provider carries the port to the host socket itself."""

    def __init__(
        self,
        paths: McpPaths,
        agent: str,
        directory: str = CHANNEL_TARGET,
        target: str = posixpath.join(CHANNEL_TARGET, SOCKET_NAME),
    ) -> None:
        self.paths = paths
        self.agent = agent
        self.directory = directory
        self.target = target

    async def connect(self, sandbox: Sandbox) -> None:
        """Reach the socket from ``sandbox``: a provider whose shared directories cannot carry
        a unix socket (a microVM) forwards a guest port to it; any other sees it bound, at
        the place its commands see the bind."""
        from hal9999.providers.base import SocketForwarding

        self.directory = sandbox.path(CHANNEL_TARGET)
        self.target = posixpath.join(self.directory, SOCKET_NAME)
        if isinstance(sandbox, SocketForwarding):
            port = forward_port(self.agent)
            await sandbox.forward_socket(port, self.paths.socket(self.agent))
            self.target = f"tcp:127.0.0.1:{port}"

    def bind(self) -> Bind:
        """The agent's own MCP directory, read-only inside."""
        return Bind(source=self.paths.agent_dir(self.agent), target=CHANNEL_TARGET, read_only=True)

    def server(self) -> McpServer:
        """The stdio command the agent CLI starts: a forwarder to the bound socket."""
        return McpServer(
            name=SERVER_NAME, command="sh", args=("-c", LAUNCH, self.directory, self.target)
        )


def attach(run_dir: Path, agent: str) -> None:
    """Mark the task whose run directory is ``run_dir`` as ``agent``'s (host side only)."""
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fs.write_json(run_dir / MARKER, {"agent": checked_name(agent)}, mode=None, durable=False)


def route_for(
    home: Path, run_dir: Path, store: Store | None = None, task_id: str | None = None
) -> McpRoute | None:
    """The MCP route of the task whose run directory is ``run_dir`` (None: not an agent's):
    named by its marker, or else the agent whose long-lived task it is in ``store``."""
    try:
        data = json.loads((run_dir / MARKER).read_text())
        agent = checked_name(str(data["agent"]))
    except (OSError, ValueError, KeyError, TypeError):
        found = _agent_of_task(store, task_id) if store and task_id else None
        if found is None:
            return None
        agent = found
    paths = McpPaths(home)
    if not paths.agent_dir(agent).is_dir():
        paths.prepare(agent)  # the daemon (re)binds the socket when it serves the agent
    return McpRoute(paths, agent)


def _agent_of_task(store: Store, task_id: str) -> str | None:
    # One row read, not every agent's record: every run asks this, and the
    # hive's store module and models are dear for an ordinary `hal run` to import.
    sql = "SELECT name FROM hive_agents WHERE task_id = ? ORDER BY name"
    for row in store._query(sql, (task_id,)):
        if re.fullmatch(AGENT_NAME, row["name"]):
            return str(row["name"])
    return None
