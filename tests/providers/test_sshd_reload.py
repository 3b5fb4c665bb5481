"""The fakes' sshd restart (tests/fakes/sshd_reload.py, used by the fake DigitalOcean API and
the fake limactl when a "VM" gets its host key) waits for the new listener itself, not a
fixed pause: the suite paid 0.2-0.3 s a boot, and under load the pause could end while the
old listener was still there."""

from __future__ import annotations

import socket

import pytest
from tests.fakes import sshd_reload
from tests.fakes.sshd_reload import listener, reload_sshd
from tests.sshd import Sshd

pytestmark = pytest.mark.ssh


def test_the_wait_ends_with_a_new_listener_that_answers(
    lima_sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = lima_sshd.proc.pid
    before = listener(pid, 22)
    assert before is not None
    pauses: list[float] = []
    sleep = sshd_reload.sleep

    def counted(seconds: float) -> None:
        pauses.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(sshd_reload, "sleep", counted)
    reload_sshd(pid)
    assert listener(pid, 22) not in (None, before)  # the old one gone, sshd re-executed
    assert max(pauses, default=0) <= 0.005, "a fixed pause instead of the condition"
    with socket.create_connection((lima_sshd.address, 22), timeout=10) as conn:
        assert conn.recv(64).startswith(b"SSH-2.0-")
