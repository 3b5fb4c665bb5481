"""An attach command runs whatever its programs' paths hold: ``/usr/bin/env -i K=V ... cmd``
took a command path with ``=`` in it (hal installed under a directory named ``a=b``) for one
more assignment, and the attach failed."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from hal9999.providers.host import exec as hostexec
from hal9999.providers.registry import load_provider
from hal9999.spec import SandboxSpec


async def test_local_attach_runs_a_launcher_under_a_directory_holding_an_equals_sign(
    hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = hostexec.launch_helper()
    if built is None:
        pytest.skip("the static launcher is not built (scripts/setup.sh)")
    folder = tmp_path / "a=b"
    folder.mkdir()
    helper = shutil.copy(built, folder / "hal-launch")
    monkeypatch.setattr(hostexec, "launch_helper", lambda: str(helper))
    provider = load_provider("local", state_dir=hal_home / "local")
    async with await provider.create(SandboxSpec(provider="local", network="host")) as sandbox:
        argv = sandbox.attach_command()
        assert str(helper) in argv
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(b"echo $HAL_SANDBOX; exit 0\n"), 10)
    assert (proc.returncode, out.decode().split()) == (0, [sandbox.id]), err
