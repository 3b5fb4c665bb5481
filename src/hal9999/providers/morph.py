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
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from hal9999.errors import (
    CloudApiError,
    CloudNotFound,
    CloudServerError,
    ConfigError,
    ProviderError,
    SandboxNotFound,
)
from hal9999.providers.base import Capabilities
from hal9999.providers.cloudapi import RateWindow, RetryPolicy
from hal9999.providers.cloudhost import CloudHostProvider, env_path
from hal9999.providers.cloudspend import SpendCap, SpendLedger
from hal9999.providers.morph_api import API_URL, Instance, MorphApi
from hal9999.providers.ssh.config import SshConfig, SshHost
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.spec import SandboxSpec

logger = logging.getLogger(__name__)
OWNER_KEY, SANDBOX_KEY = "hal9999", "hal9999_sandbox"


class MorphConfig(SpendCap):
    """Settings of the ``morph`` provider (``[providers.morph]``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["morph"] = "morph"
    """Provider kind."""
    api_url: str | None = None
    """The API's base URL (else ``HAL_MORPH_API_URL``, else Morph's)."""
    snapshot_id: str | None = None
    """The snapshot sandboxes boot from (else ``HAL_MORPH_SNAPSHOT_ID``)."""
    ssh_host: str = "ssh.cloud.morph.so"
    """Morph's SSH gateway."""
    ssh_port: int = Field(default=22, ge=1, le=65535)
    """Its port."""
    ssh_host_key: str | None = None
    """The gateway's public host key (``ssh-ed25519 AAAA...``): required, never learnt."""
    ssh_user: str | None = None
    """The login user; unset, the instance id (the gateway routes by it)."""
    key_file: Path | None = None
    """hal's private key (else ``HAL_MORPH_KEY_FILE``), registered with the account."""
    isolation: Literal["disposable", "bwrap"] = "disposable"
    """``disposable``: the instance is the boundary; ``bwrap``: also bubblewrap inside."""
    ttl_s: int = Field(default=3600, ge=60)
    """Idle instances are paused after this long (Morph's TTL, action ``pause``)."""
    boot_timeout_s: float = Field(default=300.0, gt=0)
    """How long an instance may take to be ready and answer."""
    poll_s: float = Field(default=1.0, gt=0)
    """How often its status is read while it boots."""
    api_timeout_s: float = Field(default=30.0, gt=0)
    """Per-call API timeout."""
    api_attempts: int = Field(default=5, ge=1)
    """Tries per API call."""


def _token() -> str:
    value = os.environ.get("MORPH_API_KEY", "").strip()
    if not value:
        raise ConfigError("no Morph Cloud API key", hint="export MORPH_API_KEY")
    return value


class MorphProvider(CloudHostProvider[MorphApi]):
    """Sandboxes in Morph instances, one per sandbox, commands over Morph's SSH gateway."""

    name = "morph"
    machine = "morph instance"
    config_model = MorphConfig  # type: ignore[assignment]

    def __init__(self, *, state_dir: Path, config: MorphConfig | None = None) -> None:
        self.morph = config or MorphConfig()
        super().__init__(state_dir=state_dir, config=SshConfig(isolation=self.morph.isolation))
        self.capabilities = Capabilities(
            isolation=self.capabilities.isolation, network_modes=self.capabilities.network_modes,
            host_launch=True, snapshot=True,
        )  # fmt: skip
        self.ledger = SpendLedger(self.name, state_dir, self.morph)
        self._window = RateWindow()

    def _api(self) -> MorphApi:
        policy = RetryPolicy(attempts=self.morph.api_attempts, timeout_s=self.morph.api_timeout_s)
        url = self.morph.api_url or os.environ.get("HAL_MORPH_API_URL", "").strip() or API_URL
        return MorphApi(token=_token(), base_url=url, policy=policy, window=self._window)

    def _create_window_s(self) -> float:
        return 2 * self.morph.boot_timeout_s + self.morph.api_attempts * self.morph.api_timeout_s

    async def instance_of(self, api: MorphApi, sandbox_id: str) -> Instance | None:
        """The instance of a sandbox, found by its metadata."""
        found = await api.list({OWNER_KEY: self.owner_id(), SANDBOX_KEY: sandbox_id})
        return found[0] if found else None

    # -- lifecycle ----------------------------------------------------------------------

    async def acquire_host(self, sandbox_id: str, spec: SandboxSpec) -> SshHost:
        """Reserve under the spend cap, boot the instance, wait until it is ready and
        answers, and say how to reach it."""
        snapshot = (spec.image or self.morph.snapshot_id
                    or os.environ.get("HAL_MORPH_SNAPSHOT_ID", "").strip())  # fmt: skip
        key_file = self.morph.key_file or env_path("HAL_MORPH_KEY_FILE")
        if not snapshot or key_file is None or not self.morph.ssh_host_key:
            raise ConfigError(
                "the morph provider needs a snapshot, a login key and the gateway's host key",
                hint="set HAL_MORPH_SNAPSHOT_ID, HAL_MORPH_KEY_FILE and ssh_host_key in "
                "[providers.morph] (see docs/providers.md)",
            )
        await self.ledger.reserve(sandbox_id)
        try:
            api = self._api()
        except BaseException:
            await self.ledger.end(sandbox_id)
            raise
        metadata = {OWNER_KEY: self.owner_id(), SANDBOX_KEY: sandbox_id}
        instance: Instance | None = None
        try:
            instance = await api.start(snapshot, metadata=metadata, ttl_seconds=self.morph.ttl_s,
                                       ttl_action="pause")  # fmt: skip
            await self._wait_ready(api, instance.id)
        except BaseException as exc:
            await self._cleanup(api, sandbox_id, exc)
            raise
        finally:
            await api.aclose()
        host = SshHost(name=f"hal-{sandbox_id}", address=self.morph.ssh_host,
                       port=self.morph.ssh_port, user=self.morph.ssh_user or instance.id,
                       key_file=key_file, host_key=self.morph.ssh_host_key, capacity=1)  # fmt: skip
        try:
            await self._wait_ssh(host, self.morph.boot_timeout_s, self.morph.poll_s)
        except BaseException:
            await self.release_host(host)
            raise
        return host

    async def _cleanup(self, api: MorphApi, sandbox_id: str, exc: BaseException) -> None:
        try:
            await self._delete(api, sandbox_id)
        except CloudApiError:
            # The instance may live on: the spend record stays until reconcile deletes it,
            # unless the vendor plainly refused the start (nothing was made).
            if isinstance(exc, CloudApiError) and not isinstance(exc, CloudServerError):
                await self.ledger.end(sandbox_id)

    async def _wait_ready(self, api: MorphApi, instance_id: str) -> None:
        deadline = time.monotonic() + self.morph.boot_timeout_s
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
                    f"({instance.status}) after {self.morph.boot_timeout_s:g}s; it was deleted",
                    hint="raise boot_timeout_s, or check the snapshot",
                )
            await asyncio.sleep(self.morph.poll_s)

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
            await api.set_ttl(instance.id, self.morph.ttl_s, "pause")
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
        if count < 1:
            raise ConfigError("fork needs a count of at least 1")
        forked = spec.model_copy(update={"image": image})
        results = await asyncio.gather(*(self.create(forked) for _ in range(count)),
                                       return_exceptions=True)  # fmt: skip
        made = [r for r in results if isinstance(r, SshSandbox)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for sandbox in made:
                await self.destroy(sandbox.id)
            raise failed[0]
        return made
