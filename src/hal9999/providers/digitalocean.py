"""The ``digitalocean`` provider: each sandbox is a droplet made from a golden snapshot.

hal creates the droplet (``POST /v2/droplets``: the snapshot, region, size, the account's
SSH keys, tags ``hal9999``, ``hal9999-<owner>`` and ``hal9999-sb-<sandbox id>``), waits
until it is ``active`` with a public address and answers over SSH, and then runs every
command through the :mod:`ssh <hal9999.providers.ssh>` provider. ``destroy`` deletes it by
its sandbox tag.

Host keys are never learnt: hal makes an ed25519 host key for each droplet and installs it
with the droplet's cloud-init user data (``ssh_keys``), then connects verifying exactly that
key. The ``owner`` tag is random per state directory, so reconcile (on ``list``) deletes
droplets of *this* hal that have no record (a crash between create and record) and never
another installation's. Every machine is counted by the spend cap (:mod:`cloudspend`)
before it is asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from hal9999.errors import (
    CloudApiError,
    CloudNotFound,
    CloudServerError,
    ConfigError,
    ProviderError,
)
from hal9999.providers.cloudapi import RateWindow, RetryPolicy
from hal9999.providers.cloudhost import CloudHostProvider, env_path
from hal9999.providers.cloudspend import SpendCap, SpendLedger
from hal9999.providers.digitalocean_api import API_URL, DigitalOceanApi, Droplet
from hal9999.providers.ssh.config import SshConfig, SshHost
from hal9999.providers.ssh.connections import load_asyncssh
from hal9999.spec import SandboxSpec

logger = logging.getLogger(__name__)
TAG = "hal9999"
TOKEN_VARS = ("HAL_DO_TOKEN", "DIGITALOCEAN_TOKEN")


class DigitalOceanConfig(SpendCap):
    """Settings of the ``digitalocean`` provider (``[providers.digitalocean]``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["digitalocean"] = "digitalocean"
    """Provider kind."""
    api_url: str | None = None
    """The API's base URL (else ``HAL_DO_API_URL``, else DigitalOcean's)."""
    snapshot_id: str | None = None
    """The golden snapshot's id (else ``HAL_DO_SNAPSHOT_ID``); see ``hal image`` docs."""
    region: str = "nyc3"
    """Region slug; the snapshot must be available there."""
    size: str = "s-2vcpu-4gb"
    """Droplet size slug."""
    ssh_keys: tuple[str, ...] = ()
    """Account SSH key ids or fingerprints DigitalOcean installs (for root)."""
    key_file: Path | None = None
    """The private key hal logs in with (else ``HAL_DO_KEY_FILE``); its public half must
    be in ``user``'s authorized_keys (hal's user data adds it)."""
    user: str = "agent"
    """The login user of the golden snapshot."""
    isolation: Literal["disposable", "bwrap"] = "disposable"
    """``disposable``: the droplet is the boundary (deleted with the sandbox); ``bwrap``:
    also bubblewrap inside (the snapshot must have it)."""
    boot_timeout_s: float = Field(default=600.0, gt=0)
    """How long a droplet may take to be active and answer over SSH."""
    poll_s: float = Field(default=3.0, gt=0)
    """How often the droplet's status is read while it boots."""
    api_timeout_s: float = Field(default=30.0, gt=0)
    """Per-call API timeout."""
    api_attempts: int = Field(default=5, ge=1)
    """Tries per API call (429s and, for reads and deletes, 5xx and timeouts)."""


def _token() -> str:
    for name in TOKEN_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise ConfigError(
        "no DigitalOcean API token",
        hint=f"export {TOKEN_VARS[0]} (or {TOKEN_VARS[1]}) with a token of droplet scope",
    )


class DigitalOceanProvider(CloudHostProvider[DigitalOceanApi]):
    """Sandboxes in droplets, one droplet per sandbox, commands over ssh."""

    name = "digitalocean"
    machine = "droplet"
    config_model = DigitalOceanConfig  # type: ignore[assignment]

    def __init__(self, *, state_dir: Path, config: DigitalOceanConfig | None = None) -> None:
        self.do = config or DigitalOceanConfig()
        super().__init__(state_dir=state_dir, config=SshConfig(isolation=self.do.isolation))
        self.ledger = SpendLedger(self.name, state_dir, self.do)
        self._window = RateWindow()

    # -- the API ------------------------------------------------------------------------

    def _api(self) -> DigitalOceanApi:
        policy = RetryPolicy(attempts=self.do.api_attempts, timeout_s=self.do.api_timeout_s)
        url = self.do.api_url or os.environ.get("HAL_DO_API_URL", "").strip() or API_URL
        return DigitalOceanApi(token=_token(), base_url=url, policy=policy, window=self._window)

    def owner_tag(self) -> str:
        """This state directory's tag: reconcile touches only droplets that carry it."""
        return f"{TAG}-{self.owner_id()}"

    def _create_window_s(self) -> float:
        return 2 * self.do.boot_timeout_s + self.do.api_attempts * self.do.api_timeout_s

    @staticmethod
    def sandbox_tag(sandbox_id: str) -> str:
        """The tag naming one sandbox's droplet."""
        return f"{TAG}-sb-{sandbox_id}"

    # -- lifecycle ----------------------------------------------------------------------

    async def acquire_host(self, sandbox_id: str, spec: SandboxSpec) -> SshHost:
        """Reserve under the spend cap, create the droplet with hal's host key, wait until
        it is active and answers over SSH, and say how to reach it."""
        snapshot = self.do.snapshot_id or os.environ.get("HAL_DO_SNAPSHOT_ID", "").strip()
        key_file = self.do.key_file or env_path("HAL_DO_KEY_FILE")
        if not snapshot or key_file is None:
            raise ConfigError(
                "the digitalocean provider needs a snapshot and a login key",
                hint="set HAL_DO_SNAPSHOT_ID and HAL_DO_KEY_FILE (or snapshot_id and key_file "
                "in [providers.digitalocean]); see docs/providers.md for the snapshot",
            )
        asyncssh = load_asyncssh()
        login = asyncssh.read_private_key(str(key_file)).export_public_key().decode().strip()
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        public = host_key.export_public_key().decode().strip()
        body = {
            "name": f"hal-{sandbox_id}", "region": self.do.region, "size": self.do.size,
            "image": int(snapshot) if snapshot.isdigit() else snapshot,
            "ssh_keys": list(self.do.ssh_keys), "ipv6": False, "monitoring": False,
            "tags": [TAG, self.owner_tag(), self.sandbox_tag(sandbox_id)],
            "user_data": user_data(host_key.export_private_key().decode(), public,
                                   login, self.do.user),
        }  # fmt: skip
        await self.ledger.reserve(sandbox_id)
        try:
            api = self._api()
        except BaseException:
            await self.ledger.end(sandbox_id)
            raise
        try:
            droplet = await api.create_droplet(body)
            address = await self._wait_active(api, droplet)
        except BaseException as exc:
            # Whatever the POST did (a 5xx may still have made it), the tag finds it. When
            # even that fails, the spend record stays open and reconcile deletes it later,
            # unless the vendor plainly refused the create (a 4xx: nothing was made).
            try:
                await self._delete(api, sandbox_id)
            except CloudApiError:
                if isinstance(exc, CloudApiError) and not isinstance(exc, CloudServerError):
                    await self.ledger.end(sandbox_id)
            raise
        finally:
            await api.aclose()
        host = SshHost(name=f"hal-{sandbox_id}", address=address, user=self.do.user,
                       key_file=key_file, host_key=public, capacity=1)  # fmt: skip
        try:
            await self._wait_ssh(host, self.do.boot_timeout_s, self.do.poll_s)
        except BaseException:
            await self.release_host(host)
            raise
        return host

    async def _wait_active(self, api: DigitalOceanApi, droplet: Droplet) -> str:
        deadline = time.monotonic() + self.do.boot_timeout_s
        while True:
            address = droplet.public_ipv4()
            if droplet.status == "active" and address:
                return address
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"droplet {droplet.id} is still {droplet.status!r} after "
                    f"{self.do.boot_timeout_s:g}s; it was deleted",
                    hint="check the region's status, or raise boot_timeout_s",
                )
            await asyncio.sleep(self.do.poll_s)
            try:
                droplet = await api.get_droplet(droplet.id)
            except CloudNotFound:
                raise ProviderError(
                    f"droplet {droplet.id} disappeared while it booted",
                    hint="someone or something deleted it; try again",
                ) from None

    async def _live_sandboxes(self, api: DigitalOceanApi) -> set[str]:
        droplets = await api.droplets_tagged(self.owner_tag())
        return {sid for d in droplets if (sid := _sandbox_of(d)) is not None}

    async def _delete_machine(self, api: DigitalOceanApi, sandbox_id: str) -> None:
        try:
            await api.delete_tagged(self.sandbox_tag(sandbox_id))
        except CloudNotFound:
            pass  # nothing carries the tag: already gone


def user_data(private: str, public: str, login: str, user: str) -> str:
    """cloud-init user data: hal's host key for sshd and its login key for ``user``.

    JSON is YAML, so the ``#cloud-config`` document is written with :mod:`json` (no
    quoting of keys by hand).
    """
    config: dict[str, Any] = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": private, "ed25519_public": public},
        "write_files": [{
            "path": f"/home/{user}/.ssh/authorized_keys", "content": login + "\n",
            "owner": f"{user}:{user}", "permissions": "0600", "append": True, "defer": True,
        }],
    }  # fmt: skip
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def _sandbox_of(droplet: Droplet) -> str | None:
    prefix = f"{TAG}-sb-"
    for tag in droplet.tags:
        if tag.startswith(prefix):
            return tag.removeprefix(prefix)
    return None
