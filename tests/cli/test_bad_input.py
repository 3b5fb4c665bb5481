"""Bad input of every kind ends in one clear line and the documented status, never a traceback,
and leaves no task or session behind when it is refused up front."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.cli.conftest import Hal, git, tasks_json

BWRAP = shutil.which("bwrap")


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The single error line; asserts there is no traceback and no crash report."""
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    assert len(lines) == 1, out.stderr
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


def no_sessions(hal_env: dict[str, str]) -> bool:
    sessions = Path(hal_env["HAL_HOME"], "sessions")
    return not sessions.exists() or not any(sessions.iterdir())


def test_non_ascii_env_name_is_refused_and_leaves_no_session(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    out = hal("run", "--env", "NAMÉ=1", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 2
    assert "invalid --env name 'NAMÉ'" in one_error_line(out)
    assert tasks_json(hal) == [] and no_sessions(hal_env)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "invalid --secret name ''"), ("1X", "invalid --secret name '1X'"),
     ("HAL_TEST_UNSET_SECRET", "leave HAL_TEST_UNSET_SECRET out of --env and --secret")],
)  # fmt: skip
def test_a_bad_secret_is_named_as_a_secret(hal: Hal, value: str, expected: str) -> None:
    out = hal("run", "--secret", value, "--agent", "true {{prompt_file}}", "x")
    assert out.returncode != 0
    line = one_error_line(out)
    assert expected in line and "--env name" not in line and "drop --env" not in line, line
    assert tasks_json(hal) == []


