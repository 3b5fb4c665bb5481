"""An ssh host whose user's login shell is no POSIX shell (fish, tcsh): sshd runs every
command hal sends with ``$SHELL -c``, and tcsh refused hal's first one ("Unmatched '": a
newline inside quotes), which hal reported as "no usable HOME"; fish reads ``\\\\`` and
``\\'`` inside single quotes as escapes, changing an agent's arguments. Every command string
now reaches ``sh`` unchanged (``remote.any_shell``). Real sshd (tests/sshd.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.providers.test_ssh import ssh_provider
from tests.sshd import Sshd, running_sshd

from hal9999.providers.ssh import remote
from hal9999.spec import ArgvCommand, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]

ARGS = ("a b", "it's", "one\\back", "two\\\\backs", "quote\\'d", "new\nline", "$HOME", "!x",
        "*", "caf\u00e9", "tab\there", "semi;")  # fmt: skip


@pytest.fixture(params=["tcsh", "fish"])
def odd_sshd(request: pytest.FixtureRequest) -> Iterator[Sshd]:
    shell = shutil.which(request.param)
    if shell is None:
        reason = f"{request.param} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    with running_sshd(login_shell=shell) as server:
        yield server


async def test_a_host_whose_login_shell_is_not_posix_runs_commands_verbatim(
    odd_sshd: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(odd_sshd, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        said = await sandbox.exec(ArgvCommand(argv=("printf", "%s\\0", *ARGS)))
        assert said.ok, said.stderr
        assert said.stdout.split(b"\0")[:-1] == [arg.encode() for arg in ARGS]
        script = await sandbox.exec(ShellCommand(script="x=1\nif [ $x = 1 ]; then\n echo ok\nfi"))
        assert (script.exit_code, script.stdout) == (0, b"ok\n"), script.stderr
        await sandbox.write_file_atomic(sandbox.workdir + "/it's new", b"kept\n")
        assert await sandbox.read_file(sandbox.workdir + "/it's new") == b"kept\n"


def test_plain_words_go_as_they_are_and_the_rest_encoded() -> None:
    # hal's own steps, usually safe for every shell, cost no decoding on the host.
    assert remote.plain(["rm", "-f", "--", "/home/u/.hal/x"]) == "rm -f -- /home/u/.hal/x"
    assert remote.plain(["echo", "it's"]) == "echo 'it'\"'\"'s'"
    for unsafe in ("a\nb", "!x", "a\\\\b", "a\\'", "caf\u00e9"):
        assert remote.plain(["echo", unsafe]).startswith("sh -c 'eval \"$(echo ")


async def test_any_shell_strings_run_as_the_words_under_sh(tmp_path: Path) -> None:
    shells = [s for s in ("sh", "bash", "tcsh", "fish") if shutil.which(s)]
    for shell in shells:
        proc = await asyncio.create_subprocess_exec(
            shell, "-c", remote.plain(["printf", "%s\\0", *ARGS]), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert out.split(b"\0")[:-1] == [arg.encode() for arg in ARGS], (shell, err)
