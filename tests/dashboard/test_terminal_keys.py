"""The terminal's keys reach the attach byte for byte, whenever they come: before the attach
has taken the terminal (tmux puts it in raw mode only when it starts), and more of them than
the pty takes at once (a paste while the attach is slow to read). The attach here is a fake
that behaves as tmux does at those moments; no load is needed to show either."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient

from hal9999.dashboard import terminal

pytestmark = [pytest.mark.timeout(60)]

LATE_RAW = r"""
import fcntl, os, struct, sys, termios, time
# tmux's start: the keys are already waiting when it takes the terminal (TCSANOW, as tmux).
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0" * 4))[0]:
        break
    time.sleep(0.01)
time.sleep(0.2)
mode = termios.tcgetattr(0)
mode[0] &= ~(termios.ICRNL | termios.IXON)
mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
termios.tcsetattr(0, termios.TCSANOW, mode)
os.set_blocking(0, False)
got = b""
try:
    got = os.read(0, 4096)
except BlockingIOError:
    pass
os.write(1, b"GOT " + got.hex().encode() + b" END\r\n")
"""

SLOW_READER = r"""
import fcntl, hashlib, os, select, struct, sys, termios, time
mode = termios.tcgetattr(0)
mode[0] &= ~(termios.ICRNL | termios.IXON)
mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
termios.tcsetattr(0, termios.TCSANOW, mode)
want, flag = int(sys.argv[1]), sys.argv[2]
# Busy (not reading) until every frame was sent and the pty's queue is full.
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not os.path.exists(flag):
    time.sleep(0.01)
while time.monotonic() < deadline:
    if struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0" * 4))[0] >= 4095:
        break
    time.sleep(0.01)
time.sleep(0.5)
got = b""
while len(got) < want and select.select([0], [], [], max(0, deadline - time.monotonic()))[0]:
    got += os.read(0, 65536)
os.write(1, f"GOT {len(got)} {hashlib.sha256(got).hexdigest()} END\r\n".encode())
"""


def _client(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> TestClient:
    monkeypatch.setattr(terminal, "session_of", lambda scope: object())
    monkeypatch.setattr(terminal, "attach_argv", lambda record, write: argv)

    async def get(task_id: str) -> str:
        return task_id

    daemon = SimpleNamespace(tasks=SimpleNamespace(get=get))
    route = WebSocketRoute("/terminal/{task_id:str}", terminal.terminal_endpoint(daemon))
    return TestClient(Starlette(routes=[route]))


def _report(ws: Any) -> str:
    """The fake attach's ``GOT ... END`` line, from the terminal's output until the attach
    ended and the server closed the socket."""
    out = b""
    while (message := ws.receive())["type"] == "websocket.send":
        out += message.get("bytes") or b""
    found = re.search(rb"GOT ([^\r\n]*) END", out)
    assert found, out
    return found.group(1).decode()


def test_keys_sent_before_the_attach_takes_the_terminal_arrive_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Typed at once: a, b, backspace, c, Enter. A cooked pty would hand the attach "ac\n"
    # (the backspace erased b, Enter became Ctrl-J) and echo them to the page.
    keys = "ab\x7fc\r"
    with _client(monkeypatch, [sys.executable, "-c", LATE_RAW]) as client:
        with client.websocket_connect("/terminal/t1?write=1", subprotocols=["hal"]) as ws:
            ws.send_text(json.dumps({"data": keys}))
            got = bytes.fromhex(_report(ws))
    assert got == keys.encode()


def test_a_paste_larger_than_the_pty_takes_arrives_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # ~14 KiB fit in a pty's input queue: the rest waits for the reader, never dropped.
    frames = [f"{n:04d}" + chr(ord("a") + n % 26) * 3996 for n in range(8)]
    sent = "".join(frames).encode()
    flag = tmp_path / "sent"
    argv = [sys.executable, "-c", SLOW_READER, str(len(sent)), str(flag)]
    with _client(monkeypatch, argv) as client:
        with client.websocket_connect("/terminal/t1?write=1", subprotocols=["hal"]) as ws:
            for frame in frames:
                ws.send_text(json.dumps({"data": frame}))
            flag.touch()
            got = _report(ws)
    assert got == f"{len(sent)} {hashlib.sha256(sent).hexdigest()}"
