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
another installation's. Every machine is counted by the spend cap (:mod:`.spend`)
before it is asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from hal9999.errors import CloudNotFound, ConfigError, ProviderError
from hal9999.providers.cloud.digitalocean_api import DigitalOceanApi, Droplet
from hal9999.providers.cloud.host import CloudHostConfig, CloudHostProvider
from hal9999.providers.ssh.config import SshHost
from hal9999.providers.ssh.connections import load_asyncssh
from hal9999.spec import SandboxSpec

logger = logging.getLogger(__name__)
TAG = "hal9999"


class DigitalOceanConfig(CloudHostConfig):
    """Settings of the ``digitalocean`` provider (``[providers.digitalocean]``); the API,
    snapshot and key fall back to ``HAL_DO_API_URL``, ``HAL_DO_SNAPSHOT_ID`` and
    ``HAL_DO_KEY_FILE``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["digitalocean"] = "digitalocean"
    """Provider kind."""
    region: str = "nyc3"
    """Region slug; the snapshot must be available there."""
    size: str = "s-2vcpu-4gb"
    """Droplet size slug."""
    ssh_keys: tuple[str, ...] = ()
    """Account SSH key ids or fingerprints DigitalOcean installs (for root)."""
    user: str = "agent"
    """The login user of the golden snapshot; the login key's public half goes into its
    authorized_keys by hal's user data."""
    boot_timeout_s: float = Field(default=600.0, gt=0)
    """How long a droplet may take to be active and answer over SSH."""
    poll_s: float = Field(default=3.0, gt=0)
    """How often the droplet's status is read while it boots."""


class DigitalOceanProvider(CloudHostProvider[DigitalOceanApi, DigitalOceanConfig]):
    """Sandboxes in droplets, one droplet per sandbox, commands over ssh."""

    name = "digitalocean"
    machine = "droplet"
    config_model = DigitalOceanConfig  # type: ignore[assignment]
    api_class = DigitalOceanApi
    env_prefix = "HAL_DO"
    token_vars = ("HAL_DO_TOKEN", "DIGITALOCEAN_TOKEN")
    token_missing = (
        "no DigitalOcean API token",
        "export HAL_DO_TOKEN (or DIGITALOCEAN_TOKEN) with a token of droplet scope",
    )

    def __init__(self, *, state_dir: Path, config: DigitalOceanConfig | None = None) -> None:
        super().__init__(state_dir=state_dir, cloud=config or DigitalOceanConfig())

    def owner_tag(self) -> str:
        """This state directory's tag: reconcile touches only droplets that carry it."""
        return f"{TAG}-{self.owner_id()}"

    @staticmethod
    def sandbox_tag(sandbox_id: str) -> str:
        """The tag naming one sandbox's droplet."""
        return f"{TAG}-sb-{sandbox_id}"

    # -- lifecycle ----------------------------------------------------------------------

    async def acquire_host(self, sandbox_id: str, spec: SandboxSpec) -> SshHost:
        """Reserve under the spend cap, create the droplet with hal's host key, wait until
        it is active and answers over SSH, and say how to reach it."""
        snapshot, key_file = self.snapshot_setting(), self.key_file_setting()
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
            "name": f"hal-{sandbox_id}", "region": self.cloud.region, "size": self.cloud.size,
            "image": int(snapshot) if snapshot.isdigit() else snapshot,
            "ssh_keys": list(self.cloud.ssh_keys), "ipv6": False, "monitoring": False,
            "tags": [TAG, self.owner_tag(), self.sandbox_tag(sandbox_id)],
            "user_data": user_data(host_key.export_private_key().decode(), public,
                                   login, self.cloud.user),
        }  # fmt: skip
        # Whatever the POST did, the sandbox's tag finds the droplet to delete on a failure.
        async with self._creating(sandbox_id) as api:
            droplet = await api.create_droplet(body)
            address = await self._wait_active(api, droplet)
        return await self._handover(sandbox_id, address=address, user=self.cloud.user,
                                    key_file=key_file, host_key=public)  # fmt: skip

    async def _wait_active(self, api: DigitalOceanApi, droplet: Droplet) -> str:
        deadline = time.monotonic() + self.cloud.boot_timeout_s
        while True:
            address = droplet.public_ipv4()
            if droplet.status == "active" and address:
                return address
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"droplet {droplet.id} is still {droplet.status!r} after "
                    f"{self.cloud.boot_timeout_s:g}s; it was deleted",
                    hint="check the region's status, or raise boot_timeout_s",
                )
            await asyncio.sleep(self.cloud.poll_s)
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
