"""The exec channel into a QEMU sandbox without ssh: hal's guest agent on virtio-serial.

The guest's init starts ``hal-agent`` (``image/guest/hal-agent.c``) on the ports named
``hal.exec.N`` before the image's VM state is saved, so a restored VM runs its first command
without an ssh handshake (under TCG that handshake and sshd's forks were about 85 % of a
restore + first command). QEMU exposes each port as a unix socket ``execN`` in the VM's
run directory; a host process claims a port with a ``flock`` on ``execN.lock`` (so
processes never share one), connects, and runs one command: the same ``hal-exec`` argv and
environment the ssh channel would have run, so the command's cgroup, directory, uid,
environment and kills are the same. When every port is busy the caller uses ssh.

Frames, both ways: a type byte, a big-endian 32-bit length, that many bytes (see the C
file for the types). The guest is not trusted: :class:`FrameDecoder` refuses unknown
types and any length over its type's bound before buffering it, skips at most
:data:`MAX_SKIP` bytes while it looks for the answer to its hello (which carries a fresh
random nonce, so output of an earlier connection's command is never taken for this one's),
and every wait has a deadline. A guest that breaks the protocol fails its own command with
:class:`ExecError`; nothing it sends is ever executed or interpreted on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hal9999.errors import ExecError, ProviderError
from hal9999.providers.base import STDOUT_LIMIT, StreamEvent
from hal9999.providers.handle import collect
from hal9999.providers.qemu.vm import RunDir

PORTS = 4
"""Agent ports per VM (``hal.exec.0``..): commands that may run at once over the agent."""
PORT_NAME = "hal.exec.{}"
MAGIC = b"halagnt1"
NONCE = 16
MAX_DATA = 65536
"""The most output one frame from the guest may carry (what the agent sends at most)."""
MAX_REQUEST = 4 << 20
"""The most a command's argv and environment may take (the guest's bound too)."""
MAX_SKIP = 1 << 20
"""Bytes before the hello's answer that are skipped (a previous command's output)."""
HELLO_S = 60.0
"""How long the guest has to answer the hello (a restore under a loaded TCG can be slow)."""
HELLO_RETRY_S = 0.05
"""When the hello is said again if no answer came (see :func:`_hello`); then twice as long
each time, up to :data:`HELLO_RETRY_MAX_S`."""
HELLO_RETRY_MAX_S = 0.2
KEEPALIVE_S = 2.0
"""After this long with nothing from the guest, a ping nudges it (see :mod:`.ssh`) and asks it
to answer (see :data:`ANSWER_S`)."""
PING = 8
"""Bytes of a ping (``P``), which the agent sends back as its pong (``p``). An agent built
before pings (its image's ``agent_pings`` is false) takes ``P`` for a no-op and answers
nothing; an empty ``P`` (what hosts sent before) gets no pong from any agent."""
ANSWER_S = 30.0
"""Longest a command's guest may send nothing at all (no output, no pong to the pings sent
every :data:`KEEPALIVE_S`) before it is taken for hung (a stopped QEMU, a hung kernel) and
the command fails: without it, a dead guest held ``prime`` and the file helpers forever.
Only for an agent known to answer pings (:attr:`Claim.pings`, or one that has answered
one): an older agent's quiet command (a build, an agent thinking) is never failed."""
KILL_S = 5.0
"""How long a killed command's exit status is waited for before the connection is cut."""
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


AgentProtocolError = ExecError
"""The guest's agent sent something it never would: the command is failed, not trusted (an
ExecError: one class per error code, see errors.py)."""


CLOSED = 255
"""The status of a command whose channel closed before its exit status (the VM stopped or
died): what ssh gives when its connection is lost, so callers see the same either way."""
CLOSED_MESSAGE = b"hal: the VM's exec channel closed before the command's exit status\n"


class _Closed(Exception):
    """The guest's end of the port went away (EOF) before the exit status."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame to the guest."""
    return kind + len(payload).to_bytes(4, "big") + payload


