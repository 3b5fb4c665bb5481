"""Settings of the ``ssh`` provider: the hosts it may use and how the agent is isolated there."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})")
"""A DNS (or /etc/hosts) name: what ``address`` holds when it is not an IP address."""


def check_address(address: str) -> str:
    """``address`` when it is a host name or a bare IP address; else a ValueError naming
    the form it looks like and where its parts go (``user``, ``port``).

    It reaches the ``ssh`` argv of ``hal attach`` and the known_hosts line hal writes, so a
    leading ``-``, white space or a second field is refused here, not passed along."""
    if not address:
        raise ValueError("address is empty: give a host name or IP address")
    if address.startswith("-"):
        raise ValueError("address starts with '-': give a host name or IP address")
    if "@" in address:
        raise ValueError('address holds a user@: give the login user as user = "..."')
    if address.startswith("["):
        raise ValueError("write an IPv6 address without brackets; the port goes in port = N")
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    if ":" in address and address.count(":") == 1:
        raise ValueError("address holds a :port: give the port as port = N")
    if not _HOST_NAME.fullmatch(address):
        raise ValueError(
            "address is not a host name or IP address (letters, digits, '.', '-', '_' only)"
        )
    return address


class SshHost(BaseModel):
    """One ``[[providers.ssh.hosts]]`` entry."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    """What hal calls the host (in records, ``hal pool status``)."""
    address: str
    """Host name or IP address."""
    port: int = Field(default=22, ge=1, le=65535)
    """SSH port."""
    user: str
    """Login user."""
    key_file: Path
    """The private key hal logs in with (no passphrase; keep it mode 600)."""
    host_key: str | None = None
    """The host's public key (``ssh-ed25519 AAAA...``): the known-hosts entry to verify."""
    known_hosts: Path | None = None
    """Or a known_hosts file holding the host's entry (``[address]:port`` when not 22)."""
    capacity: int = Field(default=4, ge=1)
    """Sandboxes hal places on this host at once."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: Path) -> Path:
        # An empty string is Path("."): asyncssh then read the working directory as a key.
        if str(value) in ("", "."):
            raise ValueError("key_file is empty: give the path of the private key hal logs in with")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        # The login name goes after ``-l`` in ``hal attach``'s ssh argv and to sshd as is.
        if not value or value.startswith("-") or not value.isprintable() or " " in value:
            raise ValueError(
                "user must be a login name: not empty, no leading '-', no spaces or "
                "control characters"
            )
        return value

    @model_validator(mode="after")
    def _one_known_host(self) -> SshHost:
        # A host key is never accepted on first sight: one of the two must say what it is.
        if (self.host_key is None) == (self.known_hosts is None):
            raise ValueError("give exactly one of host_key or known_hosts (never auto-accepted)")
        return self


class SshConfig(BaseModel):
    """Settings of the ``ssh`` provider."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ssh"] = "ssh"
    """Provider kind."""
    hosts: tuple[SshHost, ...] = ()
    """The hosts sandboxes are placed on, in order, up to each one's capacity."""
    isolation: Literal["bwrap", "disposable", "none"] = "bwrap"
    """``bwrap``: every command runs in bubblewrap on the host (as locally). ``disposable``:
    the host is a machine destroyed after the task (commands run as the login user).
    ``none``: bare on a host that is neither; only with ``allow_bare_shared_host``."""
    allow_bare_shared_host: bool = False
    """The explicit opt-in ``isolation = "none"`` needs."""
    remote_dir: str = ".hal9999"
    """Where sandbox mirrors live on the host, relative to the login user's HOME."""
    bwrap: str = "bwrap"
    """The bubblewrap program on the remote host."""
    connect_timeout_s: float = 15.0
    """How long a connection attempt may take."""
    keepalive_s: float = 5.0
    """Keepalive interval; three missed answers mark the connection lost."""
    checkpoint_s: float = 60.0
    """How often a running agent's workspace is pulled back to the hal host."""

    @model_validator(mode="after")
    def _bare_needs_opt_in(self) -> SshConfig:
        if self.isolation == "none" and not self.allow_bare_shared_host:
            raise ValueError(
                'isolation = "none" runs agents bare on a shared host: set '
                "allow_bare_shared_host = true to accept that, or use bwrap"
            )
        names = [h.name for h in self.hosts]
        if len(names) != len(set(names)):
            raise ValueError("host names must be unique")
        return self
