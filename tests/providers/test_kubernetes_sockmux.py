"""The socket channel into a pod (hal9999.providers.k8s.sockmux): the framing against hostile
bytes, and host unix sockets answering inside a pod of the fake API server over one exec."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fakes.k8s_api import FakeKube
from tests.support.kubernetes import make, spec

from hal9999.providers.k8s import sockmux
from hal9999.providers.k8s.sandbox import KubeSandbox
from hal9999.providers.k8s.sockmux import (
    ACK,
    CLOSE,
    DATA,
    EOF,
    MAX_PAYLOAD,
    OPEN,
    READY,
    WINDOW,
    Decoder,
    Frame,
    HostMux,
    MuxProtocolError,
    encode,
)
from hal9999.spec import ArgvCommand, Bind

frames = st.one_of(
    st.builds(Frame, st.just(DATA), st.integers(1, 2**32 - 1),
              st.binary(min_size=1, max_size=2048)),
    st.builds(Frame, st.sampled_from([EOF, CLOSE]), st.integers(1, 2**32 - 1)),
    st.builds(Frame, st.just(OPEN), st.integers(1, 2**32 - 1), st.binary(min_size=1, max_size=1)),
    st.builds(Frame, st.just(ACK), st.integers(1, 2**32 - 1), st.binary(min_size=4, max_size=4)),
    st.just(Frame(READY, 0)),
)  # fmt: skip


@given(st.lists(frames, max_size=20), st.lists(st.integers(1, 64), max_size=40))
def test_frames_survive_any_cutting_of_the_stream(wanted: list[Frame], cuts: list[int]) -> None:
    data = b"".join(encode(f) for f in wanted)
    decoder, got, at = Decoder(), [], 0
    for cut in cuts:
        got += decoder.feed(data[at : at + cut])
        at += cut
    got += decoder.feed(data[at:])
    assert got == wanted


@settings(max_examples=400)
@given(st.binary(max_size=4096), st.integers(1, 300))
def test_hostile_bytes_give_frames_or_a_protocol_error_and_never_buffer_much(
    data: bytes, step: int
) -> None:
    decoder = Decoder()
    try:
        for at in range(0, len(data), step):
            for frame in decoder.feed(data[at : at + step]):
                assert frame.kind in (OPEN, DATA, EOF, CLOSE, ACK, READY)
                assert len(frame.payload) <= MAX_PAYLOAD
            assert len(decoder._buffer) < 9 + MAX_PAYLOAD
    except MuxProtocolError:
        pass


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (bytes([9, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown frame kind"),
        (bytes([DATA, 0, 0, 0, 1]) + (MAX_PAYLOAD + 1).to_bytes(4, "big"), "with"),
        (bytes([DATA, 0, 0, 0, 1]) + (2**32 - 1).to_bytes(4, "big"), "with"),
        (bytes([ACK, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0]), "with 2 bytes"),
        (bytes([READY, 0, 0, 0, 7, 0, 0, 0, 0]), "READY"),
        (bytes([DATA, 0, 0, 0, 0, 0, 0, 0, 1, 0]), "READY"),
    ],
)
def test_a_bad_header_is_refused_before_its_payload_arrives(raw: bytes, why: str) -> None:
    with pytest.raises(MuxProtocolError, match=why):
        Decoder().feed(raw[:9])


async def test_the_host_opens_only_its_own_sockets_and_bounds_the_pod() -> None:
    mux = HostMux(["/nonexistent/llm.sock"])
    with pytest.raises(MuxProtocolError, match="bad OPEN"):
        mux.received(encode(Frame(OPEN, 1, b"\x01")))  # index 1: no such socket
    mux = HostMux(["/nonexistent/llm.sock"])
    for cid in range(1, sockmux.MAX_CONNECTIONS + 1):
        mux.received(encode(Frame(OPEN, cid, b"\x00")))
    with pytest.raises(MuxProtocolError, match="more than"):
        mux.received(encode(Frame(OPEN, 9999, b"\x00")))
    mux.close_all()
    mux = HostMux(["/nonexistent/llm.sock"])
    mux.received(encode(Frame(OPEN, 1, b"\x00")))
    with pytest.raises(MuxProtocolError, match="overran its window"):
        for _ in range(WINDOW // MAX_PAYLOAD + 1):  # the pod ignores the window
            mux.received(encode(Frame(DATA, 1, bytes(MAX_PAYLOAD))))
    mux.close_all()
    await asyncio.sleep(0)


# -- live, in a pod of the fake ------------------------------------------------------------


@pytest.fixture
def echo_dir(sock_dir: Path) -> Iterator[Path]:
    """A directory with an echo server's unix socket (answers "echo:" + all it read)."""
    where = sock_dir / "chan"
    where.mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(where / "echo.sock"))
    server.listen(16)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            got = b""
            while data := conn.recv(65536):
                got += data
            conn.sendall(b"echo:" + got)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn, _ = server.accept()
                threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield where
    stop.set()
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)


