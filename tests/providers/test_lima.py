"""The lima provider against the fake limactl (tests/fakes/limactl.py) over a real sshd.

The contract suite runs against it too (``test_contract.py``, id ``lima``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hal9999.errors import HostKeyRejected, ProviderUnavailable
from hal9999.providers.lima import LimaProvider
from hal9999.providers.registry import load_provider
from hal9999.spec import ArgvCommand, SandboxSpec

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]


def limactl_list(*names: str) -> list[dict[str, object]]:
    out = subprocess.run(["limactl", "list", "--json", *names], capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


async def test_a_sandbox_is_a_vm_made_and_deleted_with_limactl(
    fake_lima: Path, hal_home: Path, workspace: Path
) -> None:
    provider = load_provider("lima", state_dir=hal_home / "lima")
    assert isinstance(provider, LimaProvider)
    assert provider.capabilities.isolation == "vm"
    spec = SandboxSpec(provider="lima", network="host", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        [vm] = limactl_list()
        assert vm["name"] == f"hal-{sandbox.id}" and vm["status"] == "Running"
        # hal's config carries the host key it verifies; the file is private to hal.
        config = json.loads((fake_lima / str(vm["name"]) / "lima.yaml").read_text())
        assert config["base"] == "template://debian"
        assert "ssh_host_ed25519_key" in config["provision"][0]["script"]
        assert sandbox.workdir.endswith("/ws")  # disposable VM: commands run on the mirror
        result = await sandbox.exec(ArgvCommand(argv=("cat", "README")))
        assert result.stdout == b"hello\n"
        await sandbox.write_file_atomic(sandbox.workdir + "/made", b"in the vm")
        assert (workspace / "made").read_bytes() == b"in the vm"
    assert limactl_list() == []


async def test_a_vm_without_hals_host_key_is_refused(
    fake_lima: Path,
    hal_home: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The "VM" boots but its sshd keeps another key (as if provisioning had been tampered
    # with): hal refuses it rather than learning the key, and deletes the VM.
    monkeypatch.setenv("FAKE_LIMA_HOST_KEY", str(tmp_path / "not-the-sshd-key"))
    provider = load_provider("lima", state_dir=hal_home / "lima")
    with pytest.raises(HostKeyRejected):
        await provider.create(SandboxSpec(provider="lima", network="host", workspace=workspace))
    assert limactl_list() == []
    assert await provider.list() == []


def test_missing_limactl_names_the_install(
    hal_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProviderUnavailable) as info:
        load_provider("lima", state_dir=hal_home / "lima")
    assert info.value.hint is not None and "lima-vm.io" in info.value.hint


@pytest.mark.slow
def test_hal_run_on_lima(fake_lima: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "initial"], cwd=repo, check=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    environ |= {"HAL_HOME": str(tmp_path / "halhome"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    # A disposable VM cannot take the network away (no bwrap): the per-provider setting says so.
    environ["HAL_LIMA_NETWORK"] = "host"
    agent = "sed -i s/a\\ -\\ b/a\\ +\\ b/ calc.py"
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", "run", "--provider", "lima", "--agent", agent, "fix",
         "--json"], cwd=repo, env=environ, capture_output=True, text=True, timeout=240,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "succeeded", task
    shown = subprocess.run([*git, "show", f"{task['branch']}:calc.py"], cwd=repo,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert "a + b" in shown.stdout
    assert limactl_list() == []


async def test_doctor_reports_limactl_and_hals_vms(
    fake_lima: Path, hal_home: Path, workspace: Path
) -> None:
    from hal9999.providers.ssh.doctor import lima_findings

    provider = load_provider("lima", state_dir=hal_home / "lima")
    async with await provider.create(
        SandboxSpec(provider="lima", network="host", workspace=workspace)
    ):
        [finding] = await lima_findings({}, hal_home / "lima")
        assert finding.ok and "1 hal VM(s), 1 sandbox(es)" in finding.detail


class Killed(BaseException):
    """hal dying (SIGKILL) at this point: nothing after it runs."""


async def test_a_vm_booted_for_a_hal_killed_before_its_record_is_deleted_by_the_next(
    fake_lima: Path, hal_home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal9999.providers.ssh import channel

    real_run = channel.run

    async def run_then_die(*args: Any, **kwargs: Any) -> Any:
        await real_run(*args, **kwargs)
        raise Killed  # after the first remote call: the VM is up, no record yet

    async def nothing(*args: object) -> None:
        return None  # a killed process undoes nothing

    killed = load_provider("lima", state_dir=hal_home / "lima")
    assert isinstance(killed, LimaProvider)
    with monkeypatch.context() as patch:
        patch.setattr(channel, "run", run_then_die)
        patch.setattr(killed, "_undo", nothing)
        patch.setattr(killed, "_unlock", lambda sandbox_id: None, raising=False)  # no finally
        with pytest.raises(Killed):
            spec = SandboxSpec(provider="lima", network="host", workspace=workspace)
            await killed.create(spec)
    [vm] = limactl_list()
    assert await killed.list() == [], "its own creator is not swept while it lives"
    assert [found["name"] for found in limactl_list()] == [vm["name"]]
    for fd in getattr(killed, "_creating", {}).values():
        os.close(fd)  # the kernel closes a killed process's files, its lock with them
    after = load_provider("lima", state_dir=hal_home / "lima")
    assert await after.list() == []
    assert limactl_list() == []