def test_repo_that_is_a_regular_file(hal: Hal, demo_repo: Path) -> None:
    out = hal("run", "--repo", str(demo_repo / "calc.py"), "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 4
    assert "names a file, not a repository" in one_error_line(out)


def test_bare_repository_is_named_as_such(hal: Hal, demo_repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(demo_repo), str(bare))
    out = hal("run", "--repo", str(bare), "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 4
    line = one_error_line(out)
    assert "is a bare repository" in line and f"file://{bare}" in line


def test_a_repository_with_no_commits_is_named_as_such(hal: Hal, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    out = hal("run", "--json", "--agent", "true {{prompt_file}}", "x", cwd=empty)
    assert out.returncode == 4, out.stderr
    task = json.loads(out.stdout)
    assert task["error_code"] == "repo_invalid"
    assert task["error_message"].startswith(f"{empty} has no commits yet (commit something")


@pytest.mark.parametrize("where", ["file", "below-file"])
@pytest.mark.parametrize("command", [("task", "list"), ("run", "x")])
def test_hal_home_that_cannot_be_a_directory(
    hal: Hal, tmp_path: Path, where: str, command: tuple[str, ...]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    home = blocker if where == "file" else blocker / "home"
    out = hal(*command, env={"HAL_HOME": str(home)})
    assert out.returncode == 2
    line = one_error_line(out)
    assert str(home) in line or str(blocker) in line
    assert "HAL_HOME" in line


def test_doctor_reports_a_bad_hal_home_instead_of_crashing(hal: Hal, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = hal("doctor", "--json", env={"HAL_HOME": str(blocker / "home")}, timeout=120)
    assert "Traceback" not in out.stderr
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert not checks["HAL_HOME"]["ok"] and "HAL_HOME" in checks["HAL_HOME"]["fix"]


def test_doctor_fails_on_a_corrupt_database(hal: Hal, hal_env: dict[str, str]) -> None:
    assert hal("task", "list").returncode == 0  # creates a healthy hal.db
    db = Path(hal_env["HAL_HOME"], "hal.db")
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 8192)
    out = hal("doctor", "--json", timeout=120)
    assert out.returncode == 1, out.stdout
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert not checks["database"]["ok"] and "move" in checks["database"]["fix"]
    listed = hal("task", "list")
    assert listed.returncode != 0 and str(db) in one_error_line(listed)


def test_serve_stop_json_without_a_daemon_is_json(hal: Hal) -> None:
    out = hal("serve", "--stop", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"stopped": None}


@pytest.mark.parametrize(
    "args",
    [("task", "show", "a" * 5000), ("sandbox", "destroy", "a" * 5000),
     ("run", "--provider", "a" * 5000, "--agent", "true {{prompt_file}}", "x")],
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


def test_doctor_fails_on_a_database_of_a_newer_hal(hal: Hal, hal_env: dict[str, str]) -> None:
    import sqlite3

    assert hal("task", "list").returncode == 0  # creates a healthy hal.db
    db = Path(hal_env["HAL_HOME"], "hal.db")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    listed = hal("task", "list")
    assert listed.returncode != 0 and "newer than this hal knows" in one_error_line(listed)
    out = hal("doctor", "--json", timeout=120)
    assert out.returncode == 1, out.stdout
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert not checks["database"]["ok"] and "999" in checks["database"]["detail"]
    assert "upgrade hal9999" in checks["database"]["fix"]


@pytest.mark.parametrize("damage", ["not-a-database", "pages-overwritten"])
def test_a_damaged_database_says_to_move_it_aside(
    hal: Hal, hal_env: dict[str, str], damage: str
) -> None:
    assert hal("task", "list").returncode == 0  # creates a healthy hal.db
    db = Path(hal_env["HAL_HOME"], "hal.db")
    if damage == "not-a-database":
        db.write_bytes(b"\xff" * 8192)
    else:  # the schema page is intact: the database opens, the tables' pages do not read
        with db.open("r+b") as data:
            data.seek(4096)
            data.write(b"\xff" * (db.stat().st_size - 4096))
    out = hal("task", "list")
    assert out.returncode != 0
    line = one_error_line(out)
    assert "move" in line and "aside" in line and "writable" not in line, line


@pytest.mark.bwrap
@pytest.mark.skipif(BWRAP is None, reason="needs bwrap for a read-only mount")
def test_hal_home_on_a_read_only_mount(hal_env: dict[str, str], tmp_path: Path) -> None:
    home = Path(hal_env["HAL_HOME"])
    home.mkdir()
    # A real read-only mount, private to this command: the host is not changed.
    argv = [str(BWRAP), "--dev-bind", "/", "/", "--ro-bind", str(home), str(home),
            sys.executable, "-m", "hal9999"]  # fmt: skip
    for command in (["task", "list"], ["doctor"]):
        out = subprocess.run(
            [*argv, *command], env=hal_env, capture_output=True, text=True, timeout=120
        )
        assert "Traceback" not in out.stderr, out.stderr
        if command == ["doctor"]:
            assert out.returncode == 1 and "read-only" in out.stdout
        else:
            assert out.returncode == 2 and "read-only" in one_error_line(out)


def test_running_from_a_deleted_directory(hal_env: dict[str, str], tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    script = f'mkdir "{gone}" && cd "{gone}" && rmdir "{gone}" && exec "$@"'
    base = ["sh", "-c", script, "sh", sys.executable, "-m", "hal9999"]
    listed = subprocess.run([*base, "task", "list"], env=hal_env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    out = subprocess.run([*base, "run", "x"], env=hal_env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "current directory no longer exists" in one_error_line(out)


def test_invalid_log_level(hal: Hal) -> None:
    out = hal("task", "list", env={"HAL_LOG_LEVEL": "chatty"})
    assert out.returncode == 2
    assert "HAL_LOG_LEVEL" in one_error_line(out)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "1e400", "soon", "1e-300"])
def test_bad_timeouts_are_refused_up_front(
    hal: Hal, hal_env: dict[str, str], value: str
) -> None:
    out = hal("run", "--timeout", value, "--detach", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 2
    assert "--timeout" in one_error_line(out)
    assert tasks_json(hal) == [] and no_sessions(hal_env)


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "0", "-1"])
def test_bad_budgets_are_refused_naming_the_option(
    hal: Hal, hal_env: dict[str, str], value: str
) -> None:
    out = hal("run", "--max-cost", value, "--detach", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "'--max-cost'" in line and "max_cost_usd" not in line and "request" not in line, line
    assert tasks_json(hal) == [] and no_sessions(hal_env)


@pytest.mark.parametrize(
    ("env", "key"),
    [({"HAL_PIDS": "-1"}, "pids"), ({"HAL_MEMORY_MB": "-5"}, "memory_mb"),
     ({"HAL_CPUS": "-1"}, "cpus"), ({"HAL_TIMEOUT": "inf"}, "timeout_s"),
     ({"HAL_HOME": "~no-such-user-x/h"}, "home")],
)  # fmt: skip
def test_bad_limits_from_the_environment(hal: Hal, env: dict[str, str], key: str) -> None:
    out = hal("run", "--agent", "true {{prompt_file}}", "x", env=env)
    assert out.returncode == 2
    line = one_error_line(out)
    assert next(iter(env)) in line and key in line


@pytest.mark.parametrize("option", ["--agent", "--provider", "--process-manager"])
def test_empty_names_are_refused(hal: Hal, option: str) -> None:
    out = hal("run", option, "", "x")
    assert out.returncode == 2
    assert option in one_error_line(out)
    assert tasks_json(hal) == []


def test_unknown_status_filter(hal: Hal) -> None:
    out = hal("task", "list", "--status", "bogus")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "bogus" in line and "succeeded" in line


@pytest.mark.parametrize(
    "args", [("--retries", "-1"), ("--priority", str(2**70)), ("--nope",), ()]
)
def test_usage_errors_are_one_line_with_status_2(hal: Hal, args: tuple[str, ...]) -> None:
    out = hal("run", *args, *(("x",) if args else ()))
    assert out.returncode == 2
    one_error_line(out)


@pytest.mark.parametrize(
    ("args", "expected"),
    [(("--raw", "--events"), "--raw and --events cannot be combined"),
     (("--json", "--events"), "--events and --json cannot be combined"),
     (("--raw", "--json"), "--raw and --json cannot be combined"),
     (("--detach", "--events"), "--detach and --events cannot be combined"),
     (("--egress-only", "none", "--egress-only", "x.com"),
      "--egress-only none and --egress-only HOST cannot be combined"),
     (("--timeout", "60", "--raw", "--events"), "--raw and --events cannot be combined")],
)  # fmt: skip
def test_run_options_that_contradict_each_other_are_usage_errors(
    hal: Hal, hal_env: dict[str, str], args: tuple[str, ...], expected: str
) -> None:
    out = hal("run", *args, "--agent", "true {{prompt_file}}", "x")  # --timeout: click parses
    assert out.returncode == 2
    assert expected in one_error_line(out)
    assert out.stdout == "" and no_sessions(hal_env)


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (("",), None, "the prompt is empty"),
        (("  \n",), None, "the prompt is empty"),
        (("-",), "", "the prompt is empty"),
        (("--prompt-file", "missing.txt"), None, "cannot read --prompt-file"),
        (("--prompt-file", "."), None, "cannot read --prompt-file"),
        (("--prompt-file", "-", "also"), "x", "given twice"),
        (("-",), "\udcff", "not UTF-8"),
    ],
)
def test_bad_prompts_exit_with_usage_status(
    hal_env: dict[str, str], demo_repo: Path, args: tuple[str, ...], stdin: str | None,
    expected: str,
) -> None:  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", "run", "--agent", "true {{prompt_file}}", *args],
        cwd=demo_repo, env=hal_env, capture_output=True, timeout=60,
        input=None if stdin is None else stdin.encode("utf-8", "surrogateescape"),
    )  # fmt: skip
    result = subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(), out.stderr.decode()
    )
    assert out.returncode == 2
    assert expected in one_error_line(result)


def test_local_provider_says_how_to_run_on_it(hal: Hal) -> None:
    out = hal("run", "--provider", "local", "--agent", "true {{prompt_file}}", "x", "--json")
    assert out.returncode == 6
    assert "HAL_LOCAL_NETWORK=host" in json.loads(out.stdout)["error_message"]
    [task] = tasks_json(hal)
    assert task["error_code"] == "capability_missing"
    ok = hal(
        "run", "--provider", "local", "--process-manager", "direct",
        "--agent", "true {{prompt_file}}", "x", env={"HAL_LOCAL_NETWORK": "host"},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.bwrap
@pytest.mark.tmux
def test_resume_after_the_source_repository_moved(
    hal: Hal, demo_repo: Path, tmp_path: Path
) -> None:
    agent = "sh -c 'test -f done.txt && exit 0; touch done.txt; sleep 60'"
    task_id = hal("run", "--detach", "--agent", agent, "x").stdout.strip()
    deadline = time.monotonic() + 60
    while tasks_json(hal)[0]["status"] != "running":
        assert time.monotonic() < deadline, tasks_json(hal)
        time.sleep(0.3)
    assert hal("task", "stop", task_id).returncode == 0
    diff = hal("task", "diff", task_id)  # a stopped task has no patch, and it is said why
    assert diff.returncode == 9
    assert "collected when it is resumed" in one_error_line(diff)
    demo_repo.rename(tmp_path / "moved")
    out = hal("task", "resume", task_id, "--json", cwd=tmp_path)
    assert "Traceback" not in out.stderr + out.stdout
    assert out.returncode == 4, out.stderr
    [task] = json.loads(hal("task", "list", "--json", cwd=tmp_path).stdout)
    assert task["status"] == "failed" and task["error_code"] == "repo_invalid"
    assert "moved" in task["error_message"] and "Errno" not in task["error_message"]


@pytest.mark.parametrize("args", [(), ("task",)])
def test_a_bare_group_prints_its_help(hal: Hal, args: tuple[str, ...]) -> None:
    out = hal(*args)
    assert "Usage: hal" in out.stdout + out.stderr and "Commands:" in out.stdout + out.stderr
    assert "hal: error:" not in out.stderr


def test_task_list_json_is_strict_even_for_an_old_infinite_timeout(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    from hal9999.store import Store

    out = hal("run", "--provider", "local", "--agent", "true {{prompt_file}}", "x", "--json")
    task_id = json.loads(out.stdout)["id"]
    with Store.open(Path(hal_env["HAL_HOME"])) as store:  # what a release before the fix stored
        store.update_task(task_id, timeout_s=float("inf"))

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    listed = hal("task", "list", "--json")
    assert json.loads(listed.stdout, parse_constant=refuse)[0]["timeout_s"] is None


@pytest.mark.parametrize("kind", ["symlink-loop", "name-too-long", "path-too-long"])
def test_repo_paths_the_os_refuses(hal: Hal, tmp_path: Path, kind: str) -> None:
    if kind == "symlink-loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        repo = str(tmp_path / "a")
    else:
        repo = "x" * 5000 if kind == "name-too-long" else "x/" * 3000
    out = hal("run", "--repo", repo, "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 4
    assert "cannot use --repo" in one_error_line(out)
    shown = hal("trust", "--show", repo)
    assert shown.returncode in (2, 3, 4) and "Traceback" not in shown.stderr
    one_error_line(shown)


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


@pytest.mark.parametrize("option", ["--ref", "--repo", "--agent", "--env", "--prompt-file"])
def test_arguments_that_are_not_utf8(
    hal_env: dict[str, str], demo_repo: Path, option: str
) -> None:
    value = b"A=\xff" if option == "--env" else b"ma\xffin"
    out = subprocess.run(
        [sys.executable.encode(), b"-m", b"hal9999", b"run", option.encode(), value, b"x"],
        cwd=demo_repo, env=hal_env, capture_output=True, text=True, errors="replace",
    )  # fmt: skip
    assert out.returncode == 2
    assert "not UTF-8 text" in one_error_line(out)


def test_a_hal_variable_that_is_not_utf8(hal_env: dict[str, str], demo_repo: Path) -> None:
    env = {k.encode(): v.encode() for k, v in hal_env.items()}
    env[b"HAL_AGENT"] = b"cl\xffaude"
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", "run", "x"],
        cwd=demo_repo, env=env, capture_output=True, text=True, errors="replace",
    )  # fmt: skip
    assert out.returncode == 2
    assert "HAL_AGENT: not UTF-8 text" in one_error_line(out)


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
    ("args", "env"),
    [(("--secret", "HAL_TEST_TOKEN"), {"HAL_TEST_TOKEN": "s3cr3t-Value-77"}),
     (("--env", "GH_TOKEN"), {"GH_TOKEN": "s3cr3t-Value-77"}),  # a secret by its name
     (("--env", "HAL_TEST_TOKEN=s3cr3t-Value-77", "--secret", "HAL_TEST_TOKEN"), {})],
)  # fmt: skip
def test_a_prompt_holding_a_secrets_value_is_refused_without_saying_it(
    hal: Hal, hal_env: dict[str, str], args: tuple[str, ...], env: dict[str, str]
) -> None:
    """A prompt is stored, listed and shown as written: the value of one of the run's
    secrets in it (here inside a pasted link) is refused by name."""
    name = "GH_TOKEN" if "GH_TOKEN" in args else "HAL_TEST_TOKEN"
    prompt = "push with https://x:s3cr3t-Value-77@example.invalid/r.git"
    out = hal("run", *args, "--agent", "true {{prompt_file}}", prompt, env=env)
    assert out.returncode == 2, out.stderr
    line = one_error_line(out)
    assert line.startswith(f"hal: error: the prompt holds the value of {name}, a secret (refer")
    assert "s3cr3t" not in out.stderr + out.stdout
    assert tasks_json(hal) == [] and no_sessions(hal_env)
    # A literal --env value is configuration, not a secret: it may be in the prompt.
    plain = hal("run", "--env", "MODE=s3cr3t-Value-77", "--agent", "true {{prompt_file}}",
                "use MODE s3cr3t-Value-77")  # fmt: skip
    assert plain.returncode == 0, plain.stderr


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
