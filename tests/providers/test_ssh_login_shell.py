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
from tests.sshd import Sshd, running_sshd
from tests.support.ssh import ssh_provider

from hal9999.errors import ExecError
from hal9999.providers.ssh import remote
from hal9999.spec import ArgvCommand, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]

ARGS = ("a b", "it's", "one\\back", "two\\\\backs", "quote\\'d", "new\nline", "$HOME", "!x",
        "*", "caf\u00e9", "tab\there", "semi;")  # fmt: skip
# Words shlex leaves bare that a login shell still reads: csh and tcsh take "=1" and "=-" for
# their directory stack ("Directory stack not that deep."), fish "%self" for its pid, zsh
# "=ls" for ls's path.
BARE = ("=1", "=-", "%self", "=ls", "a=b", "50%")


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
        bare = await sandbox.exec(ArgvCommand(argv=("printf", "%s\\0", *BARE)))
        assert bare.ok, bare.stderr
        assert bare.stdout.split(b"\0")[:-1] == [arg.encode() for arg in BARE]
        # An encoded command's stdin is the command's, every byte of it.
        fed = await sandbox.exec(ArgvCommand(argv=("sh", "-c", "cat; echo !")), stdin=b"in\0\n")
        assert (fed.exit_code, fed.stdout) == (0, b"in\0\n!\n"), fed.stderr
        # A name that is no UTF-8 (a file the agent made, given back by argv) keeps its bytes.
        raw = os.fsdecode(b"n\xffo")
        named = await sandbox.exec(ArgvCommand(argv=("printf", "%s", raw)))
        assert (named.exit_code, named.stdout) == (0, b"n\xffo"), named.stderr
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
        for words in (ARGS, BARE):  # BARE alone: no other word has it encoded
            proc = await asyncio.create_subprocess_exec(
                shell, "-c", remote.plain(["printf", "%s\\0", *words]), cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            assert out.split(b"\0")[:-1] == [arg.encode() for arg in words], (shell, err)


async def test_a_command_too_long_for_the_hosts_exec_is_refused_in_one_line(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # sshd hands the command string to the login shell as one argument: past Linux's
    # MAX_ARG_STRLEN (128 KiB) its exec fails. Base64 makes an encoded command a third
    # longer, so a word near 100 KB that needs encoding ("!") no longer fits.
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        long_plain = "x" * 99_000  # fits as it is (a third more does not)
        said = await sandbox.exec(ArgvCommand(argv=("printf", "%s", long_plain)))
        assert (said.exit_code, said.stdout) == (0, long_plain.encode()), said.stderr[-300:]
        with pytest.raises(ExecError, match="too long for the ssh host") as refused:
            await sandbox.exec(ArgvCommand(argv=("printf", "%s", "!" + long_plain)))
        assert "stdin" in (refused.value.hint or "")
    with pytest.raises(ExecError, match="too long for the ssh host"):
        remote.plain(["echo", "y" * (remote.MAX_COMMAND + 1)])
