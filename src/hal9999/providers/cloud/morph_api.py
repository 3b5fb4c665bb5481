"""The part of Morph Cloud's API the ``morph`` provider uses, over :mod:`.api`.

Endpoints as the ``morphcloud`` SDK calls them (base ``https://cloud.morph.so/api``,
bearer ``MORPH_API_KEY``): ``POST /instance?snapshot_id=S`` (``metadata``, ``ttl_seconds``,
``ttl_action``), ``GET /instance/{id}``, ``GET /instance?metadata[k]=v`` (``{"data": [...]}``),
``DELETE /instance/{id}``, ``POST /instance/{id}/exec`` (``{"command": [argv]}``),
``POST /instance/{id}/pause`` and ``/resume``, ``POST /instance/{id}/snapshot``,
``POST /instance/{id}/branch?count=N``, ``POST /instance/{id}/ttl``. Answers are validated
by the pydantic models below (the SDK's shapes, the fields hal reads).
"""

from __future__ import annotations

import builtins
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hal9999.providers.cloud.api import VendorApi

API_URL = "https://cloud.morph.so/api"
MorphStatus = Literal["pending", "ready", "paused", "saving", "error"]
HalStatus = Literal["booting", "ready", "stopped", "stopping", "error"]
STATUS: dict[str, HalStatus] = {
    "pending": "booting", "ready": "ready", "paused": "stopped", "saving": "stopping",
    "error": "error",
}  # fmt: skip
"""Morph's instance status -> hal's word for it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ResourceSpec(_Model):
    """vCPUs, memory and disk (MB) of an instance or snapshot."""

    vcpus: int
    """vCPU count."""
    memory: int
    """Memory in MB."""
    disk_size: int
    """Disk in MB."""


class InstanceRefs(_Model):
    """What an instance was made from."""

    snapshot_id: str
    """The snapshot it booted from."""
    image_id: str
    """The base image."""


class Ttl(_Model):
    """Time-to-live: what happens to an idle instance, and when."""

    ttl_seconds: int | None = None
    """Seconds until the action."""
    ttl_expire_at: int | None = None
    """When (epoch seconds)."""
    ttl_action: Literal["stop", "pause"] | None = "stop"
    """``pause`` keeps the instance (resumable); ``stop`` deletes it."""


class Instance(_Model):
    """A Morph instance."""

    id: str
    """``morphvm_...``."""
    created: int
    """Creation time (epoch seconds)."""
    status: MorphStatus
    """Morph's status."""
    spec: ResourceSpec
    """Its resources."""
    refs: InstanceRefs
    """Its origin."""
    ttl: Ttl = Ttl()
    """Its TTL."""
    metadata: dict[str, str] = {}
    """User metadata (hal's owner and sandbox id)."""

    def hal_status(self) -> HalStatus:
        """The status in hal's words (see :data:`STATUS`)."""
        return STATUS[self.status]


class Snapshot(_Model):
    """A Morph snapshot."""

    id: str
    """``snapshot_...``."""
    created: int
    """Creation time."""
    status: str
    """``pending``, ``ready``, ``failed``, ``deleting``, ``deleted``."""
    metadata: dict[str, str] = {}
    """User metadata."""


class ExecResult(_Model):
    """What ``/exec`` returns."""

    exit_code: int
    """Exit status."""
    stdout: str
    """Output (text)."""
    stderr: str
    """Errors (text)."""


class _List(_Model):
    data: list[Instance]


class _Branch(_Model):
    snapshot: Snapshot
    instances: list[Instance]


class MorphApi(VendorApi):
    """Instance and snapshot calls, each validated; errors are :class:`CloudApiError`s."""

    vendor = "Morph Cloud"
    default_url = API_URL

    async def start(
        self, snapshot_id: str, *, metadata: dict[str, str], ttl_seconds: int | None,
        ttl_action: Literal["stop", "pause"],
    ) -> Instance:  # fmt: skip
        """Boot an instance from a snapshot (it starts ``pending``)."""
        body = {"metadata": metadata, "ttl_seconds": ttl_seconds, "ttl_action": ttl_action}
        answer = await self.api.request("POST", "/instance", params={"snapshot_id": snapshot_id},
                                        json=body)  # fmt: skip
        return self.parse(Instance, answer.body, "start instance")

    async def get(self, instance_id: str) -> Instance:
        """One instance; :class:`CloudNotFound` when gone."""
        answer = await self.api.request("GET", f"/instance/{instance_id}")
        return self.parse(Instance, answer.body, "get instance")

    async def list(self, metadata: dict[str, str]) -> builtins.list[Instance]:
        """Instances whose metadata has every given key and value."""
        params = {f"metadata[{k}]": v for k, v in metadata.items()}
        answer = await self.api.request("GET", "/instance", params=params)
        return self.parse(_List, answer.body, "list instances").data

    async def delete(self, instance_id: str) -> None:
        """Stop and delete an instance."""
        await self.api.request("DELETE", f"/instance/{instance_id}")

    async def exec(self, instance_id: str, argv: builtins.list[str]) -> ExecResult:
        """Run a command in the instance (no stdin, no environment: probes only)."""
        answer = await self.api.request("POST", f"/instance/{instance_id}/exec",
                                        json={"command": argv})  # fmt: skip
        return self.parse(ExecResult, answer.body, "exec")

    async def pause(self, instance_id: str) -> None:
        """Pause (memory and disk kept, not billed for compute)."""
        await self.api.request("POST", f"/instance/{instance_id}/pause")

    async def resume(self, instance_id: str) -> None:
        """Resume a paused instance."""
        await self.api.request("POST", f"/instance/{instance_id}/resume")

    async def snapshot(self, instance_id: str, metadata: dict[str, str]) -> Snapshot:
        """Snapshot an instance (it goes on running)."""
        answer = await self.api.request("POST", f"/instance/{instance_id}/snapshot",
                                        json={"metadata": metadata})  # fmt: skip
        return self.parse(Snapshot, answer.body, "snapshot")

    async def branch(
        self, instance_id: str, count: int
    ) -> tuple[Snapshot, builtins.list[Instance]]:
        """Snapshot an instance and boot ``count`` copies of it."""
        answer = await self.api.request("POST", f"/instance/{instance_id}/branch",
                                        params={"count": count})  # fmt: skip
        found = self.parse(_Branch, answer.body, "branch")
        return found.snapshot, found.instances

    async def set_ttl(self, instance_id: str, seconds: int, action: str) -> None:
        """Set (or renew) an instance's TTL."""
        await self.api.request("POST", f"/instance/{instance_id}/ttl",
                               json={"ttl_seconds": seconds, "ttl_action": action})  # fmt: skip
