"""An in-process fake of Morph Cloud's instance API (the paths and JSON shapes the
``morphcloud`` SDK uses; base URL without the ``/api`` prefix's host):

    POST   /instance?snapshot_id=S          {metadata, ttl_seconds, ttl_action} -> Instance
    GET    /instance?metadata[k]=v          {"data": [Instance...]}
    GET    /instance/{id}                   Instance | 404 {"detail": ...}
    DELETE /instance/{id}                   200 {}
    POST   /instance/{id}/exec              {"command": [argv]} -> {exit_code, stdout, stderr}
    POST   /instance/{id}/pause | /resume   Instance
    POST   /instance/{id}/snapshot          Snapshot
    POST   /instance/{id}/branch?count=N    {"snapshot": Snapshot, "instances": [...]}
    POST   /instance/{id}/ttl               {ttl_seconds, ttl_action} -> Instance

Bearer auth (401), FastAPI-style errors (``{"detail": ...}``; 400, 404, 409, 422, 429
with ``retry-after``, 5xx; the server and the injected faults are
tests/fakes/vendor_api.py's). Instances go ``pending`` -> ``ready`` after ``boot_s``;
``paused`` on pause or when their TTL (action ``pause``) runs out; ``error`` when
``boot_error`` is set; ``stuck`` keeps them ``pending``. ``/exec`` really runs the argv, in
a bubblewrap sandbox on this host (read-only root, no network). SSH goes to the test's
sshd (the "gateway"), where every instance's sandbox lives under its own mirror dir.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.vendor_api import Answer, FakeVendorApi

TOKEN = "morph_fake_test_key"
SPEC = {"vcpus": 2, "memory": 4096, "disk_size": 16384}
_DETAILS = {401: "Invalid API key", 404: "Not Found", 405: "Method Not Allowed"}


@dataclass
class FakeInstance:
    """The fake's state of one instance."""

    id: str
    snapshot_id: str
    metadata: dict[str, str]
    ttl_seconds: int | None
    ttl_action: str
    status: str = "pending"
    created: int = field(default_factory=lambda: int(time.time()))
    ready_at: float = 0.0
    touched: float = field(default_factory=time.time)

    def view(self) -> dict[str, Any]:
        expire = int(self.touched + self.ttl_seconds) if self.ttl_seconds else None
        return {
            "id": self.id, "object": "instance", "created": self.created, "status": self.status,
            "spec": SPEC, "refs": {"snapshot_id": self.snapshot_id, "image_id": "morphvm-minimal"},
            "networking": {"internal_ip": "10.0.0.2", "http_services": []},
            "ttl": {"ttl_seconds": self.ttl_seconds, "ttl_expire_at": expire,
                    "ttl_action": self.ttl_action},
            "wake_on": {"wake_on_ssh": False, "wake_on_http": False},
            "metadata": self.metadata,
        }  # fmt: skip


