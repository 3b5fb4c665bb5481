"""What the tests of the ``qemu`` provider share (test_qemu.py, test_qemu_exec.py): a
provider in the test's hal home, a running sandbox, the VMs a provider runs, and the check
that a destroyed sandbox left nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hal9999.providers.qemu import vm as qemuvm
from hal9999.providers.qemu.provider import QemuConfig, QemuProvider
from hal9999.providers.qemu.sandbox import QemuSandbox
from hal9999.spec import SandboxSpec, ShellCommand


def sh(script: str) -> ShellCommand:
    """A shell command running ``script``."""
    return ShellCommand(script=script)


def make_provider(hal_home: Path, config: QemuConfig | None = None) -> QemuProvider:
    """A qemu provider with its state dir in ``hal_home`` (and ``config`` when given)."""
    state = hal_home / "sandboxes" / "qemu"
    state.mkdir(parents=True, exist_ok=True)
    return QemuProvider(state_dir=state, config=config)


@pytest.fixture(name="provider")
def provider_fixture(hal_home: Path) -> QemuProvider:
    """The qemu provider of the test's hal home."""
    return make_provider(hal_home)


@pytest.fixture(name="box")
async def box_fixture(provider: QemuProvider, workspace: Path) -> AsyncIterator[QemuSandbox]:
    """A running sandbox over the test's workspace, destroyed after the test."""
    sandbox = await provider.create(SandboxSpec(provider="qemu", workspace=workspace))
    try:
        yield sandbox
    finally:
        await provider.destroy(sandbox.id)


async def remove_all(
    provider: QemuProvider, sandboxes: list[QemuSandbox], image: str | None = None
) -> None:
    """Destroy ``sandboxes``, then remove the snapshot ``image`` if it was made."""
    for sandbox in sandboxes:
        await provider.destroy(sandbox.id)
    if image is not None and provider.images.path(image).exists():
        provider.images.remove(image)


def vms_of(provider: QemuProvider) -> dict[str, int]:
    """Running QEMUs whose command line is under this provider's state dir."""
    mine = f"{provider.state_dir}/".encode()
    found = {}
    for vm_id, pid in qemuvm.find_vms().items():
        try:
            if mine in Path(f"/proc/{pid}/cmdline").read_bytes():
                found[vm_id] = pid
        except OSError:
            continue
    return found


def assert_nothing_left(provider: QemuProvider, sandbox_id: str) -> None:
    """The sandbox left no VM, no run dir and no overlay."""
    assert sandbox_id not in qemuvm.find_vms(), "the VM outlived its sandbox"
    assert not qemuvm.RunDir(sandbox_id).path.exists(), "its sockets outlived it"
    assert not (provider.state_dir / sandbox_id).exists(), "its overlay outlived it"