def request(args: Sequence[str], env: Mapping[str, str]) -> bytes:
    """The request frame: hal-exec's arguments and the command's environment."""
    items = [*args, *(f"{name}={value}" for name, value in env.items())]
    if any("\0" in item for item in items):
        raise ExecError("a command's arguments and environment cannot contain NUL bytes")
    body = len(args).to_bytes(4, "big") + len(env).to_bytes(4, "big")
    body += b"".join(item.encode() + b"\0" for item in items)
    if len(body) > MAX_REQUEST:
        raise ExecError(f"the command's arguments and environment exceed {MAX_REQUEST} bytes")
    return frame(b"R", body)


Frame = tuple[Literal["stdout", "stderr"], bytes] | tuple[Literal["exit"], int]


class FrameDecoder:
    """Splits what the guest sends into frames of one command, trusting none of it.

    Until the answer to our hello (``A``, 16, the nonce) is seen, bytes are skipped (at
    most :data:`MAX_SKIP`); then only ``O``/``E`` (at most :data:`MAX_DATA` bytes), pongs
    ``p`` (exactly :data:`PING` bytes, counted in :attr:`pongs`) and one ``X`` (exactly 4
    bytes, a status 0-255) are accepted. Anything else raises
    :class:`AgentProtocolError`. Bytes after the exit status are ignored. The buffer never
    holds more than one frame plus what one :meth:`feed` brought.
    """

    def __init__(self, nonce: bytes) -> None:
        self._ack = frame(b"A", nonce)
        self._buf = bytearray()
        self._skipped = 0
        self.answered = False
        self.done = False
        self.pongs = 0

    def feed(self, data: bytes) -> list[Frame]:
        """The complete frames ``data`` finishes."""
        if self.done:
            return []
        self._buf += data
        if not self.answered and not self._find_answer():
            return []
        frames: list[Frame] = []
        while len(self._buf) >= 5:
            kind, length = bytes(self._buf[:1]), int.from_bytes(self._buf[1:5], "big")
            if kind in (b"O", b"E"):
                if length > MAX_DATA:
                    raise AgentProtocolError(f"the VM's exec agent sent a {length}-byte frame")
            elif kind == b"X":
                if length != 4:
                    raise AgentProtocolError("the VM's exec agent sent a malformed exit status")
            elif kind == b"p":
                if length != PING:
                    raise AgentProtocolError("the VM's exec agent sent a malformed pong")
            else:
                raise AgentProtocolError(f"the VM's exec agent sent an unknown frame {kind!r}")
            if len(self._buf) < 5 + length:
                break
            payload = bytes(self._buf[5 : 5 + length])
            del self._buf[: 5 + length]
            if kind == b"p":
                self.pongs += 1
                continue
            if kind == b"X":
                code = int.from_bytes(payload, "big")
                if code > 255:
                    raise AgentProtocolError(f"the VM's exec agent sent exit status {code}")
                frames.append(("exit", code))
                self.done = True
                self._buf.clear()
                break
            frames.append(("stdout" if kind == b"O" else "stderr", payload))
        return frames

    def _find_answer(self) -> bool:
        at = self._buf.find(self._ack)
        if at < 0:
            drop = max(0, len(self._buf) - (len(self._ack) - 1))
            self._skipped += drop
            del self._buf[:drop]
        else:
            self._skipped += at
            del self._buf[: at + len(self._ack)]
        if self._skipped > MAX_SKIP:
            raise AgentProtocolError(
                f"the VM's exec agent sent {self._skipped} bytes without answering"
            )
        self.answered = at >= 0
        return self.answered


@dataclass
class Claim:
    """One agent port held by this process (its lock is released by :meth:`release`)."""

    lock: int
    socket: str
    vm: str = ""
    """The VM's id, for errors."""
    pings: bool = False
    """Whether the VM's agent answers pings (its image's ``agent_pings``): only then is a
    guest that answers nothing for :data:`ANSWER_S` taken for hung."""

    def release(self) -> None:
        """Let another command use the port (idempotent)."""
        if self.lock >= 0:
            os.close(self.lock)
            self.lock = -1