class FakeMorph(FakeVendorApi[FakeInstance]):
    """The fake API server; use as a context manager."""

    token = TOKEN

    def __init__(self, *, boot_s: float = 0.1) -> None:
        super().__init__(boot_s=boot_s)
        self.instances: dict[str, FakeInstance] = {}
        self.snapshots: dict[str, dict[str, Any]] = {"snapshot_golden": self._snapshot("golden")}
        self.boot_error = False
        self.execs: list[list[str]] = []

    def _registry(self) -> dict[str, FakeInstance]:
        return self.instances

    def error(self, status: int) -> dict[str, str]:
        """A FastAPI-style error body: ``{"detail": ...}``."""
        return {"detail": _DETAILS.get(status, f"injected {status}")}

    def _snapshot(self, name: str) -> dict[str, Any]:
        return {"id": f"snapshot_{name}", "object": "snapshot", "created": int(time.time()),
                "status": "ready", "spec": SPEC, "refs": {"image_id": "morphvm-minimal"},
                "digest": None, "metadata": {"name": name}}  # fmt: skip

    def _advance(self) -> None:
        now = time.time()
        for inst in self.instances.values():
            if inst.status == "pending" and not self.stuck and now >= inst.ready_at:
                inst.status = "error" if self.boot_error else "ready"
                inst.touched = now
            if (inst.status == "ready" and inst.ttl_seconds and inst.ttl_action == "pause"
                    and now >= inst.touched + inst.ttl_seconds):  # fmt: skip
                inst.status = "paused"

    def _boot(self, snapshot_id: str, metadata: dict[str, str], ttl: int | None,
              action: str) -> FakeInstance:  # fmt: skip
        inst = FakeInstance(f"morphvm_{secrets.token_hex(4)}", snapshot_id, metadata, ttl, action,
                            ready_at=time.time() + self.boot_s)  # fmt: skip
        self.instances[inst.id] = inst
        return inst

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        parts = path.strip("/").split("/")
        if parts[0] != "instance":
            return 404, self.error(404), {}
        if len(parts) == 1:
            if method == "POST":
                snapshot = (query.get("snapshot_id") or [""])[0]
                if snapshot not in self.snapshots:
                    return 404, {"detail": f"Snapshot {snapshot!r} not found"}, {}
                body = body if isinstance(body, dict) else {}
                action = body.get("ttl_action") or "stop"
                if action not in ("stop", "pause"):
                    return (
                        422,
                        {
                            "detail": [
                                {
                                    "loc": ["body", "ttl_action"],
                                    "msg": "invalid",
                                    "type": "value_error",
                                }
                            ]
                        },
                        {},
                    )
                inst = self._boot(snapshot, dict(body.get("metadata") or {}),
                                  body.get("ttl_seconds"), action)  # fmt: skip
                return 200, inst.view(), {}
            wanted = {k[len("metadata["):-1]: v[0] for k, v in query.items()
                      if k.startswith("metadata[") and k.endswith("]")}  # fmt: skip
            found = [i.view() for i in self.instances.values()
                     if all(i.metadata.get(k) == v for k, v in wanted.items())]  # fmt: skip
            return 200, {"data": found}, {}
        inst = self.instances.get(parts[1])
        if inst is None:
            return 404, {"detail": f"Instance {parts[1]!r} not found"}, {}
        action = parts[2] if len(parts) > 2 else ""
        if method == "GET" and not action:
            return 200, inst.view(), {}
        if method == "DELETE" and not action:
            self.instances.pop(inst.id, None)
            return 200, {}, {}
        if method != "POST":
            return 405, self.error(405), {}
        return self._act(inst, action, query, body)

    def _act(self, inst: FakeInstance, action: str, query: dict[str, list[str]],
             body: Any) -> Answer:  # fmt: skip
        if action == "pause" or action == "resume":
            wanted = "ready" if action == "pause" else "paused"
            if inst.status != wanted:
                return 409, {"detail": f"instance is {inst.status}, not {wanted}"}, {}
            inst.status = "paused" if action == "pause" else "ready"
            inst.touched = time.time()
            return 200, inst.view(), {}
        if action == "ttl":
            body = body if isinstance(body, dict) else {}
            inst.ttl_seconds, inst.ttl_action = body.get("ttl_seconds"), body.get("ttl_action")
            inst.touched = time.time()
            return 200, inst.view(), {}
        if inst.status != "ready":
            return 409, {"detail": f"instance is {inst.status}"}, {}
        if action == "exec":
            command = body.get("command") if isinstance(body, dict) else None
            if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
                return 422, {"detail": "command must be a list of strings"}, {}
            self.execs.append(command)
            return 200, _run(command), {}
        if action in ("snapshot", "branch"):
            snap = self._snapshot(secrets.token_hex(4))
            self.snapshots[snap["id"]] = snap
            if action == "snapshot":
                return 200, snap, {}
            count = int((query.get("count") or ["1"])[0])
            made = [self._boot(snap["id"], {}, inst.ttl_seconds, inst.ttl_action).view()
                    for _ in range(count)]  # fmt: skip
            return 200, {"snapshot": snap, "instances": made}, {}
        return 404, self.error(404), {}


def _run(command: list[str]) -> dict[str, Any]:
    # The instance's "VM" is a bubblewrap sandbox on this host: read-only root, no network.
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs",
            "/tmp", "--unshare-all", "--die-with-parent", "--new-session", "--",
            *command]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"exit_code": 124, "stdout": "", "stderr": "timed out"}
    return {"exit_code": done.returncode, "stdout": done.stdout.decode("utf-8", "replace"),
            "stderr": done.stderr.decode("utf-8", "replace")}  # fmt: skip
