"""A bad environment for hal (a ``HAL_HOME`` it cannot use, a damaged or newer database,
``HAL_*`` variables it cannot take, a deleted current directory) ends in one clear line and
the documented status, never a traceback; ``hal doctor`` reports it instead of crashing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.quick_agents import quick_agents_path
from tests.support.hal import Hal, one_error_line

BWRAP = shutil.which("bwrap")


def quick(directory: Path) -> str:
    """The PATH of a doctor run here: the agent CLIs answer at once (tests/cli/quick_agents.py);
    these tests are about HAL_HOME and the database."""
    return quick_agents_path(directory / "quick-agents", os.environ.get("PATH", "/usr/bin:/bin"))


@pytest.mark.parametrize("where", ["file", "below-file"])
@pytest.mark.parametrize("command", [("task", "list"), ("run", "x"), ("dashboard",)])
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


@pytest.mark.parametrize("where", ["home", "below", "dangling"])
def test_a_symlink_loop_hal_home_is_named_as_one(hal: Hal, tmp_path: Path, where: str) -> None:
    # A HAL_HOME that is a symlink loop was "a file of that name is in the way".
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere" if where == "dangling" else link)
    home = link / "home" if where == "below" else link
    out = hal("task", "list", env={"HAL_HOME": str(home)})
    assert out.returncode == 2
    line = one_error_line(out)
    assert "in the way" not in line and "HAL_HOME" in line
    if where == "dangling":
        assert f"it is a symlink to {tmp_path / 'nowhere'}, which does not exist" in line
    else:
        assert f"{link} is a symlink loop" in line and f"remove the symlink {link}" in line


@pytest.mark.parametrize("where", ["below-file", "symlink-loop"])
def test_doctor_reports_a_bad_hal_home_instead_of_crashing(
    hal: Hal, tmp_path: Path, where: str
) -> None:
    # A symlink loop was a crash report: the docker provider's check resolved its state
    # directory in the home (RuntimeError: Symlink loop).
    blocker = tmp_path / "blocker"
    if where == "symlink-loop":
        blocker.symlink_to(blocker)
    else:
        blocker.write_text("")
    env = {"HAL_HOME": str(blocker / "home"), "PATH": quick(tmp_path)}
    out = hal("doctor", "--json", env=env, timeout=120)
    assert "Traceback" not in out.stderr
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert not checks["HAL_HOME"]["ok"] and "HAL_HOME" in checks["HAL_HOME"]["fix"]


def test_doctor_fails_on_a_corrupt_database(hal: Hal, hal_env: dict[str, str]) -> None:
    assert hal("task", "list").returncode == 0  # creates a healthy hal.db
    db = Path(hal_env["HAL_HOME"], "hal.db")
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 8192)
    out = hal(
        "doctor", "--json", env={"PATH": quick(Path(hal_env["HAL_HOME"]).parent)}, timeout=120
    )
    assert out.returncode == 1, out.stdout
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert not checks["database"]["ok"] and "move" in checks["database"]["fix"]
    listed = hal("task", "list")
    assert listed.returncode != 0 and str(db) in one_error_line(listed)


def test_doctor_fails_on_a_database_of_a_newer_hal(hal: Hal, hal_env: dict[str, str]) -> None:
    import sqlite3

    assert hal("task", "list").returncode == 0  # creates a healthy hal.db
    db = Path(hal_env["HAL_HOME"], "hal.db")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    listed = hal("task", "list")
    assert listed.returncode != 0 and "newer than this hal knows" in one_error_line(listed)
    out = hal(
        "doctor", "--json", env={"PATH": quick(Path(hal_env["HAL_HOME"]).parent)}, timeout=120
    )
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
        env = hal_env | {"PATH": quick(tmp_path)}
        out = subprocess.run(
            [*argv, *command], env=env, capture_output=True, text=True, timeout=120
        )
        assert "Traceback" not in out.stderr, out.stderr
        if command == ["doctor"]:
            assert out.returncode == 1 and "read-only" in out.stdout
        else:
            assert out.returncode == 2 and "read-only" in one_error_line(out)


@pytest.mark.bwrap
@pytest.mark.skipif(BWRAP is None, reason="needs bwrap for a read-only mount")
def test_a_read_only_hal_home_lists_what_is_there(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    """A home on a read-only mount (a backup, a snapshot) is listed; a command that must
    write says in one line which directory is read-only and how to go on."""
    done = hal("run", "--agent", "true {{prompt_file}}", "listed while read-only")
    assert done.returncode == 0, done.stderr
    home = Path(hal_env["HAL_HOME"])
    argv = [str(BWRAP), "--dev-bind", "/", "/", "--ro-bind", str(home), str(home),
            sys.executable, "-m", "hal9999"]  # fmt: skip

    def ro(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv, *command], env=hal_env, capture_output=True, text=True,
                              timeout=120, cwd=demo_repo)  # fmt: skip

    listed = ro("task", "list")
    assert listed.returncode == 0 and "listed while read-only" in listed.stdout, listed.stderr
    [task] = json.loads(ro("task", "list", "--json").stdout)
    assert task["status"] == "succeeded"
    for command in (("task", "show", task["id"]), ("task", "events", task["id"]),
                    ("task", "requests", task["id"]), ("sandbox", "list")):  # fmt: skip
        out = ro(*command)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (command, out.stderr)
    assert "end: succeeded" in ro("task", "events", task["id"]).stdout
    for command in (("run", "x"), ("task", "rm", task["id"]), ("task", "resume", task["id"])):
        out = ro(*command)
        line = one_error_line(out)
        assert out.returncode == 2 and str(home) in line and "HAL_HOME" in line, (command, line)


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


def test_a_hal_variable_that_is_not_utf8(hal_env: dict[str, str], demo_repo: Path) -> None:
    env = {k.encode(): v.encode() for k, v in hal_env.items()}
    env[b"HAL_AGENT"] = b"cl\xffaude"
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", "run", "x"],
        cwd=demo_repo, env=env, capture_output=True, text=True, errors="replace",
    )  # fmt: skip
    assert out.returncode == 2
    assert "HAL_AGENT: not UTF-8 text" in one_error_line(out)


@pytest.mark.parametrize("option", ["--secret", "--env"])
def test_a_forwarded_variable_that_is_not_utf8_is_named(
    hal_env: dict[str, str], demo_repo: Path, option: str
) -> None:
    """``--secret`` of one was an internal error (its masker could not encode it), and
    through ``hal serve`` either option was refused as "a lone UTF-16 surrogate" in the
    request body, naming no variable."""
    env = {k.encode(): v.encode() for k, v in hal_env.items()}
    env[b"MY_T_TOKEN"] = b"sk-\xff\xfe-not-text-42"
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", "run", option, "MY_T_TOKEN", "--agent",
         "true {{prompt_file}}", "x"],
        cwd=demo_repo, env=env, capture_output=True, text=True, errors="replace",
    )  # fmt: skip
    assert out.returncode == 8, out.stderr
    assert "environment variable MY_T_TOKEN is not UTF-8 text" in one_error_line(out)
    assert "not-text-42" not in out.stdout + out.stderr


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


@pytest.mark.parametrize(
    ("value", "bypass"),
    [("false", False), ("0", False), ("off", False), ("", False), ("1", True), ("yes", True)],
)
def test_hal_no_daemon_false_means_no(tmp_path: Path, value: str, bypass: bool) -> None:
    # HAL_NO_DAEMON=false used to bypass the running daemon like HAL_NO_DAEMON=1.
    from hal9999.cli.via_daemon import find_daemon
    from hal9999.config import HalConfig
    from hal9999.server.runtime import DaemonFiles, DaemonInfo

    config = HalConfig(home=tmp_path / "home")
    files = DaemonFiles(config.home)
    files.paths.ensure()
    files.ensure_token()
    socket = tmp_path / "hal.sock"
    socket.write_text("")  # stands for the daemon's socket: find() only checks it exists
    with files.lock():  # held, as by a running daemon
        files.write_info(DaemonInfo(pid=1, socket=str(socket), port=1, started_at=0.0))
        found = find_daemon(config, {"HAL_NO_DAEMON": value})
    assert (found is None) == bypass


def test_a_hal_no_daemon_that_is_neither_yes_nor_no_is_refused(hal: Hal) -> None:
    out = hal("run", "--agent", "true {{prompt_file}}", "x", env={"HAL_NO_DAEMON": "maybe"})
    assert out.returncode == 2
    assert "HAL_NO_DAEMON: expected 1 or 0, got 'maybe'" in one_error_line(out)


def test_a_bad_log_cap_variable_is_refused_before_a_task(hal: Hal, hal_env: dict[str, str]) -> None:
    out = hal("run", "--agent", "true {{prompt_file}}", "x", env={"HAL_LOG_CAP_MB": "1O"})
    assert out.returncode == 2, out.stderr
    assert "HAL_LOG_CAP_MB: expected a number of MiB above 0, got '1O'" in one_error_line(out)
    assert not list(Path(hal_env["HAL_HOME"]).glob("sessions/*"))


@pytest.mark.parametrize(
    ("var", "value", "args"),
    [("HAL_QEMU_IMAGES", "images", ("image", "list")),
     ("HAL_QEMU_IMAGES", " /srv/images", ("image", "list")),
     ("HAL_PM2_HOME", "pm2", ("run", "--process-manager", "pm2", "--agent", "true {{prompt}}",
                              "x"))],
)  # fmt: skip
def test_a_relative_or_padded_directory_variable_is_refused(
    hal: Hal, var: str, value: str, args: tuple[str, ...]
) -> None:
    # It was taken relative to each working directory: images or PM2 state came and went.
    out = hal(*args, env={var: value})
    assert out.returncode == 2, out.stderr
    assert f"{var}: expected an absolute directory, got {value!r}" in one_error_line(out)


def test_a_hal_home_with_a_name_too_long_is_one_line(hal: Hal, tmp_path: Path) -> None:
    # The thin task list's stat() raised ENAMETOOLONG, then so did the crash reporter.
    home = tmp_path / ("h" * 300)
    out = hal("task", "list", env={"HAL_HOME": str(home), "HAL_PROVIDER": ""})  # thin path
    assert out.returncode == 2
    line = one_error_line(out)
    assert "File name too long" in line and "HAL_HOME" in line


@pytest.mark.parametrize(
    "args", [("--version",), ("task", "list"), ("task", "list", "--json"), ("agent", "list")]
)
def test_a_reader_that_went_away_is_no_crash_report(
    hal_env: dict[str, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    """``hal task events ID | head``: the write to the closed pipe was "internal error
    (BrokenPipeError ...)" and a crash log, or a traceback for ``hal --version``."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before hal writes a byte
    try:
        out = subprocess.run(
            [sys.executable, "-m", "hal9999", *args], stdout=write_end, stderr=subprocess.PIPE,
            env=hal_env, cwd=tmp_path, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert out.returncode == 141, out.stderr  # as a process killed by SIGPIPE
    assert out.stderr == "", out.stderr
    home = Path(hal_env["HAL_HOME"])
    assert not home.exists() or not list(home.rglob("hal-crash-*"))


@pytest.mark.parametrize("events", [False, True], ids=["output", "--events"])
def test_a_run_whose_reader_went_away_goes_on_and_brings_its_work_back(
    hal_env: dict[str, str], demo_repo: Path, events: bool
) -> None:
    """``hal run ... | head -1``: the write to the closed pipe ended the run as
    ``interrupted``, the agent's work not brought back and its later output not recorded;
    the run now goes on unseen to its end."""
    agent = (
        "sh -c 'echo first; sleep 1; for i in $(seq 2000); do echo line $i; done;"
        " echo made > made.txt'"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal9999", "run", *(["--events"] if events else []),
         "--agent", agent, "x"], cwd=demo_repo,
        env=hal_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first == b"first\n" or (events and b'"task_created"' in first), first
    proc.stdout.close()  # as `head -1` does once it has its line
    try:
        status = proc.wait(timeout=120)
        stderr = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.stderr.close()
    # The summary found the pipe closed, as under SIGPIPE; --events prints no summary.
    assert status == (0 if events else 141), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    listed = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "list", "--json"], cwd=demo_repo,
        env=hal_env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    [task] = json.loads(listed.stdout)
    assert task["status"] == "succeeded" and task["files_changed"] == 1, task
    events = Path(task["session_dir"]) / "events.jsonl"
    text = "".join(json.loads(line).get("text", "") for line in events.read_text().splitlines())
    assert "line 2000\n" in text  # its output past the reader's going is recorded
    assert events or "can no longer be shown" in text
