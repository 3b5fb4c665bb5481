"""The ``lima`` provider: each sandbox is a Lima VM (``limactl``), reached over ssh.

hal drives the documented ``limactl`` commands only: ``start --name=NAME --tty=false FILE``
creates and boots a VM from a config hal writes (JSON, which is YAML), ``list --json NAME``
reports its ssh port, address and user, ``stop`` and ``delete --force`` end it. The
commands themselves go through the :mod:`ssh <hal9999.providers.ssh>` provider over one
connection per VM, logging in with Lima's own user key (``$LIMA_HOME/_config/user``).

Lima's own ssh configuration does not check host keys. hal does: it makes an ed25519 host
key for each VM, installs it by the config's system provision script, and connects
verifying exactly that key. The VM is disposable (deleted with the sandbox), so commands
run directly as the VM's user unless ``isolation = "bwrap"`` is set.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hal9999.errors import ProviderError, ProviderUnavailable
from hal9999.providers.base import SandboxInfo, doctor_in
from hal9999.providers.ssh.config import SshConfig, SshHost
from hal9999.providers.ssh.connections import load_asyncssh
from hal9999.providers.ssh.provider import SshProvider
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.spec import SandboxSpec

logger = logging.getLogger(__name__)

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
PROVISION = """#!/bin/sh
# hal's host key for this VM: hal connects verifying exactly this key.
set -eu
umask 077
cat > {key} <<'HAL_HOST_KEY'
{private}HAL_HOST_KEY
printf '%s\\n' '{public}' > {key}.pub
chmod 600 {key}
systemctl restart ssh 2>/dev/null || systemctl restart sshd 2>/dev/null || true
"""


class LimaConfig(BaseModel):
    """Settings of the ``lima`` provider."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["lima"] = "lima"
    """Provider kind."""
    limactl: str = "limactl"
    """The limactl program: a name looked up on PATH, or a path."""
    template: str = "template://debian"
    """What each VM's config is based on (``base:``), e.g. ``template://debian``."""
    cpus: int | None = Field(default=None, ge=1)
    """vCPUs per VM (Lima's default when unset)."""
    memory: str | None = None
    """Memory per VM, e.g. ``4GiB``."""
    isolation: Literal["disposable", "bwrap"] = "disposable"
    """``disposable``: the VM is the boundary (deleted with the sandbox). ``bwrap``: also
    bubblewrap inside the VM (the image must have it)."""
    start_timeout_s: float = 900.0
    """How long ``limactl start`` may take (first boots download an image)."""
    max_vms: int = Field(default=4, ge=1)
    """VMs hal runs at once."""


