"""The in-process fakes of the vendors' APIs (tests/fakes/vendor_api.py) stop promptly: a
test's fake ends with its test (the provider contract makes one a case)."""

from __future__ import annotations

import socketserver
from typing import Any

import pytest
from tests.fakes.do_api import FakeDigitalOcean
from tests.fakes.morph_api import FakeMorph


@pytest.mark.parametrize("make", [FakeMorph, lambda: FakeDigitalOcean([])], ids=["morph", "do"])
def test_fake_server_looks_for_shutdown_often(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # serve_forever's default poll, 0.5 s, is how long shutdown() waits at worst (~0.4 s a
    # test in the contract's morph and digitalocean cases): the fakes poll every 0.02 s.
    polls: list[float] = []
    serve = socketserver.BaseServer.serve_forever

    def recorded(self: socketserver.BaseServer, poll_interval: float = 0.5) -> None:
        polls.append(poll_interval)
        serve(self, poll_interval)

    monkeypatch.setattr(socketserver.BaseServer, "serve_forever", recorded)
    with make() as fake:
        assert fake.url.startswith("http://127.0.0.1:")
    assert polls and max(polls) <= 0.05
