"""The long-lived host actor of the ``ray`` provider: one per Ray node, owning a ``bwrap``
provider there.

The hal host never sees a node's files: it sends each session directory as a tar (a
*push*), the node unpacks it into a mirror directory of its own, and a local bwrap sandbox
binds the mirror where the spec asked. After every command the writable mirror
directories go back as tars (a *pull*). A pull's tar is made by ``tar`` run INSIDE the
sandbox as its user (:data:`PACK`), so a link the agent planted resolves in its own view,
never on the node; a push is unpacked with :mod:`tarfile`'s ``data`` filter.

Results cross Ray as plain tuples (:func:`failure`), never as pickled exceptions: an
error reaches the user as one line, not as a remote traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import os
import re
import secrets
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hal9999.errors import ExecError, HalError, ProviderError, SandboxNotFound
from hal9999.providers import limits
from hal9999.providers.base import STDOUT_LIMIT, Command, StreamEvent
from hal9999.providers.host import exec as hostexec
from hal9999.providers.ssh import mirror
from hal9999.spec import ArgvCommand, Bind, SandboxSpec
from hal9999.unixsock import own_dir

if TYPE_CHECKING:
    from hal9999.providers.bwrap.provider import BwrapProvider

PACK = 'cd -- "$1" && exec tar -c --numeric-owner -f - .'
"""Inside the sandbox: the directory ``$1`` as a tar on stdout."""
STREAM_WAIT = 0.5
"""Longest a :meth:`NodeHost.stream_next` call waits for output before answering empty."""
ID_LABEL = "hal.ray.id"
"""Label of a node's local sandbox: the ray sandbox id it serves (and takes as its own)."""
_ID = re.compile(r"[0-9a-f]{12}")
NODE_VAR = "HAL_RAY_NODE"
"""Set in every command's environment: the name of the node it runs on."""
Outcome = tuple[Any, ...]
"""``("ok", value)`` or ``("error", kind, message, hint, details)``."""


def failure(exc: HalError) -> Outcome:
    """An error as a tuple that crosses Ray without its traceback."""
    kind = type(exc).__name__
    return ("error", kind, exc.message, exc.hint, dict(getattr(exc, "details", {}) or {}))


def _mirror_spec(spec: SandboxSpec, root: Path) -> SandboxSpec:
    # The node's local sandbox binds the mirror's directories where the spec's host paths were.
    binds = tuple(
        Bind(source=root / f"b{index}", target=bind.target, read_only=bind.read_only)
        for index, bind in enumerate(spec.binds)
    )
    workspace = root / "ws" if spec.workspace is not None else None
    labels = spec.labels | {ID_LABEL: root.name}
    return spec.model_copy(update={"provider": "bwrap", "workspace": workspace, "binds": binds,
                                   "labels": labels})  # fmt: skip


def _node_provider(state_dir: Path) -> BwrapProvider:
    """The node's own bwrap provider; a sandbox there takes the id hal gave it (so
    ``$HAL_SANDBOX`` inside is the id the user sees)."""
    from hal9999.providers.bwrap.provider import BwrapProvider

    class NodeBwrap(BwrapProvider):
        def new_id(self, spec: SandboxSpec) -> str:
            given = spec.labels.get(ID_LABEL, "")
            return given if _ID.fullmatch(given) else super().new_id(spec)

    return NodeBwrap(state_dir=state_dir)


def _ray() -> Any:
    """Ray, imported on first use (it is heavy and optional)."""
    return importlib.import_module("ray")