def claim(run: RunDir, ports: int, *, pings: bool = False) -> Claim | None:
    """A free agent port of the VM, or None when all ``ports`` are busy (or there are none);
    ``pings``: its agent answers pings (see :attr:`Claim.pings`)."""
    for index in range(ports):
        try:
            lock = os.open(run.path / f"exec{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                           0o600)  # fmt: skip
        except OSError as exc:
            raise ProviderError(f"cannot use the VM's exec channel: {exc.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            continue
        return Claim(lock, str(run.agent(index)), run.path.name, pings)
    return None


async def stream(
    port: Claim,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: bytes | None = None,
    restored: bool = False,
) -> AsyncGenerator[StreamEvent, None]:
    """Run ``hal-exec ARGS`` with ``env`` in the guest over a claimed port: its output as it
    comes and the exit status last. Closing the iterator early kills the command (the
    agent's hal-exec kills its cgroup) and waits up to :data:`KILL_S` for that to be
    confirmed. The port is released when the iterator ends. ``restored``: the first command
    since the VM was restored (see :func:`_hello`)."""
    try:
        body = request(args, env)
        try:
            reader, writer = await asyncio.wait_for(_connect(port.socket), HELLO_S)
        except (OSError, TimeoutError) as exc:
            raise ExecError(f"cannot connect to VM {port.vm}'s exec agent: "
                            f"{exc or f'not accepted in {HELLO_S:g}s'}",
                            hint="stop or destroy the sandbox") from None  # fmt: skip
    except BaseException:
        port.release()
        raise
    try:
        decoder, early = await _hello(reader, writer, 2 if restored else 1, vm=port.vm)
    except _Closed:
        writer.close()
        port.release()
        yield StreamEvent("stderr", CLOSED_MESSAGE)
        yield StreamEvent("exit", exit_code=CLOSED)
        return
    except BaseException:
        writer.close()
        port.release()
        raise
    pending = body
    for at in range(0, len(stdin or b""), MAX_DATA):
        pending += frame(b"I", (stdin or b"")[at : at + MAX_DATA])
    writer.write(pending + frame(b"i"))
    loop = asyncio.get_running_loop()
    heard = loop.time()
    try:
        for item in early:
            yield _event(item)
        while not decoder.done:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    data = await reader.read(MAX_DATA)
            except TimeoutError:
                # An agent that has answered a ping answers them all, whatever its image says.
                if (port.pings or decoder.pongs) and loop.time() - heard > ANSWER_S:
                    raise _hung(port, decoder) from None
                writer.write(frame(b"P", secrets.token_bytes(PING)))
                continue
            except ConnectionError:
                data = b""
            heard = loop.time()
            if not data:
                decoder.done = True  # nothing to kill: the guest's end is gone
                yield StreamEvent("stderr", CLOSED_MESSAGE)
                yield StreamEvent("exit", exit_code=CLOSED)
                return
            for item in decoder.feed(data):
                yield _event(item)
    finally:
        try:
            if not decoder.done and not writer.is_closing():
                await _kill(reader, writer, decoder)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            port.release()


async def _connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a port's socket, again (a little later each time) until QEMU takes it.

    QEMU takes one connection a port at a time; past its listen backlog (QEMU stopped, or
    slow to take the next connection after the last hung up) a unix socket's non-blocking
    ``connect`` fails with EAGAIN, and asyncio takes the socket, writable and with no
    error, for connected: its first read then failed with EINVAL, an OSError no caller
    expected (seen after a stopped QEMU went on)."""
    wait = 0.01
    while True:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.get_extra_info("socket").getpeername()
        except OSError:  # not connected
            writer.close()
        else:
            return reader, writer
        await asyncio.sleep(wait)
        wait = min(wait * 2, HELLO_RETRY_MAX_S)


def _hung(port: Claim, decoder: FrameDecoder) -> ExecError:
    """The error of a guest that answered nothing for :data:`ANSWER_S` (see :func:`stream`)."""
    quiet = f"VM {port.vm}'s exec agent answered nothing for {ANSWER_S:g}s"
    pinged = "not even a ping" if decoder.pongs else "no ping at all"
    return ExecError(f"{quiet}, {pinged}: its guest is hung; the command was abandoned",
                     hint="stop or destroy the sandbox")  # fmt: skip


def _event(item: Frame) -> StreamEvent:
    if item[0] == "exit":
        return StreamEvent("exit", exit_code=item[1])
    return StreamEvent(item[0], item[1])


async def _hello(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hellos: int = 1, vm: str = ""
) -> tuple[FrameDecoder, list[Frame]]:
    """Say hello until the guest answers (a decoder past its answer, and any frames that
    came with it); the request is sent only then, so a command runs once.

    Just after a restore the guest does not answer at once: for 0.4-1.5 s (TCG, loaded
    machine) hellos go unanswered, and one sent before that can stay unanswered after it
    (a hello alone, followed by nothing, got no answer in 20 s in a test, while the next
    frame sent was answered at once: a lost wakeup like the one :mod:`.ssh` describes
    for sshd, or a lost first write). So the first command after a restore says
    ``hellos=2`` at once, any hello unanswered after :data:`HELLO_RETRY_S` (doubling, up to
    :data:`HELLO_RETRY_MAX_S`) is said again with a new nonce (answers to earlier ones are
    skipped: only the last one's counts), and the request goes only after that answer, so
    the command runs once. Past :data:`HELLO_S`, ExecError."""
    loop = asyncio.get_running_loop()
    deadline, wait = loop.time() + HELLO_S, HELLO_RETRY_S
    while True:
        for _ in range(hellos):
            nonce = secrets.token_bytes(NONCE)
            writer.write(frame(b"H", MAGIC + nonce))
        decoder = FrameDecoder(nonce)
        hellos = 1
        retry_at = min(loop.time() + wait, deadline)
        while not decoder.answered:
            try:
                async with asyncio.timeout_at(retry_at):
                    data = await reader.read(MAX_DATA)
            except TimeoutError:
                break
            except ConnectionError:
                raise _Closed from None
            if not data:
                raise _Closed
            frames = decoder.feed(data)
            if decoder.answered:
                return decoder, frames
        if loop.time() >= deadline:
            raise ExecError(f"VM {vm}'s exec agent did not answer in {HELLO_S:g}s",
                            hint="stop or destroy the sandbox")  # fmt: skip
        wait = min(wait * 2, HELLO_RETRY_MAX_S)


async def _kill(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: FrameDecoder
) -> None:
    """Ask the agent to kill the command and wait (bounded) until it says it is gone; cutting
    the connection kills it too, so a guest that does not answer is simply cut off."""
    with contextlib.suppress(OSError, AgentProtocolError, TimeoutError):
        writer.write(frame(b"K"))
        async with asyncio.timeout(KILL_S):
            while not decoder.done and (data := await reader.read(MAX_DATA)):
                decoder.feed(data)


async def run(
    port: Claim,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: bytes | None,
    time_limit: float | None,
    what: str,
    restored: bool = False,
    stdout_limit: int = STDOUT_LIMIT,
) -> tuple[int, bytes, bytes]:
    """Run to completion: (status, stdout, stderr); past ``time_limit`` or ``stdout_limit``
    bytes of stdout killed, ExecError."""
    result = await collect(
        stream(port, args, env, stdin=stdin, restored=restored), time_limit=time_limit,
        what=what, no_status=-1, stdout_limit=stdout_limit,
        timed_out=None if time_limit is None
        else f"command timed out after {time_limit:g}s and was killed: {what}",
    )  # fmt: skip
    return result.exit_code, result.stdout, result.stderr


async def run_root(
    run_dir: RunDir,
    ports: int,
    argv: Sequence[str],
    *,
    pings: bool,
    stdin: bytes = b"",
    time_limit: float,
    restored: bool = False,
) -> str:
    """Run one of hal's own steps as root in the guest (setup, sync, quiesce): its output,
    or ProviderError (like :func:`.ssh.run_root`); ``pings`` as :func:`claim`'s."""
    port = None
    deadline = asyncio.get_running_loop().time() + time_limit
    while port is None:
        port = claim(run_dir, ports, pings=pings)
        if port is None:
            if asyncio.get_running_loop().time() > deadline:
                raise ProviderError(f"{argv[0]} in the VM: every exec channel stayed busy")
            await asyncio.sleep(0.05)
    try:
        code, out, err = await run(
            port, ["--", *argv], {"PATH": ROOT_PATH}, stdin=stdin, time_limit=time_limit,
            what=argv[0], restored=restored,
        )  # fmt: skip
    except ExecError as exc:
        raise ProviderError(f"{argv[0]} in the VM failed: {exc.message}") from exc
    text = (out + err).decode("utf-8", "replace").strip()
    if code != 0:
        raise ProviderError(f"{argv[0]} in the VM failed: {text[-500:]}")
    return text
