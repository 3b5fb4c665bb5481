"""What the cloud providers that make one machine per sandbox share (``digitalocean``,
``morph``): the settings every one has (:class:`CloudHostConfig`) and where they fall back
to the environment, the API client's construction, a random owner id per state directory,
a create's reservation and clean-up (:meth:`CloudHostProvider._creating`), the hand-over to
SSH once the machine answers, deleting it with the sandbox, and reconciling the records
with the account.

Each provider says which client speaks its API (``api_class``) and where its settings
and token come from (``env_prefix``, ``token_vars``), how it boots a machine (in its
``acquire_host``), which of this hal's sandboxes have a machine
(:meth:`CloudHostProvider._live_sandboxes`) and how one sandbox's machine is deleted
(:meth:`CloudHostProvider._delete_machine`); the bookkeeping around those (the
connection pool, the spend ledger, the records) is here, once.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from pydantic import ConfigDict, Field

from hal9999.errors import (
    CloudApiError,
    CloudServerError,
    ConfigError,
    HalError,
    HostKeyRejected,
    ProviderError,
)
from hal9999.providers.base import SandboxInfo
from hal9999.providers.cloud.api import RateWindow, RetryPolicy, VendorApi
from hal9999.providers.cloud.spend import SpendCap, SpendGuard, SpendLedger
from hal9999.providers.ssh.config import SshConfig, SshHost
from hal9999.providers.ssh.provider import SshProvider
from hal9999.providers.ssh.records import SshRecord
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.spec import SandboxSpec

if TYPE_CHECKING:
    from hal9999.providers.doctor import Check, DoctorScope

logger = logging.getLogger(__name__)
# A record this young may not show in the vendor's listing yet: reconcile leaves it be.
GRACE_S = 5.0


class CloudHostConfig(SpendCap):
    """The settings every one-machine-per-sandbox cloud provider has (its own config adds
    the vendor's and may change the defaults)."""

    model_config = ConfigDict(extra="forbid")

    api_url: str | None = None
    """The API's base URL (else ``<env_prefix>_API_URL``, else the vendor's)."""
    snapshot_id: str | None = None
    """The snapshot machines boot from (else ``<env_prefix>_SNAPSHOT_ID``)."""
    key_file: Path | None = None
    """The private key hal logs in with (else ``<env_prefix>_KEY_FILE``)."""
    isolation: Literal["disposable", "bwrap"] = "disposable"
    """``disposable``: the machine is the boundary (deleted with the sandbox); ``bwrap``:
    also bubblewrap inside (the snapshot must have it)."""
    boot_timeout_s: float = Field(default=300.0, gt=0)
    """How long a machine may take to be ready and answer over SSH."""
    poll_s: float = Field(default=1.0, gt=0)
    """How often the machine's status is read while it boots."""
    api_timeout_s: float = Field(default=30.0, gt=0)
    """Per-call API timeout."""
    api_attempts: int = Field(default=5, ge=1)
    """Tries per API call (429s and, for reads and deletes, 5xx and timeouts)."""


ApiT = TypeVar("ApiT", bound=VendorApi)
ConfigT = TypeVar("ConfigT", bound=CloudHostConfig)


class CloudSandbox(SshSandbox):
    """A cloud sandbox: one the spend cap ended raises :class:`SpendCapReached` on use."""

    ledger: SpendLedger

    def _require_running(self) -> None:
        error = self.ledger.capped(self.id)
        if error is not None:
            raise error
        super()._require_running()


class CloudHostProvider(SshProvider, Generic[ApiT, ConfigT]):
    """An :class:`SshProvider` whose hosts are cloud machines, one per sandbox."""

    ledger: SpendLedger
    _guard: SpendGuard | None = None
    machine = "machine"
    """How log lines and errors name one of the vendor's machines."""
    api_class: type[ApiT]
    """The vendor's API client."""
    env_prefix: str
    """``<env_prefix>_API_URL``, ``_SNAPSHOT_ID``, ``_KEY_FILE``: the settings' fallbacks."""
    token_vars: tuple[str, ...]
    """The variables the API token is read from, the first set one wins."""
    token_missing: tuple[str, str]
    """The error and hint when none of ``token_vars`` is set."""

    @staticmethod
    async def doctor(scope: DoctorScope) -> list[Check]:
        """No lines: the ssh hook it would inherit reads ``[providers.ssh]``, not this
        provider's table."""
        return []

    def __init__(self, *, state_dir: Path, cloud: ConfigT) -> None:
        self.cloud = cloud
        super().__init__(state_dir=state_dir, config=SshConfig(isolation=cloud.isolation))
        self.ledger = SpendLedger(self.name, state_dir, cloud)
        self._window = RateWindow()

    async def _live_sandboxes(self, api: ApiT) -> set[str]:
        """The sandbox ids of this hal (its owner id) that have a machine now."""
        raise NotImplementedError

    async def _delete_machine(self, api: ApiT, sandbox_id: str) -> None:
        """Delete whatever machine the sandbox has (none: nothing to do)."""
        raise NotImplementedError

    # -- settings and the API -----------------------------------------------------------

    def _env(self, name: str) -> str:
        return os.environ.get(f"{self.env_prefix}_{name}", "").strip()

    def snapshot_setting(self) -> str:
        """The snapshot to boot (the settings', else the environment's; "" for none)."""
        return self.cloud.snapshot_id or self._env("SNAPSHOT_ID")

    def key_file_setting(self) -> Path | None:
        """hal's login key (the settings', else the environment's)."""
        return self.cloud.key_file or env_path(f"{self.env_prefix}_KEY_FILE")

    def _token(self) -> str:
        for name in self.token_vars:
            value = os.environ.get(name, "").strip()
            if value:
                return value
        message, hint = self.token_missing
        raise ConfigError(message, hint=hint)

    def _api(self) -> ApiT:
        policy = RetryPolicy(attempts=self.cloud.api_attempts, timeout_s=self.cloud.api_timeout_s)
        # Neither set: the client's own default, the vendor's API.
        url = self.cloud.api_url or self._env("API_URL") or None
        return self.api_class(token=self._token(), base_url=url, policy=policy,
                              window=self._window)  # fmt: skip

    def _create_window_s(self) -> float:
        """The longest a create may take: waiting to boot, then to answer over SSH."""
        return 2 * self.cloud.boot_timeout_s + self.cloud.api_attempts * self.cloud.api_timeout_s

    # -- the spend cap on running machines ---------------------------------------------------
    def spend_guard(self) -> SpendGuard:
        """This provider's guard of the day's machine-hours (see :mod:`.spend`)."""
        if self._guard is None:
            self._guard = SpendGuard(self.ledger, self._stop_for_cap)
        return self._guard

    async def _stop_for_cap(self, sandbox_id: str) -> None:
        # A checkpoint (processes killed, session brought back), then the machine deleted.
        if any(record.id == sandbox_id for record in self.records.all()):
            with contextlib.suppress(HalError):
                await self.stop(sandbox_id)
            await self.destroy(sandbox_id)
            return
        api = self._api()  # still booting (or an orphan): no session to keep
        try:
            await self._delete(api, sandbox_id)
        finally:
            await api.aclose()

    def _handle(self, record: SshRecord) -> SshSandbox:
        sandbox = CloudSandbox(record, self.pool, self.records, self.destroy)
        sandbox.ledger = self.ledger
        return sandbox

    async def create(self, spec: SandboxSpec) -> SshSandbox:
        """A sandbox on a new machine, the day's machine-hours watched from now on."""
        self.spend_guard().start()
        return await super().create(spec)

    async def get(self, sandbox_id: str) -> SshSandbox:
        """A handle on an existing sandbox (its machine-hours watched from now on)."""
        self.spend_guard().start()
        return await super().get(sandbox_id)

    def owner_id(self) -> str:
        """This state directory's random owner id (its ``owner`` file, made once): only
        machines carrying it are ever reconciled, never another installation's."""
        return self.records.owner_id()

    # -- creating -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _creating(self, sandbox_id: str) -> AsyncIterator[ApiT]:
        """Reserve a machine under the spend cap and open the API for booting it; whatever
        fails inside deletes the machine (a 5xx may still have made it) and, where nothing
        can have been made, ends the reservation."""
        await self.ledger.reserve(sandbox_id)
        try:
            api = self._api()
        except BaseException:
            await self.ledger.end(sandbox_id)
            raise
        try:
            yield api
        except BaseException as exc:
            try:
                await self._delete(api, sandbox_id)
            except CloudApiError:
                # The machine may live on: the spend record stays until reconcile deletes
                # it, unless the vendor plainly refused the create (a 4xx: nothing made).
                if isinstance(exc, CloudApiError) and not isinstance(exc, CloudServerError):
                    await self.ledger.end(sandbox_id)
            raise
        finally:
            await api.aclose()

    async def _handover(
        self, sandbox_id: str, *, address: str, port: int = 22, user: str, key_file: Path,
        host_key: str,
    ) -> SshHost:  # fmt: skip
        """The sandbox's host, once it answers over SSH with ``host_key`` (a machine that
        never does is deleted; a wrong key is refused at once: retrying would not make it
        right)."""
        host = SshHost(name=f"hal-{sandbox_id}", address=address, port=port, user=user,
                       key_file=key_file, host_key=host_key, capacity=1)  # fmt: skip
        deadline = time.monotonic() + self.cloud.boot_timeout_s
        try:
            while True:
                try:
                    await self.pool.get(host)
                    return host
                except HostKeyRejected:
                    raise
                except ProviderError as exc:
                    if time.monotonic() > deadline:
                        raise ProviderError(
                            f"the {self.machine} of {host.name} does not answer over SSH: "
                            f"{exc.one_line()}",
                            hint="check the image's sshd and the login user's key",
                        ) from exc
                await asyncio.sleep(self.cloud.poll_s)
        except BaseException:
            await self.release_host(host)
            raise

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
        try:
            return await self.ledger.reconcile(
                self.records,
                live=await self._live_sandboxes(api),
                spared=set(),
                now=time.time(),
                create_window_s=self._create_window_s(),
                grace_s=GRACE_S,
                machine=self.machine,
                delete=lambda sandbox_id: self._delete(api, sandbox_id),
                forget=lambda sandbox_id: self.pool.forget_name(f"hal-{sandbox_id}", force=True),
            )
        finally:
            await api.aclose()


def env_path(name: str) -> Path | None:
    """The path in environment variable ``name`` (``~`` expanded), or None when unset."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None
