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

from hal9999.providers.host import user as sandboxuser
from hal9999.providers.qemu import notice as qemunotice
from hal9999.providers.qemu import provider as qemu
from hal9999.providers.qemu.image.store import Image, ImageStore
from hal9999.providers.qemu.provider import QemuProvider
from hal9999.providers.qemu.sandbox import QemuSandbox
from hal9999.spec import SandboxSpec

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


def record_root_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every command the provider runs as guest root from now on, in order."""
    argvs: list[list[str]] = []
    real = qemu.run_root

    async def recording(run, ports, argv, **kwargs):  # type: ignore[no-untyped-def]
        argvs.append(list(argv))
        return await real(run, ports, argv, **kwargs)

    monkeypatch.setattr(qemu, "run_root", recording)
    return argvs


async def test_the_uid_is_handed_its_files_in_the_setup_step_links_never_followed(
    provider: QemuProvider, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What each start runs as guest root: one hal-setup, whose argv does the hand-over (no
    # find/chown command: two more execs under TCG).
    argvs = record_root_commands(monkeypatch)
    assert provider.images.get("default").meta.setup_adopts
    box = await provider.create(SandboxSpec(provider="qemu", workspace=workspace))
    name = f"test-adopt-{box.id}"
    try:
        uid = provider.store.load(box.id).uid
        assert [a[0] for a in argvs] == [qemu.SETUP], "one guest root command at a start"
        assert argvs[0][-9:] == ["adopt", str(uid), qemu.HOME, "adopt", str(uid), "/tmp",
                                 "adopt", str(uid), "/var/tmp"]  # fmt: skip
        # Links to a root file and to another uid's (this one's, in /dev/shm: a fork runs
        # as a uid of its own) are planted for the fork below.
        script = (
            "stat -c %u ~; echo x > ~/f; echo x > /tmp/f; echo x > /var/tmp/f; "
            "mkdir /dev/shm/d; echo x > /dev/shm/d/f; ln -s /etc/shadow ~/shadow; "
            "ln -s /dev/shm/d/f /tmp/to-file; ln -s /dev/shm/d ~/to-dir"
        )
        out = (await box.exec(sh(script), timeout=60)).text().split()
        assert out == [str(uid)], "the image's home (uid 1000's) is the sandbox's"
        await provider.snapshot(box.id, name)
        assert provider.images.get(name).meta.setup_adopts, "a snapshot has its parent's"
        argvs.clear()
        (fork,) = await provider.fork(name, 1, SandboxSpec(provider="qemu", workspace=workspace))
        try:
            other = provider.store.load(fork.id).uid
            assert other is not None and other != uid
            assert [a[0] for a in argvs] == [qemu.SETUP]
            check = (
                "stat -c %u ~/f /tmp/f /var/tmp/f ~/shadow /tmp/to-file ~/to-dir "
                "/etc/shadow /dev/shm/d /dev/shm/d/f"
            )
            seen = (await fork.exec(sh(check), timeout=60)).text().split()
            # The parent's files are the fork's uid's, the links themselves included; what
            # they point to is untouched (a walk that followed them would have chowned both).
            assert seen == [str(other)] * 6 + ["0", str(uid), str(uid)]
        finally:
            await provider.destroy(fork.id)
    finally:
        await provider.destroy(box.id)
        if provider.images.path(name).exists():
            provider.images.remove(name)


async def test_an_image_whose_setup_predates_adopt_gets_the_find_chown_command(
    provider: QemuProvider,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Its meta.json has no setup_adopts: its hal-setup would refuse the adopt steps.
    real_get = ImageStore.get

    def old_get(self: ImageStore, name: str) -> Image:
        image = real_get(self, name)
        image.meta = image.meta.model_copy(update={"setup_adopts": False})
        return image

    monkeypatch.setattr(ImageStore, "get", old_get)
    monkeypatch.setattr(qemunotice, "_NOTED", set())
    argvs = record_root_commands(monkeypatch)
    box = await provider.create(SandboxSpec(provider="qemu", workspace=workspace))
    try:
        assert [a[0] for a in argvs] == [qemu.SETUP, "find"]
        assert "adopt" not in argvs[0]
        # Said once, with the rebuild (tests/providers/test_qemunotice.py: not per VM).
        notes = [line for line in capsys.readouterr().err.splitlines() if "hal: note:" in line]
        assert len(notes) == 1 and "hal image build --name default" in notes[0], notes
        uid = provider.store.load(box.id).uid
        assert (await box.exec(sh("stat -c %u ~"), timeout=60)).text() == f"{uid}\n"
    finally:
        await provider.destroy(box.id)
