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
with ``retry-after``, 5xx). Instances go ``pending`` -> ``ready`` after ``boot_s``;
``paused`` on pause or when their TTL (action ``pause``) runs out; ``error`` when
``boot_error`` is set; ``stuck`` keeps them ``pending``. ``/exec`` really runs the argv, in
a bubblewrap sandbox on this host (read-only root, no network). SSH goes to the test's
sshd (the "gateway"), where every instance's sandbox lives under its own mirror dir.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "morph_fake_test_key"
SPEC = {"vcpus": 2, "memory": 4096, "disk_size": 16384}


@dataclass
class Fault:
    """A status given instead of the real answer to matching calls."""

    status: int
    method: str | None = None
    path_prefix: str = "/"
    times: int = 1
    retry_after: int | None = None


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


class FakeMorph:
    """The fake API server; use as a context manager."""

    def __init__(self, *, boot_s: float = 0.1) -> None:
        self.boot_s = boot_s
        self.instances: dict[str, FakeInstance] = {}
        self.snapshots: dict[str, dict[str, Any]] = {"snapshot_golden": self._snapshot("golden")}
        self.faults: list[Fault] = []
        self.slow_s = 0.0
        self.stuck = False
        self.boot_error = False
        self.calls: list[tuple[str, str, int]] = []
        self.execs: list[list[str]] = []
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeMorph:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, status: int, **kw: Any) -> None:
        """Answer the next matching call(s) with ``status``."""
        with self.lock:
            self.faults.append(Fault(status, **kw))

    def vanish(self, instance_id: str) -> None:
        """The instance disappears."""
        with self.lock:
            self.instances.pop(instance_id, None)

    def live(self) -> list[FakeInstance]:
        """Instances that exist now."""
        with self.lock:
            self._tick()
            return list(self.instances.values())

    def _snapshot(self, name: str) -> dict[str, Any]:
        return {"id": f"snapshot_{name}", "object": "snapshot", "created": int(time.time()),
                "status": "ready", "spec": SPEC, "refs": {"image_id": "morphvm-minimal"},
                "digest": None, "metadata": {"name": name}}  # fmt: skip

    def _tick(self) -> None:
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

    def handle(self, method: str, path: str, query: dict[str, list[str]], auth: str,
               body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        """One call: (status, JSON, extra headers)."""
        if self.slow_s:
            time.sleep(self.slow_s)
        with self.lock:
            for fault in self.faults:
                if (fault.times > 0 and fault.method in (None, method)
                        and path.startswith(fault.path_prefix)):  # fmt: skip
                    fault.times -= 1
                    extra = {"retry-after": str(fault.retry_after)} if fault.retry_after else {}
                    return fault.status, {"detail": f"injected {fault.status}"}, extra
            if auth != f"Bearer {TOKEN}":
                return 401, {"detail": "Invalid API key"}, {}
            self._tick()
            return self._route(method, path.strip("/").split("/"), query, body)

    def _route(self, method: str, parts: list[str], query: dict[str, list[str]],
               body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        if parts[0] != "instance":
            return 404, {"detail": "Not Found"}, {}
        if len(parts) == 1:
            if method == "POST":
                snapshot = (query.get("snapshot_id") or [""])[0]
                if snapshot not in self.snapshots:
                    return 404, {"detail": f"Snapshot {snapshot!r} not found"}, {}
                body = body if isinstance(body, dict) else {}
                action = body.get("ttl_action") or "stop"
                if action not in ("stop", "pause"):
                    return 422, {"detail": [{"loc": ["body", "ttl_action"],
                                             "msg": "invalid", "type": "value_error"}]}, {}
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
            return 405, {"detail": "Method Not Allowed"}, {}
        return self._act(inst, action, query, body)

    def _act(self, inst: FakeInstance, action: str, query: dict[str, list[str]],
             body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
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
        return 404, {"detail": "Not Found"}, {}


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


def _handler(fake: FakeMorph) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, answer, extra = fake.handle(
                self.command, split.path, parse_qs(split.query),
                self.headers.get("authorization", ""), body,
            )  # fmt: skip
            with fake.lock:
                fake.calls.append((self.command, split.path, status))
            data = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

    return Handler
