"""Another local user cannot lock the operator out of a real ``hal serve``'s TCP port.

Any local user reaches 127.0.0.1. Its idle connections took the listener's shared places for
unauthenticated connections (reopened as fast as the head deadline closed them), and the
operator's requests to the API and the dashboard were answered 503 ``busy``. Each local user
now has places of its own on loopback (its uid, from the kernel's socket table), and the
daemon's own user has its own."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.hive.conftest import local_hal

from hal9999.server.listen import MAX_PER_PEER, MAX_UNAUTHENTICATED
from hal9999.server.peeruid import tcp_owner
from hal9999.server.runtime import DaemonFiles

pytestmark = pytest.mark.timeout(180)

NOBODY = 65534
HOLDER = """
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held, said = [], False
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    # Reopen every connection the daemon closed (a 503, the head deadline): always `count`.
    held = [c for c in held if c.fileno() >= 0]
    while len(held) < count:
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    if not said:
        print("holding", flush=True)
        said = True
    for c in list(held):
        c.setblocking(False)
        try:
            if c.recv(4096) == b"":
                c.close()
        except BlockingIOError:
            pass
        except OSError:
            c.close()
    time.sleep(0.05)
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A running ``hal serve``'s TCP port and API token."""
    tmp_path.chmod(0o755)
    home = tmp_path / "halhome"
    hal = local_hal(home, tmp_path)
    started = hal("serve", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        info = DaemonFiles(home).read_info()
        assert info is not None and info.port
        yield info.port, (home / "token").read_text().strip()
    finally:
        assert hal("serve", "--stop").returncode == 0


def _as_nobody(*argv: str) -> list[str]:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to act as another local user")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def test_idle_connections_of_another_local_user_do_not_lock_the_operator_out(
    served: tuple[int, str],
) -> None:
    port, token = served
    count = MAX_UNAUTHENTICATED + MAX_PER_PEER  # more than every shared place
    holder = subprocess.Popen(
        _as_nobody(sys.executable, "-c", HOLDER, str(port), str(count)),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        time.sleep(0.5)  # its connections are accepted and counted
        answered = []
        started = time.monotonic()
        for n in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                if n % 2:  # the dashboard's page, which needs no credentials
                    conn.request("GET", "/", headers={"Host": f"127.0.0.1:{port}"})
                else:
                    conn.request("GET", "/v1/tasks", headers={"Authorization": f"Bearer {token}"})
                answer = conn.getresponse()
                answered.append((answer.status, answer.read()[:200]))
            except OSError as exc:
                answered.append((0, repr(exc).encode()))
            finally:
                conn.close()
            time.sleep(0.2)
        took = time.monotonic() - started
        assert holder.poll() is None, "the other user's connections were held throughout"
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert [status for status, _ in answered] == [200] * 20, answered
    assert took < 20 + 4 * 2, f"the operator's 20 requests took {took:.1f}s"


def test_the_kernel_names_the_local_user_of_a_loopback_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        holder = subprocess.Popen(
            _as_nobody(sys.executable, "-c", HOLDER, str(port), "1"),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            conn, _ = listener.accept()
            with conn:
                assert tcp_owner(conn.getpeername(), conn.getsockname()) == NOBODY
                mine = socket.create_connection(("127.0.0.1", port))
                with mine:
                    theirs, _ = listener.accept()
                    with theirs:
                        owner = tcp_owner(theirs.getpeername(), theirs.getsockname())
                        assert owner == os.getuid()
        finally:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()
