"""Bad input to the commands besides ``hal run`` (serve, task, image, sandbox, pool, agent,
hive, auth) ends in one clear line and the documented status, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hal import Hal, one_error_line


def test_serve_stop_json_without_a_daemon_is_json(hal: Hal) -> None:
    out = hal("serve", "--stop", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"stopped": None}


@pytest.mark.parametrize(
    "args",
    [("task", "show", "a" * 5000), ("sandbox", "destroy", "a" * 5000),
     ("run", "--provider", "a" * 5000, "--agent", "true {{prompt_file}}", "x"),
     # Refused by click's own types, whose message quoted the whole value (100 KB of it).
     ("pool", "warm", "a" * 100_000), ("task", "list", "--limit", "a" * 5000),
     ("run", "--timeout", "a" * 5000, "x"), ("sandbox", "fork", "img", "1", "--cpus", "a" * 5000)],
)  # fmt: skip
def test_a_huge_name_is_not_echoed_whole(hal: Hal, args: tuple[str, ...]) -> None:
    line = one_error_line(hal(*args))
    assert len(line) < 300 and f"{'a' * 59}…" in line and "a" * 61 not in line, line


def test_serve_stop_and_detach_together_is_a_usage_error(hal: Hal, hal_env: dict[str, str]) -> None:
    out = hal("serve", "--detach", "--stop")
    assert out.returncode == 2
    assert "--stop and --detach cannot be combined" in one_error_line(out)
    assert not Path(hal_env["HAL_HOME"], "run", "serve.json").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read the role file"), (b"\xff\xfe", "is not UTF-8 text")],
)
def test_a_role_file_hal_cannot_read(
    hal: Hal, tmp_path: Path, content: bytes | None, expected: str
) -> None:
    role = tmp_path / "role.md"
    if content is not None:
        role.write_bytes(content)
    out = hal("agent", "spawn", "alice", "--role", str(role))
    assert out.returncode == 2
    line = one_error_line(out)
    assert expected in line and "Errno" not in line and "codec" not in line, line


def test_unknown_status_filter(hal: Hal) -> None:
    out = hal("task", "list", "--status", "bogus")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "bogus" in line and "succeeded" in line


@pytest.mark.parametrize("args", [(), ("task",)])
def test_a_bare_group_prints_its_help(hal: Hal, args: tuple[str, ...]) -> None:
    out = hal(*args)
    assert "Usage: hal" in out.stdout + out.stderr and "Commands:" in out.stdout + out.stderr
    assert "hal: error:" not in out.stderr


@pytest.mark.parametrize("name", ["../x", "a/../../b", "", ".hidden"])
@pytest.mark.parametrize("command", ["build", "container"])
def test_image_build_refuses_a_name_that_is_a_path(
    hal: Hal, hal_env: dict[str, str], name: str, command: str
) -> None:
    out = hal("image", command, "--name", name)
    assert out.returncode == 2
    assert "invalid image name" in one_error_line(out)
    images = Path(hal_env["HAL_HOME"], "images")
    assert not images.exists() or not any(images.rglob("*.lock"))


@pytest.mark.parametrize("suite", ["", "-x", "book worm", "../b"])
@pytest.mark.parametrize("command", ["build", "container"])
def test_image_build_refuses_a_suite_debootstrap_cannot_take(
    hal: Hal, hal_env: dict[str, str], suite: str, command: str
) -> None:
    out = hal("image", command, "--name", "t", "--suite", suite)
    assert out.returncode == 2
    assert f"invalid Debian suite {suite!r}" in one_error_line(out)
    assert "debootstrap" not in out.stderr
    assert not Path(hal_env["HAL_HOME"], "images").exists()


@pytest.mark.parametrize(
    "args",
    [("sandbox", "fork", "img", "2", "--cpus", "nan"), ("sandbox", "fork", "img", "0"),
     ("sandbox", "fork", "img", "1", "--memory", "-5"), ("pool", "warm", "99999999")],
)  # fmt: skip
def test_pool_and_fork_numbers_are_checked(hal: Hal, args: tuple[str, ...]) -> None:
    out = hal(*args)
    assert out.returncode == 2
    one_error_line(out)


@pytest.mark.parametrize(
    ("option", "value"), [("--mirror", ""), ("--mirror", "-x"), ("--mirror", "not a url"),
                          ("--packages", "-oops"), ("--packages", "Bad;rm")],
)  # fmt: skip
@pytest.mark.parametrize("command", ["build", "container"])
def test_image_build_refuses_a_mirror_or_package_debootstrap_cannot_take(
    hal: Hal, hal_env: dict[str, str], command: str, option: str, value: str
) -> None:
    out = hal("image", command, "--name", "t", option, value)
    assert out.returncode == 2
    line = one_error_line(out)
    what = "Debian mirror" if option == "--mirror" else "package name"
    assert f"invalid {what} {value!r}" in line and "(" in line, line
    assert "debootstrap" not in out.stderr
    assert not Path(hal_env["HAL_HOME"], "images").exists()


@pytest.mark.parametrize(
    "args",
    [("agent", "spawn", "zed", "--agent", ""), ("agent", "spawn", "zed", "--provider", " "),
     ("hive", "init", "--agent", ""), ("hive", "init", "--provider", ""),
     ("pool", "warm", "1", "--provider", "")],
)  # fmt: skip
def test_an_empty_agent_or_provider_is_refused_not_the_default(
    hal: Hal, args: tuple[str, ...]
) -> None:
    out = hal(*args)
    assert out.returncode == 2
    line = one_error_line(out)
    assert "must not be empty" in line and "hal serve" not in line, line


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "is empty"), (b"  \n\t\n", "is empty"), (b"a" * 40000, "more than 32768 characters"),
     (None, "more than 32768 characters")],
)  # fmt: skip
def test_a_role_file_that_is_empty_or_endless(
    hal: Hal, tmp_path: Path, content: bytes | None, expected: str
) -> None:
    role = Path("/dev/zero")  # None: read until memory ran out (the process was killed)
    if content is not None:
        role = tmp_path / "role.md"
        role.write_bytes(content)
    out = hal("agent", "spawn", "alice", "--role", str(role))
    assert out.returncode == 2
    assert expected in one_error_line(out)


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1"])
def test_a_sign_in_timeout_that_is_no_duration_is_refused_before_the_url(
    hal: Hal, timeout: str
) -> None:
    out = hal("auth", "claude", "login", "--method", "pkce", "--no-browser", "--timeout", timeout,
              env={"HAL_CLAUDE_OAUTH_CLIENT_ID": "client"}, timeout=30)  # fmt: skip
    assert out.returncode == 2
    assert "Invalid value for '--timeout'" in one_error_line(out)
    assert "Open this URL" not in out.stderr


@pytest.mark.parametrize("command", [("exec", "x", "--", "true"), ("destroy", "x"),
                                     ("snapshot", "x")])  # fmt: skip
def test_a_misspelt_sandbox_provider_is_named_not_the_sandbox(
    hal: Hal, command: tuple[str, ...]
) -> None:
    verb, *rest = command
    misspelt = one_error_line(hal("sandbox", verb, "--provider", "nosuch", *rest))
    assert "no provider named 'nosuch'" in misspelt and "no sandbox" not in misspelt, misspelt
    empty = hal("sandbox", verb, "--provider", "", *rest)
    assert empty.returncode == 2 and "must not be empty" in one_error_line(empty)
    unknown = one_error_line(hal("sandbox", verb, "", *rest[1:]))
    assert "no sandbox ''" in unknown, unknown


def test_the_agent_credentials_file_goes_only_where_it_should(
    hal: Hal, hal_env: dict[str, str], tmp_path: Path
) -> None:
    """An empty PATH or one in a missing directory was a crash report; any existing file was
    replaced by the credentials; a relative PATH was printed as a relative config source."""
    token = "sk-ant-oat01-" + "a" * 40
    login = subprocess.run([sys.executable, "-m", "hal9999", "auth", "claude", "login",
                            "--token-stdin"], input=token + "\n", env=hal_env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert login.returncode == 0, login.stderr
    keep = tmp_path / "README.md"
    keep.write_text("mine\n")
    refused = [("", "PATH is empty"),
               (str(tmp_path / "no" / "x.json"), f"{tmp_path / 'no'} is not a directory"),
               (str(keep), f"{keep} exists and is not a Claude credentials file")]  # fmt: skip
    for path, expected in refused:
        out = hal("auth", "claude", "agent-file", path, "--yes")
        assert out.returncode == 2
        assert expected in one_error_line(out)
    assert keep.read_text() == "mine\n"
    for _ in range(2):  # a second run refreshes the file it wrote
        out = hal("auth", "claude", "agent-file", "agent.json", "--yes", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert f'source = "{tmp_path / "agent.json"}"' in out.stderr
    assert "claudeAiOauth" in json.loads((tmp_path / "agent.json").read_text())


def test_hive_init_twice_says_the_manager_is_there(hal: Hal, hal_env: dict[str, str]) -> None:
    """It said 'choose another name', which hal hive init has no option for."""
    from tests.hive.conftest import make_agent

    from hal9999.store import Store

    with Store.open(Path(hal_env["HAL_HOME"])) as store:
        make_agent(store, "manager")
    out = hal("hive", "init")
    assert out.returncode == 12
    line = one_error_line(out)
    assert "has an agent called 'manager' already" in line and "hal msg send manager" in line
    assert "choose another name" not in line


def test_warm_idle_with_no_keep_warm_is_a_usage_error(hal: Hal) -> None:
    """The idle time was stored for a sandbox that is never kept, without a word."""
    out = hal("agent", "spawn", "zed", "--no-keep-warm", "--warm-idle", "5m")
    assert out.returncode == 2
    assert "--warm-idle and --no-keep-warm cannot be combined" in one_error_line(out)


@pytest.mark.parametrize("command", [("agent", "spawn", "zed"), ("hive", "init")])
def test_a_hive_repo_that_is_a_symlink_loop_or_empty(
    hal: Hal, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A symlink loop was a crash report ("internal error (RuntimeError ...)"); an empty
    --repo silently meant the current directory instead of the default."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    out = hal(*command, "--repo", str(loop))
    assert out.returncode == 4
    assert f"cannot use --repo {loop}" in one_error_line(out)
    out = hal(*command, "--repo", "")
    assert out.returncode == 2
    assert "--repo must not be empty" in one_error_line(out)


@pytest.mark.parametrize(
    ("args", "expected"),
    [(("agent", "spawn", "zed", "--role", "a\nb"), "cannot read the role file a\\nb: "),
     (("run", "--repo", "a\nb", "x"), "does not exist: "),
     (("task", "list", "--status", "a\nb"), "'a\\nb' is not one of")],
)  # fmt: skip
def test_a_value_holding_a_line_break_stays_on_the_error_line(
    hal: Hal, args: tuple[str, ...], expected: str
) -> None:
    """A path with a newline in it split the error over two lines (the rest of the message,
    the fix among it, on a line that was not hal's)."""
    out = hal(*args)
    assert out.returncode in (2, 4)
    line = one_error_line(out)
    assert expected in line and line.endswith(")"), line
    assert out.stderr.splitlines()[-1] == line, out.stderr


@pytest.mark.parametrize(
    "args", [("pool", "warm", "-1"), ("sandbox", "fork", "img", "-2"), ("pool", "warm", "-10")]
)
def test_a_negative_count_is_refused_as_a_count(hal: Hal, args: tuple[str, ...]) -> None:
    # click's parser took -1 for an option: "No such option: -1".
    out = hal(*args)
    assert out.returncode == 2
    line = one_error_line(out)
    assert f"COUNT must be from 1 to 1024, not {args[-1]}" in line and "option" not in line, line


def test_an_unknown_option_of_a_count_command_is_still_one(hal: Hal) -> None:
    assert "No such option" in one_error_line(hal("pool", "warm", "--bogus"))
