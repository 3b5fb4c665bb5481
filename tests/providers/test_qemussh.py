"""hal's own root steps over a VM's ssh channel (``qemussh.run_root``), against the real sshd
of tests/sshd.py standing in for the guest's (the same ssh command line, a config that
reaches the test server instead of the VM's socket): seconds, not a VM boot."""

from __future__ import annotations

import tracemalloc

import pytest
from tests.sshd import USER, Sshd

from hal9999.errors import ProviderError
from hal9999.providers.base import STDOUT_LIMIT
from hal9999.providers.qemu import ssh as qemussh
from hal9999.providers.qemu.vm import RunDir

pytestmark = [pytest.mark.ssh]


@pytest.fixture
def guest(sshd_server: Sshd, run_dir: RunDir) -> RunDir:
    """``run_dir`` whose ssh configuration reaches the test sshd as host ``hal``."""
    known = run_dir.path / "known_hosts"
    known.write_text(f"hal {sshd_server.host_key}\n")
    lines = {
        "HostName": sshd_server.address, "User": USER, "HostKeyAlias": "hal",
        "UserKnownHostsFile": str(known), "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes", "IdentityFile": str(sshd_server.key_file),
        "IdentitiesOnly": "yes", "BatchMode": "yes", "LogLevel": "ERROR",
    }  # fmt: skip
    text = "Host hal\n" + "".join(f"  {k} {v}\n" for k, v in lines.items())
    qemussh.config_path(run_dir).write_text(text)
    return run_dir


async def test_what_a_root_step_prints_is_held_within_a_bound(guest: RunDir) -> None:
    # The step is hal's (setup, sync, quiesce), but what the guest prints is not: a
    # compromised guest writing without end had all of it held in the daemon's memory.
    script = f"echo why >&2; head -c {STDOUT_LIMIT * 4} /dev/zero"
    tracemalloc.start()
    try:
        with pytest.raises(ProviderError) as raised:
            await qemussh.run_root(guest, ["sh", "-c", script], time_limit=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * STDOUT_LIMIT  # the bound and a chunk, not 4 times it
    said = f"sh in the VM failed: sh wrote more than {STDOUT_LIMIT} bytes to stdout and was killed"
    assert raised.value.message == said
    # Within the bound: its output (stdout and stderr); a failure and a timeout said as before.
    script = "echo out; echo err >&2"
    assert await qemussh.run_root(guest, ["sh", "-c", script], time_limit=60) == "out\nerr"
    with pytest.raises(ProviderError, match=r"^sh in the VM failed: no$"):
        await qemussh.run_root(guest, ["sh", "-c", "echo no; exit 3"], time_limit=60)
    with pytest.raises(ProviderError, match=r"^sleep in the VM timed out$"):
        await qemussh.run_root(guest, ["sleep", "30"], time_limit=0.5)