CLIENT = r"""
import socket, sys, threading
path, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def one(i, out):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    body = bytes([65 + i % 26]) * size
    s.sendall(body); s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = s.recv(65536)
        if not d: break
        got += d
    s.close()
    out[i] = got == b"echo:" + body
out = {}
ts = [threading.Thread(target=one, args=(i, out)) for i in range(count)]
[t.start() for t in ts]; [t.join() for t in ts]
print("ok" if all(out.values()) and len(out) == count else "bad %r" % out)
"""


@contextlib.asynccontextmanager
async def channel_in_pod(
    hal_home: Path, echo_dir: Path, said: list[str]
) -> AsyncIterator[tuple[KubeSandbox, sockmux.SocketChannel]]:
    """A pod with ``echo_dir`` bound at /hal-gateway, and its started socket channel."""
    bind = Bind(source=echo_dir, target="/hal-gateway", read_only=True)
    async with await make(hal_home).create(spec(binds=(bind,))) as sandbox:
        assert isinstance(sandbox, KubeSandbox)
        await sandbox.push(writable=False)
        channel = sockmux.SocketChannel(sandbox, said.append)
        await channel.start()
        yield sandbox, channel


@pytest.mark.parametrize("interpreter", ["python3", "perl"])
async def test_host_sockets_answer_in_the_pod_over_one_exec(
    fake_k8s: FakeKube, hal_home: Path, echo_dir: Path, monkeypatch: pytest.MonkeyPatch,
    interpreter: str,
) -> None:  # fmt: skip
    if interpreter == "perl":  # an image without python3: the perl listener
        monkeypatch.setattr(sockmux, "BOOT", sockmux.BOOT.replace("command -v python3", "false"))
    said: list[str] = []
    async with channel_in_pod(hal_home, echo_dir, said) as (sandbox, channel):
        try:
            inside = sandbox.path("/hal-gateway") + "/echo.sock"
            # Eight connections at once, each larger than the window: every one comes back.
            command = ArgvCommand(argv=("python3", "-c", CLIENT, inside, str(WINDOW * 3), "8"))
            result = await sandbox.exec(command, timeout=60)
            assert result.stdout.strip() == b"ok", result
        finally:
            await channel.stop()
        assert said == []
        # The listener and its socket are gone with the channel.
        gone = await sandbox.exec(ArgvCommand(argv=("test", "-e", inside)))
        assert gone.exit_code == 1
        ps = await sandbox.exec(ArgvCommand(argv=("sh", "-c", "ps ax -o args || true")))
        assert b"hal-sockmux" not in ps.stdout and b"python3 -I -S" not in ps.stdout
        assert b"perl -e" not in ps.stdout


async def test_without_python_in_the_image_one_line_and_the_agent_runs_on(
    fake_k8s: FakeKube, hal_home: Path, echo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    monkeypatch.setattr(sockmux, "BOOT", 'echo "python3: not found" >&2; exit 127')
    async with channel_in_pod(hal_home, echo_dir, said) as (_, channel):
        await channel.stop()
    assert len(said) == 1 and "python3: not found" in said[0], said
    assert os.path.exists(echo_dir / "echo.sock")


async def test_a_host_socket_with_a_full_backlog_is_waited_for_not_lost(sock_dir: Path) -> None:
    # A unix connect past a full backlog fails at once (EAGAIN); asyncio's connect took it
    # for one in progress, and the pod's connection got an unconnected socket: its bytes
    # went nowhere and it was closed. Now the mux waits (bounded) for room.
    path = str(sock_dir / "llm.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(0)
        held = []
        while True:  # the host's listener busy: its backlog full
            conn = socket.socket(socket.AF_UNIX)
            conn.setblocking(False)
            try:
                conn.connect(path)
            except BlockingIOError:
                conn.close()
                break
            held.append(conn)
        mux = HostMux([path])
        mux.received(encode(Frame(OPEN, 1, b"\x00")))
        mux.received(encode(Frame(DATA, 1, b"hello")))  # kept until it is connected
        await asyncio.sleep(0.3)  # the mux's connect finds no room meanwhile
        for conn in held:
            conn.close()
        server.settimeout(10)
        got = b""
        for _ in range(len(held) + 1):  # the held ones (closed: nothing), then the mux's
            accepted, _ = await asyncio.to_thread(server.accept)
            with accepted:
                accepted.settimeout(10)
                got = await asyncio.to_thread(accepted.recv, 5)
            if got:
                break
        assert got == b"hello"
        mux.close_all()
        await asyncio.sleep(0)
