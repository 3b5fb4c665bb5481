"""One remote command over an open connection (``providers/ssh/channel.py``) against the real
sshd of tests/sshd.py: a fed command's output held within the bound every exec has."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from tests.sshd import Sshd

from hal9999.errors import ExecError
from hal9999.providers.base import STDOUT_LIMIT
from hal9999.providers.ssh import channel
from hal9999.providers.ssh.config import SshHost
from hal9999.providers.ssh.connections import connect

pytestmark = [pytest.mark.ssh]


async def _chunks(*chunks: bytes, fail: str | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise ExecError(fail)


async def test_what_a_fed_command_writes_to_stdout_is_held_within_a_bound(
    sshd_server: Sshd,
) -> None:
    # A push's remote command is hal's own, but what the host prints is not: a compromised
    # host writing to stdout without end had all of it held in the daemon's memory.
    conn = await connect(SshHost.model_validate(sshd_server.host_entry()), limit_s=30,
                         keepalive=5)  # fmt: skip
    try:
        command = f"cat >/dev/null; echo why >&2; head -c {STDOUT_LIMIT * 4} /dev/zero"
        tracemalloc.start()
        try:
            with pytest.raises(ExecError) as raised:
                await asyncio.wait_for(
                    channel.run_fed(conn, command, _chunks(b"x" * 1000), what="pushing /w to box"),
                    60,
                )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 * STDOUT_LIMIT  # the bound and a few chunks, not 4 times it
        said = f"pushing /w to box wrote more than {STDOUT_LIMIT} bytes to stdout and was killed"
        assert raised.value.message == said
        assert raised.value.details["stdout_limit"] == STDOUT_LIMIT
        assert raised.value.details["stderr"] == b"why\n"
        # Within the bound: the status and stderr, the stdin all there.
        code, err = await channel.run_fed(
            conn, "wc -c >&2; echo out", _chunks(b"ab", b"cd"), what="pushing", stdout_limit=4
        )
        assert (code, err.strip()) == (0, b"4")
        # A source that fails ends the command (it would wait for the rest) with its error.
        with pytest.raises(ExecError, match="cannot pack"):
            await asyncio.wait_for(
                channel.run_fed(
                    conn, "cat >/dev/null", _chunks(b"ab", fail="cannot pack"), what="pushing"
                ),
                30,
            )
        assert (await asyncio.wait_for(conn.run("echo alive"), 30)).stdout == "alive\n"
    finally:
        conn.close()
        await conn.wait_closed()
