"""The ``morph`` provider: each sandbox is a Morph Cloud instance booted from a snapshot.

hal starts the instance (``POST /instance?snapshot_id=S`` with hal's metadata and a TTL
whose action is ``pause``), owns its readiness (status ``ready``, then an ``/exec`` probe
that must exit 0), and runs every command through the :mod:`ssh <hal9999.providers.ssh>`
provider over Morph's SSH gateway (``ssh_host``; its host key is configured, never
learnt; the login user is the instance id, authenticated by hal's key, which must be
registered with the Morph account). ``stop`` pauses the instance, ``start`` resumes it,
``destroy`` deletes it; ``snapshot`` saves one and ``fork`` boots copies of it. Instances
are found by metadata (``hal9999`` = this state dir's owner id, ``hal9999_sandbox``), so
reconcile deletes this hal's orphans and never another's. The spend cap counts them all.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from hal9999.errors import CloudNotFound, ConfigError, ProviderError, SandboxNotFound
from hal9999.providers.base import Capabilities, fork_all
from hal9999.providers.cloud.host import CloudHostConfig, CloudHostProvider
from hal9999.providers.cloud.morph_api import Instance, MorphApi
from hal9999.providers.ssh.config import SshHost
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.spec import SandboxSpec

logger = logging.getLogger(__name__)
OWNER_KEY, SANDBOX_KEY = "hal9999", "hal9999_sandbox"


class MorphConfig(CloudHostConfig):
    """Settings of the ``morph`` provider (``[providers.morph]``); the API, snapshot and
    key fall back to ``HAL_MORPH_API_URL``, ``HAL_MORPH_SNAPSHOT_ID`` and
    ``HAL_MORPH_KEY_FILE`` (hal's key must be registered with the account)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["morph"] = "morph"
    """Provider kind."""
    ssh_host: str = "ssh.cloud.morph.so"
    """Morph's SSH gateway."""
    ssh_port: int = Field(default=22, ge=1, le=65535)
    """Its port."""
    ssh_host_key: str | None = None
    """The gateway's public host key (``ssh-ed25519 AAAA...``): required, never learnt."""
    ssh_user: str | None = None
    """The login user; unset, the instance id (the gateway routes by it)."""
    ttl_s: int = Field(default=3600, ge=60)
    """Idle instances are paused after this long (Morph's TTL, action ``pause``)."""


class MorphProvider(CloudHostProvider[MorphApi, MorphConfig]):
    """Sandboxes in Morph instances, one per sandbox, commands over Morph's SSH gateway."""

    name = "morph"
    machine = "morph instance"
    config_model = MorphConfig  # type: ignore[assignment]
    api_class = MorphApi
    env_prefix = "HAL_MORPH"
    token_vars = ("MORPH_API_KEY",)
    token_missing = ("no Morph Cloud API key", "export MORPH_API_KEY")

    def __init__(self, *, state_dir: Path, config: MorphConfig | None = None) -> None:
        super().__init__(state_dir=state_dir, cloud=config or MorphConfig())
        self.capabilities = Capabilities(
            isolation=self.capabilities.isolation, network_modes=self.capabilities.network_modes,
            host_launch=True, snapshot=True,
        )  # fmt: skip

    async def instance_of(self, api: MorphApi, sandbox_id: str) -> Instance | None:
        """The instance of a sandbox, found by its metadata."""
        found = await api.list({OWNER_KEY: self.owner_id(), SANDBOX_KEY: sandbox_id})
        return found[0] if found else None

    # -- lifecycle ----------------------------------------------------------------------

    async def acquire_host(self, sandbox_id: str, spec: SandboxSpec) -> SshHost:
        """Reserve under the spend cap, boot the instance, wait until it is ready and
        answers, and say how to reach it."""
        snapshot = spec.image or self.snapshot_setting()
        key_file, host_key = self.key_file_setting(), self.cloud.ssh_host_key
        if not snapshot or key_file is None or not host_key:
            raise ConfigError(
                "the morph provider needs a snapshot, a login key and the gateway's host key",
                hint="set HAL_MORPH_SNAPSHOT_ID, HAL_MORPH_KEY_FILE and ssh_host_key in "
                "[providers.morph] (see docs/providers.md)",
            )
        metadata = {OWNER_KEY: self.owner_id(), SANDBOX_KEY: sandbox_id}
        async with self._creating(sandbox_id) as api:
            instance = await api.start(snapshot, metadata=metadata, ttl_seconds=self.cloud.ttl_s,
                                       ttl_action="pause")  # fmt: skip
            await self._wait_ready(api, instance.id)
        return await self._handover(sandbox_id, address=self.cloud.ssh_host,
                                    port=self.cloud.ssh_port,
                                    user=self.cloud.ssh_user or instance.id,
                                    key_file=key_file, host_key=host_key)  # fmt: skip

    async def _wait_ready(self, api: MorphApi, instance_id: str) -> None:
        deadline = time.monotonic() + self.cloud.boot_timeout_s
        while True:
            try:
                instance = await api.get(instance_id)
            except CloudNotFound:
                raise ProviderError(f"morph instance {instance_id} disappeared while it booted",
                                    hint="try again") from None  # fmt: skip
            if instance.status == "error":
                raise ProviderError(f"morph instance {instance_id} failed to boot (error)",
                                    hint="check the snapshot in Morph's console")  # fmt: skip
            if instance.status == "ready":
                probe = await api.exec(instance_id, ["true"])
                if probe.exit_code == 0:
                    return
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"morph instance {instance_id} is still {instance.hal_status()} "
                    f"({instance.status}) after {self.cloud.boot_timeout_s:g}s; it was deleted",
                    hint="raise boot_timeout_s, or check the snapshot",
                )
            await asyncio.sleep(self.cloud.poll_s)

    async def _live_sandboxes(self, api: MorphApi) -> set[str]:
        instances = await api.list({OWNER_KEY: self.owner_id()})
        return {i.metadata.get(SANDBOX_KEY, "") for i in instances} - {""}

    async def _delete_machine(self, api: MorphApi, sandbox_id: str) -> None:
        for instance in await api.list({OWNER_KEY: self.owner_id(), SANDBOX_KEY: sandbox_id}):
            with contextlib.suppress(CloudNotFound):
                await api.delete(instance.id)

    async def stop(self, sandbox_id: str) -> None:
        """Kill the sandbox's processes, bring its files back, and pause the instance."""
        await super().stop(sandbox_id)
        api = self._api()
        try:
            instance = await self.instance_of(api, sandbox_id)
            if instance is not None and instance.status == "ready":
                await api.pause(instance.id)
        finally:
            await api.aclose()

    async def start(self, sandbox_id: str) -> SshSandbox:
        """Resume the instance (paused by ``stop`` or by its TTL) and wait until ready."""
        api = self._api()
        try:
            instance = await self.instance_of(api, sandbox_id)
            if instance is None:
                raise SandboxNotFound(f"the morph instance of sandbox {sandbox_id} is gone")
            if instance.status == "paused":
                await api.resume(instance.id)
            await self._wait_ready(api, instance.id)
            await api.set_ttl(instance.id, self.cloud.ttl_s, "pause")
        finally:
            await api.aclose()
        return await super().start(sandbox_id)

    async def status(self, sandbox_id: str) -> str:
        """The instance's status in hal's words (booting, ready, stopped, stopping, error)."""
        api = self._api()
        try:
            instance = await self.instance_of(api, sandbox_id)
        finally:
            await api.aclose()
        if instance is None:
            raise SandboxNotFound(f"the morph instance of sandbox {sandbox_id} is gone")
        return instance.hal_status()

    async def snapshot(self, sandbox_id: str, name: str | None = None) -> str:
        """Snapshot the sandbox's instance; returns the snapshot id (``fork`` boots it)."""
        self.records.load(sandbox_id)
        api = self._api()
        try:
            instance = await self.instance_of(api, sandbox_id)
            if instance is None:
                raise SandboxNotFound(f"the morph instance of sandbox {sandbox_id} is gone")
            made = await api.snapshot(instance.id, {"name": name or f"hal-{sandbox_id}"})
        finally:
            await api.aclose()
        return made.id

    async def fork(self, image: str, count: int, spec: SandboxSpec) -> builtins.list[SshSandbox]:
        """``count`` new sandboxes booted from snapshot ``image``, concurrently."""
        return await fork_all(self.create, self.destroy, image, count, spec)