class NodeHost:
    """What the host actor does, as an ordinary class (the actor wraps it, see :func:`actor`)."""

    def __init__(self, node: str, root: str) -> None:
        self.node = node
        # In a shared place (/var/tmp by default): never through another user's link, nor
        # in a directory they made first or can swap (they would hold the mirrors).
        self.root = own_dir(Path(root), "the Ray node's sandbox mirrors",
                            "[providers.ray] node_dir", ProviderError, parents=True)  # fmt: skip
        (self.root / "m").mkdir(exist_ok=True, mode=0o711)
        self.local = _node_provider(self.root / "bwrap")
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.streams: dict[str, asyncio.Queue[StreamEvent | None]] = {}
        self.stream_tasks: dict[str, asyncio.Task[None]] = {}
        self.pull_locks: dict[str, asyncio.Lock] = {}

    def _dir(self, sandbox_id: str) -> Path:
        if not sandbox_id.isalnum():
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return self.root / "m" / sandbox_id

    async def ping(self) -> Outcome:
        """Who and where this host is: node name, Ray node id, pid."""
        ray = _ray()

        return ("ok", (self.node, ray.get_runtime_context().get_node_id(), os.getpid()))

    async def call(self, op: str, *args: Any) -> Outcome:
        """Run one operation, its :class:`HalError` turned into a tuple."""
        try:
            return ("ok", await getattr(self, f"op_{op}")(*args))
        except HalError as exc:
            return failure(exc)

    # -- lifecycle --------------------------------------------------------------------------
    async def op_create(self, sandbox_id: str, spec: SandboxSpec) -> str:
        directory = self._dir(sandbox_id)
        for index in range(len(spec.binds)):
            (directory / f"b{index}").mkdir(parents=True, exist_ok=True)
        (directory / "ws").mkdir(parents=True, exist_ok=True)
        sandbox = await self.local.create(_mirror_spec(spec, directory))
        (directory / "local").write_text(sandbox.id)
        return sandbox.id

    def _local_id(self, sandbox_id: str) -> str:
        try:
            return (self._dir(sandbox_id) / "local").read_text()
        except FileNotFoundError:
            raise SandboxNotFound(f"no sandbox {sandbox_id} on ray node {self.node}") from None

    async def _sandbox(self, sandbox_id: str) -> Any:
        return await self.local.get(self._local_id(sandbox_id))

    async def op_state(self, sandbox_id: str) -> str:
        local_id = self._local_id(sandbox_id)
        for info in await self.local.list():
            if info.id == local_id:
                return info.state
        raise SandboxNotFound(f"no sandbox {sandbox_id} on ray node {self.node}")

    async def op_stop(self, sandbox_id: str) -> None:
        await self.local.stop(self._local_id(sandbox_id))

    async def op_start(self, sandbox_id: str) -> None:
        await self.local.start(self._local_id(sandbox_id))

    async def op_destroy(self, sandbox_id: str) -> None:
        directory = self._dir(sandbox_id)
        self.pull_locks.pop(sandbox_id, None)
        with contextlib.suppress(SandboxNotFound):
            await self.local.destroy(self._local_id(sandbox_id))
        if directory.exists():
            # What the agent left unreadable must not stop the removal.
            await asyncio.to_thread(_remove_tree, directory)

    # -- commands ---------------------------------------------------------------------------
    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        # Where a command ran is the user's to know (a run's log says which node it was on).
        return {**dict(env or {}), NODE_VAR: self.node}

    async def op_exec(
        self, sandbox_id: str, command: Command, env: Mapping[str, str] | None,
        stdin: bytes | None, timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int = STDOUT_LIMIT,
    ) -> tuple[int, bytes, bytes]:  # fmt: skip
        sandbox = await self._sandbox(sandbox_id)
        result = await sandbox.exec(command, env=self._env(env), stdin=stdin, timeout=timeout,
                                    stdout_limit=stdout_limit)  # fmt: skip
        return (result.exit_code, result.stdout, result.stderr)

    async def op_stream_open(
        self, sandbox_id: str, command: Command, env: Mapping[str, str] | None,
        interactive: bool = False,
    ) -> str:  # fmt: skip
        """Start ``command``; its output is read with :meth:`op_stream_next`. An
        ``interactive`` one runs as the local sandbox's launched process, whose stdin
        :meth:`op_stream_write` feeds."""
        sandbox = await self._sandbox(sandbox_id)
        token = secrets.token_hex(8)
        queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        # Started before the token is handed out: the first write must find its stdin.
        proc = await self._spawn(sandbox, command, env, token) if interactive else None

        async def pump() -> None:
            try:
                if proc is not None:
                    await self._launched(proc, queue, token)
                    return
                stream = sandbox.exec_stream(command, env=self._env(env))
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        await queue.put(event)
            except HalError as exc:
                await queue.put(StreamEvent("stderr", f"hal: {exc.one_line()}\n".encode()))
                await queue.put(StreamEvent("exit", exit_code=255))
            finally:
                await queue.put(None)

        self.streams[token] = queue
        self.stream_tasks[token] = asyncio.get_running_loop().create_task(pump())
        return token

    async def _spawn(self, sandbox: Any, command: Command, env: Mapping[str, str] | None,
                     token: str) -> asyncio.subprocess.Process:  # fmt: skip
        launch = sandbox.launch(command, env=self._env(env))
        proc = await asyncio.create_subprocess_exec(
            *hostexec.parented(launch.argv), env=launch.env, cwd=launch.cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.procs[token] = proc
        return proc

    async def _launched(
        self, proc: asyncio.subprocess.Process, queue: asyncio.Queue[StreamEvent | None],
        token: str,
    ) -> None:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None

        async def copy(reader: asyncio.StreamReader, kind: Literal["stdout", "stderr"]) -> None:
            while data := await reader.read(65536):
                await queue.put(StreamEvent(kind, data))

        try:
            await asyncio.gather(copy(proc.stdout, "stdout"), copy(proc.stderr, "stderr"))
            await queue.put(StreamEvent("exit", exit_code=await proc.wait()))
        finally:
            await self._end(token)

    async def _end(self, token: str) -> None:
        proc = self.procs.pop(token, None)
        if proc is not None and proc.returncode is None:
            # Closed early: the launcher's end (bwrap dies with it) ends what runs inside.
            proc.kill()
            await proc.wait()

    async def op_stream_write(self, token: str, data: bytes) -> None:
        """Feed an interactive command's stdin; empty ``data`` closes it."""
        proc = self.procs.get(token)
        if proc is None or proc.stdin is None:
            return
        stdin = proc.stdin
        with contextlib.suppress(OSError, ConnectionError):
            if not data:
                stdin.close()
                return
            stdin.write(data)
            await stdin.drain()

    async def op_stream_next(self, token: str) -> list[tuple[str, bytes, int | None]]:
        queue = self.streams.get(token)
        if queue is None:
            return [("exit", b"", 255)]
        events: list[StreamEvent | None] = []
        with contextlib.suppress(TimeoutError):
            events.append(await asyncio.wait_for(queue.get(), STREAM_WAIT))
        while not queue.empty():
            events.append(queue.get_nowait())
        out: list[tuple[str, bytes, int | None]] = [
            (e.kind, e.data, e.exit_code) for e in events if e is not None
        ]
        if None in events:
            self.streams.pop(token, None)
            self.stream_tasks.pop(token, None)
        return out

    async def op_stream_close(self, token: str) -> None:
        self.streams.pop(token, None)
        task = self.stream_tasks.pop(token, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, HalError):
                await task
        await self._end(token)  # a pump cancelled before it ever ran

    # -- files ------------------------------------------------------------------------------
    async def op_file(self, sandbox_id: str, op: str, path: str, *args: Any) -> Any:
        sandbox = await self._sandbox(sandbox_id)
        if op not in {"read_file", "write_file_atomic", "exists", "mkdir", "remove"}:
            raise ExecError(f"unknown file operation {op!r}")
        if op == "write_file_atomic":
            return await sandbox.write_file_atomic(path, args[0], mode=args[1])
        if op == "mkdir":
            return await sandbox.mkdir(path, mode=args[0])
        if op == "remove":
            return await sandbox.remove(path, recursive=args[0])
        return await getattr(sandbox, op)(path)

    # -- the mirror -------------------------------------------------------------------------
    async def op_push(self, sandbox_id: str, name: str, target: str, data: bytes) -> None:
        """Replace mirror directory ``name`` by the tar ``data``; hand it to the sandbox's user."""
        if name != "ws" and not (name[:1] == "b" and name[1:].isdigit()):
            raise ExecError(f"no mirror directory {name!r}")
        directory = self._dir(sandbox_id) / name
        sandbox = await self._sandbox(sandbox_id)
        await asyncio.to_thread(mirror.unpack_into, io.BytesIO(data), directory)
        await sandbox.adopt(target)

    async def op_pull(self, sandbox_id: str, target: str) -> bytes:
        """The directory seen at ``target`` inside, as a tar made inside by its user."""
        # One pull at a time per sandbox: a pull of a stopped sandbox starts it for its tar
        # and stops it again, which must not kill another pull's tar.
        async with self.pull_locks.setdefault(sandbox_id, asyncio.Lock()):
            return await self._pull(sandbox_id, target)

    async def _pull(self, sandbox_id: str, target: str) -> bytes:
        local_id = self._local_id(sandbox_id)
        sandbox = await self.local.get(local_id)
        stopped = await self.op_state(sandbox_id) == "stopped"
        if stopped:  # one command to pack it, then stopped again
            sandbox = await self.local.start(local_id)
        # The tar is the agent's to size: as much as ssh's pull takes (the sandbox's disk
        # limit, at most 4 GiB), held here and sent whole over Ray, no more.
        disk_mb = limits.effective(sandbox.spec.resources).disk_mb
        try:
            command = ArgvCommand(argv=("sh", "-c", PACK, "hal-pack", sandbox.path(target)))
            result = await sandbox.exec(command, timeout=600,
                                        stdout_limit=mirror.pull_limit(disk_mb))  # fmt: skip
        except ExecError as exc:
            if "stdout_limit" not in exc.details:
                raise
            raise ExecError(mirror.too_big(target, disk_mb), hint=mirror.TOO_BIG_HINT) from None
        finally:
            if stopped:
                await self.local.stop(local_id)
        if not result.ok:
            raise ExecError(f"cannot pack {target} on ray node {self.node}: "
                            f"{result.stderr.decode('utf-8', 'replace')[-300:]}")  # fmt: skip
        return result.stdout

    # -- the boundary ------------------------------------------------------------------------
    async def op_probe(self, addresses: list[tuple[str, int]]) -> list[str]:
        """Which of ``addresses`` a ``network = "host"`` sandbox on this node can connect to
        (Ray's own ports must be none of them). Run from a real sandbox, not assumed."""
        directory = self.root / "probe"
        directory.mkdir(exist_ok=True)
        spec = SandboxSpec(provider="bwrap", network="host", workspace=directory)
        targets = [f"{host}:{port}" for host, port in addresses]
        # The system python the sandbox sees (not this actor's interpreter, which may live
        # where the sandbox has no view); anything but a clean answer counts as reached.
        command = ArgvCommand(argv=("python3", "-c", PROBE, *targets))
        async with await self.local.create(spec) as sandbox:
            result = await sandbox.exec(command, timeout=120)
        if not result.ok:
            error = result.stderr.decode("utf-8", "replace").strip()[-200:]
            return [f"(probe failed: {error or result.exit_code})"]
        return result.stdout.decode().split()


PROBE = (
    "import socket,sys\nfor t in sys.argv[1:]:\n h,p=t.rsplit(':',1)\n s=socket.socket()\n"
    " s.settimeout(3)\n try:\n  s.connect((h,int(p)))\n  print(t)\n except OSError:\n  pass\n"
)
"""Inside a host-network sandbox: connect to each ``host:port``; print those that answer."""


def _remove_tree(directory: Path) -> None:
    for path, dirs, _ in os.walk(directory):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(path, name), 0o700, follow_symlinks=False)
    shutil.rmtree(directory, ignore_errors=True)


