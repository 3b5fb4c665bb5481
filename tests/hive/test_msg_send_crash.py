"""``hal msg send`` whose daemon commits the message, then dies (SIGKILL) before it answers:
the client retries once with the same send key (through the store, the daemon being gone)
and gets the message committed the first time: sent once, and the user told it was sent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.conftest import LeftNothing
from tests.hive.conftest import make_agent
from tests.support.hal import private_env

from hal9999.errors import HiveError
from hal9999.hive import broker
from hal9999.hive.store import update_agent
from hal9999.server.runtime import DaemonFiles
from hal9999.store import Store

pytestmark = pytest.mark.timeout(120)

# `hal serve` in the foreground, killed -9 once it has committed a message to bob (the
# broker wakes the recipient after the commit), before it answers the sender.
KILLED_AFTER_THE_COMMIT = textwrap.dedent(
    """
    import os, runpy, signal, sys
    from hal9999.hive import broker

    real = broker.wake
    def wake(name):
        if name == "bob":
            os.kill(os.getpid(), signal.SIGKILL)
        real(name)
    broker.wake = wake
    sys.argv = ["hal", "serve"]
    runpy.run_module("hal9999", run_name="__main__")
    """
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A home with agent bob, stopped (its mail wakes no turn)."""
    home = tmp_path / "halhome"
    with Store.open(home) as store:
        make_agent(store, "bob")
        update_agent(store, "bob", state="stopped")
    return private_env(home, tmp_path / "xdg", HAL_PROVIDER="local")


SERVE = textwrap.dedent(
    """
    import runpy, sys
    sys.argv = ["hal", "serve"]
    runpy.run_module("hal9999", run_name="__main__")
    """
)

# `hal msg send bob hello` whose first answer from the daemon is lost: the connection
# drops after the daemon committed the message (the daemon lives on).
SEND_ANSWER_LOST = textwrap.dedent(
    """
    import runpy, sys
    from hal9999.server import client

    real = client.DaemonClient.call
    lost = []
    async def call(self, method, path, body=None, query=None):
        answer = await real(self, method, path, body, query)
        if path == "/v1/hive/messages" and not lost:
            lost.append(answer)
            raise client._closed(ConnectionResetError("connection reset by peer"))
        return answer
    client.DaemonClient.call = call
    sys.argv = ["hal", "msg", "send", "bob", "hello"]
    runpy.run_module("hal9999", run_name="__main__")
    """
)


@contextmanager
def serving(env: dict[str, str], script: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``hal serve`` run by ``script``, once it serves; killed at the end if still alive."""
    with log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-c", script], env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out)  # fmt: skip
        try:
            files = DaemonFiles(Path(env["HAL_HOME"]))
            deadline = time.monotonic() + 60
            while files.running() is None:
                assert daemon.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "hal serve did not start"
                time.sleep(0.1)
            yield daemon
        finally:
            if daemon.poll() is None:
                daemon.kill()  # the one this test started
            daemon.wait()


def sent_once(env: dict[str, str], run: subprocess.CompletedProcess[str]) -> None:
    """``run`` (hal msg send bob hello) succeeded, and bob has that one message."""
    # Before: "the hal daemon closed the connection", and sending again sent it twice.
    assert run.returncode == 0, run.stderr
    with Store.open(Path(env["HAL_HOME"])) as store:
        [sent] = broker.inbox(store, "bob")
    assert sent.body == "hello" and run.stdout.startswith(f"sent {sent.id} to bob")


def test_a_send_whose_daemon_died_after_the_commit_is_retried_and_sent_once(
    env: dict[str, str], tmp_path: Path, left_nothing: LeftNothing
) -> None:
    left_nothing(Path(env["HAL_HOME"]), env)
    with serving(env, KILLED_AFTER_THE_COMMIT, tmp_path / "serve.log") as daemon:
        run = subprocess.run([sys.executable, "-m", "hal9999", "msg", "send", "bob", "hello"],
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert daemon.wait(timeout=30) < 0  # killed after its commit, as planned
    sent_once(env, run)


def test_a_send_whose_answer_was_lost_is_retried_through_the_daemon_and_sent_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    with serving(env, SERVE, tmp_path / "serve.log") as daemon:
        run = subprocess.run([sys.executable, "-c", SEND_ANSWER_LOST], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert daemon.poll() is None  # the retry went to the daemon, not around it
        assert "not running" not in run.stdout
    sent_once(env, run)


def test_the_same_send_key_sends_once_and_a_key_is_never_reused_for_another_message(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "home") as store:
        make_agent(store, "bob")
        first = broker.send(store, sender="operator", recipient="bob", body="hi", key="k" * 32)
        again = broker.send(store, sender="operator", recipient="bob", body="hi", key="k" * 32)
        assert again == first and len(broker.inbox(store, "bob")) == 1
        events = store._query("SELECT 1 FROM hive_events WHERE type = 'message_sent'")
        assert len(events) == 1
        with pytest.raises(HiveError, match="was used for another message"):
            broker.send(store, sender="operator", recipient="bob", body="other", key="k" * 32)
        with pytest.raises(HiveError, match="send key must be"):
            broker.send(store, sender="operator", recipient="bob", body="hi", key="no spaces")
        other = broker.send(store, sender="operator", recipient="bob", body="hi", key="j" * 32)
        assert other.id != first.id  # another send: another message
