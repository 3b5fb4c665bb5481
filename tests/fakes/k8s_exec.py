"""The pods of the fake Kubernetes API server (tests/fakes/k8s_api.py): each a bubblewrap
sandbox on this host (its own pid, mount, network, ipc and uts namespaces, read-only system,
``/hal`` and ``/tmp`` writable), and the exec subresource's websocket, which enters its
namespaces with ``nsenter`` as kubelet's runtime would, so every command of a pod shares its
processes and files; closing an exec stream does not kill its process (as kubelet does not).
Also the ``metav1.Status`` errors both halves answer with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FakePod:
    """The fake's state of one pod."""

    body: dict[str, Any]
    root: Path
    created: float = field(default_factory=time.monotonic)
    stuck: bool = False
    init: asyncio.subprocess.Process | None = None
    child_pid: int | None = None
    execs: set[asyncio.subprocess.Process] = field(default_factory=set)


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A metav1.Status object."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}  # fmt: skip
    if details:
        body["details"] = details
    return body


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           409: "Conflict", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 504: "Timeout"}  # fmt: skip


class PodRuntime:
    """The pods' processes and the exec websocket; mixed into :class:`FakeKube`, whose
    state (pods, faults, calls) it uses."""

    pods: dict[tuple[str, str], FakePod]
    calls: list[tuple[str, str]]
    subprotocols: list[str]
    offer: tuple[str, ...] | None
    canary: bytes | None
    canary_seen: int
    _fault: Any
    _authorized: Any
    _view: Any

    async def _boot(self, pod: FakePod) -> None:
        """The pod's namespaces: a bubblewrap whose pid 1 holds them (its main process).
        Running once its command has started: bwrap reports the child's pid before that
        child has built the root, and an exec entering it then found no ``mkdir`` (seen on
        a loaded machine)."""
        read, write = os.pipe()
        ready_read, ready_write = os.pipe()
        system = ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib64"):
            system += ["--ro-bind-try", f"/{name}", f"/{name}"]
        argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--die-with-parent", *system, "--ro-bind", "/etc", "/etc", "--proc", "/proc",
                "--dev", "/dev", "--bind", str(pod.root / "hal"), "/hal",
                "--bind", str(pod.root / "tmp"), "/tmp", "--chdir", "/hal",
                "--info-fd", str(write), "--",
                "sh", "-c", f"echo ready >/proc/self/fd/{ready_write}; trap 'exit 0' TERM; "
                "while :; do sleep 3600 & wait $!; done"]  # fmt: skip
        try:
            pod.init = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(write, ready_write), env={"PATH": "/usr/bin:/bin"},
                stdin=asyncio.subprocess.DEVNULL)  # fmt: skip
        finally:
            os.close(write)
            os.close(ready_write)
        raw = b""
        try:
            while b"}" not in raw:  # bwrap writes its info JSON in pieces
                chunk = await asyncio.to_thread(os.read, read, 4096)
                if not chunk:
                    raise RuntimeError("bwrap gave no info (did it start?)")
                raw += chunk
            if not await asyncio.to_thread(os.read, ready_read, 16):
                raise RuntimeError("the pod's command did not start")
        finally:
            os.close(read)
            os.close(ready_read)
        info, _ = json.JSONDecoder().raw_decode(raw.decode())
        pod.child_pid = int(info["child-pid"])

    async def _kill(self, pod: FakePod) -> None:
        for proc in (*pod.execs, pod.init):
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in (*pod.execs, pod.init):
            if proc is not None:
                await proc.wait()
        shutil.rmtree(pod.root, ignore_errors=True)

    async def _kill_all(self) -> None:
        for pod in list(self.pods.values()):
            await self._kill(pod)
        self.pods.clear()

    async def _exec(self, ws: Any) -> None:
        from starlette.responses import JSONResponse

        ns, name = ws.path_params["ns"], ws.path_params["name"]
        self.calls.append(("EXEC", str(ws.url)))  # with its query: the argv
        self._watch(str(ws.url).encode())
        deny: tuple[int, dict[str, Any]] | None = None
        fault, body = await self._fault("EXEC", ws.url.path)
        pod = self.pods.get((ns, name))
        if not self._authorized(ws.headers):
            deny = (401, status(401, "Unauthorized", "Unauthorized"))
        elif fault is not None and body is not None:
            deny = (fault.status, body)
        elif pod is None:
            deny = (404, status(404, "NotFound", f'pods "{name}" not found'))
        elif self._view(pod)["status"]["phase"] != "Running":
            deny = (400, status(400, "BadRequest", f"pod {name} is not running"))
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",")]
        spoken = self.offer or ("v5.channel.k8s.io", "v4.channel.k8s.io")
        chosen = next((p for p in spoken if p in offered), None)
        if deny is None and chosen is None:
            deny = (400, status(400, "BadRequest", "no supported exec subprotocol"))
        if deny is not None:
            await ws.send_denial_response(JSONResponse(deny[1], status_code=deny[0]))
            return
        assert pod is not None and pod.child_pid is not None
        self.subprotocols.append(str(chosen))
        await ws.accept(subprotocol=chosen)
        argv = ws.query_params.getlist("command")
        want_stdin = ws.query_params.get("stdin") == "true"
        proc = await asyncio.create_subprocess_exec(
            "nsenter", "-t", str(pod.child_pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
            "--", *argv, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/"},
            stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        pod.execs.add(proc)
        await self._pump(ws, proc, chosen == "v5.channel.k8s.io")
        pod.execs.discard(proc)

    def _watch(self, data: bytes) -> None:
        if self.canary and self.canary in data:
            self.canary_seen += 1

    async def _pump(self, ws: Any, proc: asyncio.subprocess.Process, v5: bool) -> None:
        from starlette.websockets import WebSocketDisconnect

        gone = asyncio.Event()

        async def out(stream: asyncio.StreamReader | None, channel: int) -> None:
            assert stream is not None
            while chunk := await stream.read(65536):
                if not gone.is_set():
                    with contextlib.suppress(Exception):
                        await ws.send_bytes(bytes([channel]) + chunk)

        async def inbound() -> None:
            try:
                while True:
                    data = await ws.receive_bytes()
                    self._watch(data)
                    if data[:1] == b"\x00" and proc.stdin is not None and len(data) > 1:
                        with contextlib.suppress(ConnectionError):
                            proc.stdin.write(data[1:])
                            await proc.stdin.drain()
                    elif v5 and data[:2] == b"\xff\x00" and proc.stdin is not None:
                        proc.stdin.close()
            except (WebSocketDisconnect, RuntimeError, KeyError):
                gone.set()

        reader = asyncio.create_task(inbound())
        await asyncio.gather(out(proc.stdout, 1), out(proc.stderr, 2))
        code = await proc.wait()
        code = 128 - code if code < 0 else code  # killed by a signal: the shell's number
        if proc.stdin is not None:
            proc.stdin.close()
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        if gone.is_set():
            return
        if code == 0:
            final: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            final = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        with contextlib.suppress(Exception):
            await ws.send_bytes(b"\x03" + json.dumps(final).encode())
            await ws.close()  # fmt: skip