def ray_ports(gcs_address: str) -> list[tuple[str, int]]:
    """The Ray ports a sandbox must not reach: the GCS (``host:port``) and every alive
    node's raylet and object manager, at each address the nodes go by (Ray listens on
    every interface, so the GCS port is tried at every node address too)."""
    ray = _ray()

    host, _, port = gcs_address.rpartition(":")
    gcs_port = int(port) if port.isdigit() else 0
    addresses = {host or "127.0.0.1", "127.0.0.1"}
    ports = {gcs_port}
    for node in ray.nodes():
        if node.get("Alive"):
            addresses.add(str(node.get("NodeManagerAddress", "")))
            ports |= {int(node.get(key) or 0) for key in ("NodeManagerPort", "ObjectManagerPort")}
    with contextlib.suppress(OSError):
        addresses.add(socket.gethostbyname(socket.gethostname()))
    return sorted((a, p) for a in addresses for p in ports if a and p)


_ACTOR: Any = None


def actor() -> Any:
    """The Ray actor class around :class:`NodeHost` (made on first use: Ray loads lazily)."""
    global _ACTOR
    if _ACTOR is None:
        ray = _ray()

        @ray.remote(max_restarts=0, max_concurrency=1000)
        class HostActor:
            """One per node: :class:`NodeHost`'s operations, callable from the hal host."""

            def __init__(self, node: str, root: str) -> None:
                self.host = NodeHost(node, root)

            async def ping(self) -> Outcome:
                return await self.host.ping()

            async def call(self, op: str, *args: Any) -> Outcome:
                return await self.host.call(op, *args)

        _ACTOR = HostActor
    return _ACTOR


__all__ = ["NodeHost", "actor", "failure", "ray_ports"]