class LimaProvider(SshProvider):
    """Sandboxes in Lima VMs, one VM per sandbox, commands over ssh."""

    name = "lima"
    config_model = LimaConfig  # type: ignore[assignment]

    doctor = doctor_in("hal9999.providers.ssh.doctor", "lima_checks")
    """limactl, and hal's VMs and sandboxes."""

    def __init__(self, *, state_dir: Path, config: LimaConfig | None = None) -> None:
        self.lima = config or LimaConfig()
        found = shutil.which(self.lima.limactl)
        if found is None:
            raise ProviderUnavailable(
                f"limactl ({self.lima.limactl}) is not installed",
                hint="install Lima: https://lima-vm.io/docs/installation/",
            )
        self.limactl = found
        super().__init__(state_dir=state_dir, config=SshConfig(isolation=self.lima.isolation))
        self._creating: dict[str, int] = {}
        """The creation lock (an open, flocked fd) of each sandbox this process is making."""

    def _lock_path(self, sandbox_id: str) -> Path:
        return self.records.root / "vms" / f"{sandbox_id}.lock"

    def _lock(self, sandbox_id: str) -> None:
        # Held from before its VM exists until its record is saved (or it is undone): a VM
        # of this hal home without a record whose lock is free was left by a killed hal.
        path = self._lock_path(sandbox_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._creating[sandbox_id] = fd

    def _unlock(self, sandbox_id: str) -> None:
        fd = self._creating.pop(sandbox_id, None)
        if fd is not None:
            self._lock_path(sandbox_id).unlink(missing_ok=True)
            os.close(fd)

    async def _create_on(self, host: SshHost, sandbox_id: str, spec: SandboxSpec) -> SshSandbox:
        try:
            return await super()._create_on(host, sandbox_id, spec)
        finally:
            self._unlock(sandbox_id)

    async def list(self) -> builtins.list[SandboxInfo]:
        """The recorded sandboxes, once the VMs a killed hal left without one are deleted."""
        await self.reconcile()
        return await super().list()

    async def reconcile(self) -> builtins.list[str]:
        """Delete this hal home's VMs that have no record and no live creator (hal killed
        while one booted); return their sandbox ids."""
        acted: builtins.list[str] = []
        vms = self.records.root / "vms"
        if not vms.is_dir():
            return acted
        known = {record.id for record in self.records.all()}
        for lock in vms.glob("*.lock"):
            sandbox_id = lock.name.removesuffix(".lock")
            if not re.fullmatch(r"[0-9a-f]{12}", sandbox_id) or sandbox_id in known:
                continue
            if sandbox_id in self._creating:
                continue
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live hal is still making it
            try:
                if sandbox_id not in {record.id for record in self.records.all()}:
                    logger.warning("deleting lima VM %s: left by a killed hal",
                                   self.vm_name(sandbox_id))  # fmt: skip
                    await self._delete(self.vm_name(sandbox_id))
                    (vms / f"{sandbox_id}.yaml").unlink(missing_ok=True)
                    acted.append(sandbox_id)
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return acted

    def vm_name(self, sandbox_id: str) -> str:
        """The Lima instance of a sandbox."""
        return f"hal-{sandbox_id}"

    async def _limactl(self, *args: str, limit_s: float = 120.0) -> str:
        proc = await asyncio.create_subprocess_exec(
            self.limactl, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ProviderError(f"limactl {args[0]} timed out after {limit_s:g}s") from None
        if proc.returncode != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            why = lines[-1] if lines else f"exit {proc.returncode}"
            raise ProviderError(f"limactl {args[0]} failed: {why}")
        return out.decode("utf-8", "replace")

    async def instance(self, name: str) -> dict[str, Any] | None:
        """``limactl list --json NAME``: one JSON object per line; None when there is none."""
        try:
            out = await self._limactl("list", "--json", name)
        except ProviderError:
            return None
        for line in out.splitlines():
            if line.strip():
                data: dict[str, Any] = json.loads(line)
                if data.get("name") == name:
                    return data
        return None

    async def acquire_host(self, sandbox_id: str, spec: SandboxSpec) -> SshHost:
        """Create and boot the sandbox's VM with hal's host key, and say how to reach it."""
        if len(self.records.all()) >= self.lima.max_vms:
            raise ProviderError("every lima VM slot is in use", hint="raise max_vms")
        self._lock(sandbox_id)
        try:
            return await self._boot(sandbox_id)
        except BaseException:
            # The lock file stays, free: what a failed start made goes at the next listing.
            fd = self._creating.pop(sandbox_id)
            os.close(fd)
            raise

    async def _boot(self, sandbox_id: str) -> SshHost:
        asyncssh = load_asyncssh()
        key = asyncssh.generate_private_key("ssh-ed25519")
        public = key.export_public_key().decode().strip()
        private = key.export_private_key().decode()
        vm_dir = self.records.root / "vms"
        vm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = vm_dir / f"{sandbox_id}.yaml"
        body: dict[str, Any] = {
            "base": self.lima.template,
            "provision": [{"mode": "system", "script": PROVISION.format(
                key=HOST_KEY, private=private, public=public)}],
        }  # fmt: skip
        if self.lima.cpus is not None:
            body["cpus"] = self.lima.cpus
        if self.lima.memory is not None:
            body["memory"] = self.lima.memory
        # The file holds the VM's private host key: only hal's user may read it.
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(body, out, indent=2)
        name = self.vm_name(sandbox_id)
        try:
            await self._limactl("start", f"--name={name}", "--tty=false", str(config),
                                limit_s=self.lima.start_timeout_s)  # fmt: skip
        finally:
            config.unlink(missing_ok=True)
        found = await self.instance(name)
        if found is None or found.get("status") != "Running" or not found.get("sshLocalPort"):
            await self._delete(name)
            raise ProviderError(f"lima VM {name} did not come up: {found and found.get('message')}")
        user = ((found.get("config") or {}).get("user") or {}).get("name") or _local_user()
        return SshHost(
            name=name,
            address=found.get("sshAddress") or "127.0.0.1",
            port=int(found["sshLocalPort"]),
            user=user,
            key_file=lima_home() / "_config" / "user",
            host_key=public,
            capacity=1,
        )

    async def release_host(self, host: SshHost) -> None:
        """Delete the sandbox's VM."""
        await self._delete(host.name)
        self._unlock(host.name.removeprefix("hal-"))

    async def _delete(self, name: str) -> None:
        self.pool.forget_name(name, force=True)
        with contextlib.suppress(ProviderError):
            await self._limactl("delete", "--force", name)


def lima_home() -> Path:
    """Lima's data directory (``$LIMA_HOME``, else ``~/.lima``)."""
    return Path(os.environ.get("LIMA_HOME") or Path.home() / ".lima")


def _local_user() -> str:
    # Lima's guest user is the host user's name unless the config says otherwise.
    import getpass

    return getpass.getuser()
