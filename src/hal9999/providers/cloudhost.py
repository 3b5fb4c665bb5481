"""What the cloud providers that make one machine per sandbox share (``digitalocean``,
``morph``): a random owner id per state directory, waiting for the machine to answer over
SSH, deleting it with the sandbox, and reconciling the records with the account.

Each provider says how to talk to its API (:meth:`CloudHostProvider._api`), which of this
hal's sandboxes have a machine (:meth:`CloudHostProvider._live_sandboxes`) and how one
sandbox's machine is deleted (:meth:`CloudHostProvider._delete_machine`); the bookkeeping
around those (the connection pool, the spend ledger, the records) is here, once.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from hal9999.errors import (
    CloudApiError,
    ConfigError,
    HostKeyRejected,
    ProviderError,
    SandboxNotFound,
)
from hal9999.providers.base import SandboxInfo
from hal9999.providers.cloudspend import SpendLedger
from hal9999.providers.ssh.config import SshHost
from hal9999.providers.ssh.provider import SshProvider

logger = logging.getLogger(__name__)
# A record this young may not show in the vendor's listing yet: reconcile leaves it be.
GRACE_S = 5.0


class CloudApi(Protocol):
    """The one thing the shared code needs of a vendor's API client."""

    async def aclose(self) -> None:
        """Close the client's connections."""


ApiT = TypeVar("ApiT", bound=CloudApi)


class CloudHostProvider(SshProvider, Generic[ApiT]):
    """An :class:`SshProvider` whose hosts are cloud machines, one per sandbox."""

    ledger: SpendLedger
    _owner_id: str | None = None
    machine = "machine"
    """How log lines and errors name one of the vendor's machines."""

    def _api(self) -> ApiT:
        raise NotImplementedError

    async def _live_sandboxes(self, api: ApiT) -> set[str]:
        """The sandbox ids of this hal (its owner id) that have a machine now."""
        raise NotImplementedError

    async def _delete_machine(self, api: ApiT, sandbox_id: str) -> None:
        """Delete whatever machine the sandbox has (none: nothing to do)."""
        raise NotImplementedError

    def _create_window_s(self) -> float:
        """The longest a create may take: waiting to boot, then to answer over SSH."""
        raise NotImplementedError

    def owner_id(self) -> str:
        """This state directory's random owner id (its ``owner`` file, made once): only
        machines carrying it are ever reconciled, never another installation's."""
        owner = self._owner_id
        if owner is None:
            path = self.records.root / "owner"
            self.records.root.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_hex(6))
            owner = self._owner_id = path.read_text().strip()
        return owner

    async def _wait_ssh(self, host: SshHost, timeout_s: float, poll_s: float) -> None:
        """Until the machine answers over SSH with the expected host key (a wrong key is
        refused at once: retrying would not make it right)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.pool.get(host)
                return
            except HostKeyRejected:
                raise
            except ProviderError as exc:
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"the {self.machine} of {host.name} does not answer over SSH: "
                        f"{exc.one_line()}",
                        hint="check the image's sshd and the login user's key",
                    ) from exc
            await asyncio.sleep(poll_s)

    async def _delete(self, api: ApiT, sandbox_id: str) -> None:
        self.pool.forget_name(f"hal-{sandbox_id}", force=True)
        await self._delete_machine(api, sandbox_id)
        await self.ledger.end(sandbox_id)

    async def release_host(self, host: SshHost) -> None:
        """Delete the sandbox's machine and end its spend record."""
        api = self._api()
        try:
            await self._delete(api, host.name.removeprefix("hal-"))
        finally:
            await api.aclose()

    async def list(self) -> builtins.list[SandboxInfo]:
        """The sandboxes, after reconciling records with the account's machines."""
        try:
            await self.reconcile()
        except (CloudApiError, ConfigError) as exc:
            # The records are still the truth hal has; the next listing reconciles.
            logger.warning("cannot reconcile %s machines: %s", self.name, exc.one_line())
        return await super().list()

    async def reconcile(self) -> builtins.list[str]:
        """Delete this hal's machines that have no record (left by a crash), forget records
        whose machine is gone, end spend records of neither; return the sandbox ids acted
        on."""
        api = self._api()
        acted: builtins.list[str] = []
        try:
            live = await self._live_sandboxes(api)
            known = {record.id for record in self.records.all()}
            # A sandbox is recorded only once its machine answers, so a machine without a
            # record may be one that a create (of this or another hal process) is still
            # booting: its spend record, reserved less than a whole create ago, says so.
            reserved = await self.ledger.open_since()
            creating = {sid for sid, at in reserved.items()
                        if time.time() - at < self._create_window_s()}  # fmt: skip
            for sandbox_id in sorted(live - known - creating):
                logger.warning("deleting orphan %s of sandbox %s", self.machine, sandbox_id)
                await self._delete(api, sandbox_id)
                acted.append(sandbox_id)
            for sandbox_id in sorted(known - live):
                with contextlib.suppress(SandboxNotFound):
                    if time.time() - self.records.load(sandbox_id).created_at < GRACE_S:
                        continue
                logger.warning("%s of sandbox %s is gone; forgetting it", self.machine,
                               sandbox_id)  # fmt: skip
                self.pool.forget_name(f"hal-{sandbox_id}", force=True)
                with contextlib.suppress(SandboxNotFound):
                    self.records.delete(sandbox_id)
                await self.ledger.end(sandbox_id)
                acted.append(sandbox_id)
            # A crash between reserving and recording leaves a spend record that no machine
            # and no sandbox answers to; left open it would count against the cap forever.
            for sandbox_id in reserved:
                if sandbox_id not in live | known | creating:
                    await self.ledger.end(sandbox_id)
        finally:
            await api.aclose()
        return acted


def env_path(name: str) -> Path | None:
    """The path in environment variable ``name`` (``~`` expanded), or None when unset."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None
