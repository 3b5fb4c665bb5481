"""A root hal's qemu sandboxes: commands inside do not run as root. QEMU (root) writes the
9p shares with whatever owner and mode the guest asks for, so guest root could leave a
setuid-root program in a host directory; each sandbox gets a uid of its own instead."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.providers.qemu_helpers import (
    box_fixture,  # noqa: F401  (the fixture box)
    provider_fixture,  # noqa: F401  (the fixture provider)
    sh,
)

from hal9999.providers import sandboxuser
from hal9999.providers.qemu import QemuProvider
from hal9999.providers.qemusandbox import QemuSandbox

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="only a root hal gives sandboxes a uid"),
]


async def test_a_root_hals_guest_cannot_plant_a_setuid_root_file_on_a_share(
    provider: QemuProvider, box: QemuSandbox, workspace: Path
) -> None:
    script = (
        "id -u; cp /bin/sh /workspace/planted; chown 0:0 /workspace/planted; "
        "chmod 4755 /workspace/planted; touch ~/mine; echo home=$?"
    )
    result = await box.exec(sh(script), timeout=60)
    planted = (workspace / "planted").lstat()
    assert not (planted.st_uid == 0 and planted.st_mode & stat.S_ISUID), "a setuid-root file"
    uid = provider.store.load(box.id).uid
    assert uid is not None and uid >= sandboxuser.UID_BASE
    assert result.stdout.decode().split()[0] == str(uid), "commands run as the sandbox's uid"
    assert "home=0" in result.stdout.decode(), "its home is its own"
    assert planted.st_uid == uid
    assert (workspace / "README").stat().st_uid == uid, "the workspace was handed over"
    await provider.destroy(box.id)
    assert not (sandboxuser.LOCK_DIR / str(uid)).exists(), "the uid was given back"
