"""The in-sandbox forwarders (python, and perl for images without python): bytes both ways
between ``127.0.0.1:PORT`` and the unix socket, half-closes passed on, gone with their
launcher."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.gateway import GATEWAY, RUNNERS, _connect, _read_all


@pytest.mark.parametrize("kind", ["py", "pl"])
def test_forwarder_carries_bytes_both_ways_and_ends_with_its_launcher(
    sock_dir: Path, kind: str
) -> None:
    path = str(sock_dir / "llm.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        server.settimeout(10)
        script = str(GATEWAY / f"forwarder.{kind}")
        # The launcher: a shell that starts the forwarder, then waits to be killed (the agent).
        # Port 0: the forwarder binds a free port and prints it (a port picked here and bound
        # by the forwarder later could be taken by another process in between).
        launcher = subprocess.Popen(
            ["sh", "-c", '"$@" && exec sleep 60', "launcher", *RUNNERS[kind], script,
             "0", path], stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert launcher.stdout is not None
            port = int(launcher.stdout.readline())  # printed before the parent exits
            assert port > 0
            client = _connect(port)
            with client:
                client.sendall(b"request")
                client.shutdown(socket.SHUT_WR)
                upstream, _ = server.accept()
                with upstream:
                    upstream.settimeout(10)
                    assert _read_all(upstream) == b"request", "half-close passed on"
                    upstream.sendall(b"answer" * 20000)
                client.settimeout(10)
                assert _read_all(client) == b"answer" * 20000
        finally:
            launcher.kill()
            launcher.wait()
            if launcher.stdout is not None:
                launcher.stdout.close()
        # The forwarder (its own session, named by the socket path in its argv) is gone.
        deadline = time.monotonic() + 10
        while _serving(path):
            assert time.monotonic() < deadline, "the forwarder outlived its launcher"
            time.sleep(0.2)


def _serving(path: str) -> bool:
    """Whether a process with ``path`` in its argv (the forwarder) is alive."""
    needle = path.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_bytes().rsplit(b") ", 1)[1][:1]
            except OSError:
                continue
            if needle in cmdline and state != b"Z":
                return True
    return False
