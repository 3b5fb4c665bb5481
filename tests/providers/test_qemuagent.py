"""The host side of the qemu exec agent, against hostile guests: no VM, a fake guest on the
unix socket QEMU would expose. The guest is not trusted: every length is bounded before it
is buffered, every wait has a deadline, and what it sends only ever fails its own command."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.providers.qemu_guests import fake_guest, hello, read_frame, run_cmd

from hal9999.errors import ExecError
from hal9999.providers.qemu import agent as qemuagent
from hal9999.providers.qemu.agent import AgentProtocolError, FrameDecoder, frame
from hal9999.providers.qemu.vm import RunDir

NONCE = bytes(range(16))
ACK = frame(b"A", NONCE)


def decode_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[qemuagent.Frame]:
    frames: list[qemuagent.Frame] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
    return frames


# -- the decoder --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.booleans())
def test_any_bytes_from_the_guest_decode_within_bounds_or_fail_cleanly(
    chunks: list[bytes], answered: bool
) -> None:
    decoder = FrameDecoder(NONCE)
    if answered:
        decoder.feed(ACK)
    try:
        for chunk in chunks:
            for item in decoder.feed(chunk):
                if item[0] == "exit":
                    assert 0 <= item[1] <= 255
                else:
                    assert len(item[1]) <= qemuagent.MAX_DATA
            assert len(decoder._buf) <= 5 + qemuagent.MAX_DATA + len(chunk)
    except AgentProtocolError:
        pass


def _valid_frames() -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    data = st.tuples(st.sampled_from([b"O", b"E"]), st.binary(max_size=2000))
    return st.lists(data, max_size=8)


@settings(max_examples=200, deadline=None)
@given(_valid_frames(), st.integers(0, 255), st.binary(max_size=200), st.data())
def test_frames_split_anywhere_come_out_whole_after_skipped_bytes(
    frames: list[tuple[bytes, bytes]], code: int, junk: bytes, data: st.DataObject
) -> None:
    stream = junk + ACK + b"".join(frame(k, p) for k, p in frames)
    stream += frame(b"X", code.to_bytes(4, "big")) + b"ignored after the exit"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder(NONCE)
    if ACK[:-1] in junk:  # junk that happens to hold our answer cannot be told apart
        return
    got = decode_all(decoder, chunks)
    want = [("stdout" if k == b"O" else "stderr", p) for k, p in frames]
    assert got == [*want, ("exit", code)]
    assert decoder.done


def test_an_oversized_frame_is_refused_at_its_header() -> None:
    decoder = FrameDecoder(NONCE)
    decoder.feed(ACK)
    with pytest.raises(AgentProtocolError, match="byte frame"):
        decoder.feed(b"O" + (qemuagent.MAX_DATA + 1).to_bytes(4, "big"))
    with pytest.raises(AgentProtocolError, match="byte frame"):
        FrameDecoder(NONCE).feed(ACK + b"E\xff\xff\xff\xff")


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b"Z\0\0\0\0", "unknown frame"),
        (b"A" + (16).to_bytes(4, "big") + NONCE, "unknown frame"),  # a second answer
        (b"X\0\0\0\x05\0\0\0\0\0", "malformed exit"),
        (b"X\0\0\0\x04\0\0\x01\0", "exit status 256"),
        (b"X\0\0\0\x04\xff\xff\xff\xff", "exit status"),
        (frame(b"p", bytes(9)), "malformed pong"),
    ],
)
def test_frames_the_agent_never_sends_are_refused(tail: bytes, why: str) -> None:
    with pytest.raises(AgentProtocolError, match=why):
        FrameDecoder(NONCE).feed(ACK + tail)


def test_output_before_the_answer_is_skipped_but_only_so_much() -> None:
    decoder = FrameDecoder(NONCE)
    stale = frame(b"O", b"a previous command's output") + frame(b"A", bytes(16))
    assert decoder.feed(stale) == [] and not decoder.answered
    assert decoder.feed(ACK + frame(b"O", b"mine")) == [("stdout", b"mine")]
    flood = FrameDecoder(NONCE)
    with pytest.raises(AgentProtocolError, match="without answering"):
        for _ in range(qemuagent.MAX_SKIP // 65536 + 2):
            flood.feed(b"x" * 65536)
    assert len(flood._buf) < len(ACK)


def test_a_request_carries_argv_and_env_apart_and_refuses_nul() -> None:
    body = qemuagent.request(["-u", "1", "--", "echo", ""], {"A": "b=c", "EMPTY": ""})
    assert body[:1] == b"R" and int.from_bytes(body[1:5], "big") == len(body) - 5
    assert body[5:13] == (5).to_bytes(4, "big") + (2).to_bytes(4, "big")
    assert body[13:].split(b"\0")[:-1] == [b"-u", b"1", b"--", b"echo", b"", b"A=b=c", b"EMPTY="]
    with pytest.raises(ExecError, match="NUL"):
        qemuagent.request(["a\0b"], {})
    with pytest.raises(ExecError, match="exceed"):
        qemuagent.request(["x" * qemuagent.MAX_REQUEST], {})


async def test_an_honest_guest_gives_output_status_and_gets_argv_env_stdin(
    run_dir: RunDir,
) -> None:
    got: dict[str, bytes] = {}

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got["request"] = await hello(reader, writer)
        data = b""
        while (item := await read_frame(reader))[0] != b"i":
            data += item[1]
        got["stdin"] = data
        writer.write(frame(b"O", b"out") + frame(b"E", b"err") + frame(b"X", b"\0\0\0\x07"))

    port = qemuagent.claim(run_dir, 1)
    assert port is not None
    async with fake_guest(run_dir, guest):
        code, out, err = await qemuagent.run(
            port, ["--", "cat"], {"K": "v"}, stdin=b"s" * 100_000, time_limit=10, what="cat"
        )
    assert (code, out, err) == (7, b"out", b"err")
    assert got["request"][8:].split(b"\0")[:-1] == [b"--", b"cat", b"K=v"]
    assert got["stdin"] == b"s" * 100_000
    assert port.lock == -1, "the port was released"
    assert qemuagent.claim(run_dir, 1) is not None


async def test_a_channel_that_closes_before_the_status_gives_255_like_ssh(
    run_dir: RunDir,
) -> None:
    """A VM stopped or dead under a running command: ssh exited 255; so does this."""

    async def partial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        writer.write(frame(b"O", b"partial"))
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    for guest, out in ((partial, b"partial"), (silent, b"")):
        async with fake_guest(run_dir, guest):
            code, got, err = await run_cmd(run_dir)
        assert (code, got) == (255, out)
        assert b"closed before the command's exit status" in err
        again = qemuagent.claim(run_dir, 1)
        assert again is not None, "the port was released"
        again.release()


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (b"O\xff\xff\xff\xff", "byte frame"),
        (frame(b"Q", b""), "unknown frame"),
    ],
)
async def test_a_guest_that_breaks_the_protocol_fails_only_its_command(
    run_dir: RunDir, reply: bytes, why: str
) -> None:
    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with fake_guest(run_dir, guest):
        with pytest.raises(ExecError, match=why):
            await run_cmd(run_dir)
    assert qemuagent.claim(run_dir, 1) is not None, "the port was released"


async def test_a_guest_that_never_answers_times_out_and_gets_no_request(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemuagent, "HELLO_S", 0.6)
    monkeypatch.setattr(qemuagent, "HELLO_RETRY_S", 0.1)
    received = bytearray()

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    async with fake_guest(run_dir, guest):
        with pytest.raises(ExecError, match=r"did not answer in 0\.6s"):
            await run_cmd(run_dir)
    kinds, at = [], 0
    while at + 5 <= len(received):
        kinds.append(bytes(received[at : at + 1]))
        at += 5 + int.from_bytes(received[at + 1 : at + 5], "big")
    assert len(kinds) >= 2 and set(kinds) == {b"H"}, "said again; no command was sent"


async def test_a_slow_guest_is_nudged_bounded_by_the_timeout_and_told_to_kill(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemuagent, "KEEPALIVE_S", 0.1)

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        writer.write(frame(b"O", b"so far"))

    async with fake_guest(run_dir, guest) as seen:
        port = qemuagent.claim(run_dir, 1)
        assert port is not None
        with pytest.raises(ExecError, match=r"timed out after 0\.5s") as caught:
            await qemuagent.run(port, ["--", "x"], {}, stdin=None, time_limit=0.5, what="x")
        assert caught.value.details["stdout"] == b"so far"
    assert b"P" in seen, "a quiet guest is nudged"
    assert b"K" in seen, "the guest was told to kill the command"


async def test_closing_a_stream_early_kills_the_command_and_waits_for_it(
    run_dir: RunDir,
) -> None:
    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        writer.write(frame(b"O", b"first"))

    async with fake_guest(run_dir, guest) as seen:
        port = qemuagent.claim(run_dir, 1)
        assert port is not None
        events = qemuagent.stream(port, ["--", "x"], {})
        first = await anext(events)
        assert first.data == b"first"
        await events.aclose()
        assert b"K" in seen
    assert port.lock == -1


async def test_a_guest_that_ignores_the_kill_is_cut_off(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemuagent, "KILL_S", 0.3)

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        writer.write(frame(b"O", b"x"))
        await asyncio.sleep(30)  # never answers the kill

    async with fake_guest(run_dir, guest):
        port = qemuagent.claim(run_dir, 1)
        assert port is not None
        events = qemuagent.stream(port, ["--", "x"], {})
        await anext(events)
        async with asyncio.timeout(5):
            await events.aclose()


def test_ports_are_claimed_one_holder_at_a_time(run_dir: RunDir) -> None:
    held = [qemuagent.claim(run_dir, 2) for _ in range(2)]
    assert all(held) and len({p.socket for p in held if p}) == 2
    assert qemuagent.claim(run_dir, 2) is None, "both busy: the caller uses ssh"
    assert qemuagent.claim(run_dir, 0) is None, "an image without the agent"
    assert held[1] is not None
    held[1].release()
    again = qemuagent.claim(run_dir, 2)
    assert again is not None and again.socket == held[1].socket


async def test_an_unanswered_hello_is_said_again_before_the_request_goes(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Just after a restore QEMU can drop the guest's first answer: the host says hello
    again (a new nonce), and sends the command only once one is answered, so it runs once."""
    monkeypatch.setattr(qemuagent, "HELLO_RETRY_S", 0.1)
    kinds: list[bytes] = []

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await read_frame(reader)  # "lost": never answered
        kinds.append(first[0])
        writer.write(frame(b"A", first[1][8:])[:-1])  # nor is half an answer taken for one
        kinds.append((await read_frame(reader))[0])
        body = await hello(reader, writer)
        kinds.append(b"R" if body else b"")
        writer.write(frame(b"O", b"once") + frame(b"X", bytes(4)))

    async with fake_guest(run_dir, guest):
        assert await run_cmd(run_dir) == (0, b"once", b"")
    assert kinds[:2] == [b"H", b"H"] and kinds[2] == b"R"
