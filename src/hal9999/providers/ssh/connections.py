"""One asyncssh connection per host, opened on first use and reused for every command.

A command on an open connection costs one channel where a new
connection costs a key exchange and authentication (far dearer; see
``tests/providers/test_ssh.py::test_one_connection_per_host_is_reused``). Host keys are
checked against the configured entry only: asyncssh is given that key (or file) and nothing
else, so an unknown or changed key fails the connection; it is never learnt.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar

from hal9999.errors import HostKeyRejected, HostUnreachable, ProviderError, ProviderUnavailable
from hal9999.providers.ssh.config import SshHost

if TYPE_CHECKING:
    import asyncssh

INSTALL_HINT = "pip install 'hal9999[ssh]' (or: uv sync --extra ssh)"


def load_asyncssh() -> Any:
    """The asyncssh module, imported only by the process that opens connections."""
    try:
        import asyncssh
    except ImportError as exc:
        raise ProviderUnavailable("the ssh provider needs asyncssh", hint=INSTALL_HINT) from exc
    return asyncssh


def known_hosts(host: SshHost) -> Any:
    """What asyncssh checks the server's key against: the configured entry, nothing more."""
    asyncssh = load_asyncssh()
    if host.known_hosts is not None:
        try:
            return asyncssh.read_known_hosts(str(host.known_hosts))
        except (OSError, ValueError) as exc:
            raise ProviderError(f"cannot read known_hosts {host.known_hosts}: {exc}") from exc
    assert host.host_key is not None
    try:
        key = asyncssh.import_public_key(host.host_key)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise ProviderError(f"host_key of ssh host {host.name!r} is not a public key") from exc
    return ([key], [], [])


async def connect(
    host: SshHost, *, limit_s: float, keepalive: float
) -> asyncssh.SSHClientConnection:
    """A new connection to ``host``; errors mapped to one clear line each."""
    lib = load_asyncssh()
    where = f"{host.user}@{host.address}:{host.port}"
    if not host.key_file.is_file():  # asyncssh's own words name neither the host nor the key
        # Unreachable, as a host is whose key cannot be offered: another host is tried.
        raise HostUnreachable(
            f"the key_file of ssh host {host.name!r}, {host.key_file}, is not a readable file",
            hint=f"give the private key's path in [[providers.ssh.hosts]] name = {host.name!r}",
        )
    try:
        conn: asyncssh.SSHClientConnection = await lib.connect(
            host.address,
            port=host.port,
            username=host.user,
            client_keys=[str(host.key_file)],
            known_hosts=known_hosts(host),
            # Nothing from ~/.ssh or an agent: exactly the configured key and host entry.
            config=None,
            agent_path=None,
            password=None,
            kbdint_auth=False,
            connect_timeout=limit_s,
            keepalive_interval=keepalive,
            keepalive_count_max=3,
        )
        return conn
    except lib.HostKeyNotVerifiable as exc:
        raise HostKeyRejected(
            f"ssh host {host.name!r} ({where}) presented a key that does not match its "
            "configured known-hosts entry; refusing to connect",
            hint="check the host; if its key really changed, update host_key/known_hosts "
            f"under [[providers.ssh.hosts]] name = {host.name!r}",
        ) from exc
    except lib.PermissionDenied as exc:
        raise ProviderError(
            f"ssh host {host.name!r} ({where}) refused the key {host.key_file}",
            hint="add its public key to the user's ~/.ssh/authorized_keys on that host",
        ) from exc
    except TimeoutError as exc:  # its text is empty
        raise HostUnreachable(
            f"cannot reach ssh host {host.name!r} ({where}): no answer within {limit_s:g} s",
            hint="is sshd running there, and the port right?",
        ) from exc
    except (OSError, lib.Error) as exc:
        raise HostUnreachable(
            f"cannot reach ssh host {host.name!r} ({where}): {exc or type(exc).__name__}"
        ) from exc


class ConnectionPool:
    """Open connections by host name; a lost one is opened again on next use."""

    live: ClassVar[set[ConnectionPool]] = set()
    """Every pool with open connections (held here so a dropped provider's connections are
    still closed by :func:`close_all`, not left to the garbage collector)."""

    def __init__(self, *, timeout: float, keepalive: float) -> None:
        self.timeout = timeout
        self.keepalive = keepalive
        self._open: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.opened = 0
        """Connections opened so far (for tests and ``hal pool status``)."""

    async def get(self, host: SshHost) -> asyncssh.SSHClientConnection:
        """The open connection to ``host``, connecting once if there is none."""
        lock = self._locks.setdefault(host.name, asyncio.Lock())
        async with lock:
            conn = self._open.get(host.name)
            if conn is not None and not _closed(conn):
                return conn
            conn = await connect(host, limit_s=self.timeout, keepalive=self.keepalive)
            self.opened += 1
            self._open[host.name] = conn
            ConnectionPool.live.add(self)
            return conn

    def forget(self, host: SshHost) -> None:
        """Drop a connection that failed under a command (the next use reconnects)."""
        self.forget_name(host.name)

    def forget_name(self, name: str, *, force: bool = False) -> None:
        """Drop the connection to the host called ``name`` once it is closed (other commands
        may still be using a live one), or at once with ``force`` (its host is gone)."""
        conn = self._open.get(name)
        if conn is not None and (force or _closed(conn)):
            del self._open[name]
            conn.abort()

    async def close(self) -> None:
        """Close every connection."""
        conns, self._open = list(self._open.values()), {}
        ConnectionPool.live.discard(self)
        for conn in conns:
            conn.close()
            await conn.wait_closed()


async def close_all() -> None:
    """Close every connection of every pool in this process."""
    for pool in list(ConnectionPool.live):
        await pool.close()


def _closed(conn: asyncssh.SSHClientConnection) -> bool:
    return bool(conn.is_closed())
