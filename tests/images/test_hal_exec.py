"""hal-exec as the guest's root login shell: sshd runs "hal-exec -c COMMAND", and hal-exec
splits exactly what the host writes (``shlex.join``) and refuses everything else.

Built and run on the host (no VM): the splitting is plain C with no guest dependency. Every
qemu test exercises the rest (hal-exec running itself and hal's root steps this way).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hal9999.providers.qemu.image

SOURCE = Path(hal9999.providers.qemu.image.__file__).parent / "guest" / "hal-exec.c"
PRINTF = "/usr/bin/printf"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def hal_exec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("hal-exec") / "hal-exec"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(built), str(SOURCE)], check=True)
    return built


def run(hal_exec: Path, line: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(hal_exec), "-c", line], capture_output=True, timeout=30)


words = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(words)
def test_a_command_line_the_host_writes_runs_exactly_its_words(
    hal_exec: Path, argv: list[str]
) -> None:
    done = run(hal_exec, shlex.join([PRINTF, "%s\\0", *argv]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0")[:-1] == [w.encode() for w in argv]


@pytest.mark.parametrize(
    "tail",
    ["; touch {}", "&& touch {}", "| touch {}", "$(touch {})", "`touch {}`", "\n touch {}"],
)
def test_shell_syntax_is_refused_and_nothing_runs(
    hal_exec: Path, tmp_path: Path, tail: str
) -> None:
    marker = tmp_path / "ran"
    done = run(hal_exec, f"/bin/true {tail.format(marker)}")
    assert done.returncode == 125
    assert b"refusing a command line" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "line", ["", " /bin/true", "/bin/true ", "/bin/true  x", "'/bin/true", "echo $HOME", '"x"']
)
def test_anything_but_shlex_join_output_is_refused(hal_exec: Path, line: str) -> None:
    done = run(hal_exec, line)
    assert done.returncode == 125 and done.stdout == b""


def test_a_missing_program_exits_127(hal_exec: Path, tmp_path: Path) -> None:
    assert run(hal_exec, shlex.join([str(tmp_path / "none")])).returncode == 127


def test_a_variable_sshd_sets_itself_comes_through_its_alias(hal_exec: Path) -> None:
    """Over ssh, sshd sets HOME, PATH, USER... after the client's variables: hal sends the
    command's own values as HAL_ENV_<NAME> and hal-exec -A puts them back."""
    env = {"HOME": "/root", "HAL_ENV_HOME": "/home/hal", "SECRET": "s"}
    done = subprocess.run(
        [str(hal_exec), "-A", "HOME", "-E", "SECRET", "-A", "UNSET", "--", "/usr/bin/env"],
        env=env, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.decode().split()) == ["HOME=/home/hal", "SECRET=s"]
