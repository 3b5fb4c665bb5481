"""``hal task logs ID`` (no ``--follow``) in process is answered without click and pydantic
when the store alone answers and the task is not in flight, and prints byte for byte what
the click command prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import IMPORTED
from tests.support.hal import Hal
from tests.support.tasks import make_task
from tests.support.thin import FULL, HEAVY, _env, _hal

from hal9999.cli.task import logs
from hal9999.cli.task_logs import CHUNK, IN_FLIGHT, LOG_NAME, logs_args
from hal9999.store import Store
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE

LOGS = {
    "t0000005": b"",  # succeeded, an empty log
    "t0000006": "plain é ✓ 🚀\nline two\n".encode(),  # failed
    "t0000007": b"\x00\x01\x07bell\x7f\r\n\xff\xfe not utf-8 \xc3",  # cancelled: raw bytes
    "t0000008": b"\x1b[31mred\x1b[0m \x1b[2J\x1b]0;title\x07 \x1b[H\x9bc tail \x1b[",  # escapes
    "t0000009": ("ü" * (CHUNK - 1) + "✓" * 3 + "x" * 1000 + "\x1b[1m").encode(),  # 2 chunks+
    "full0001": (b"y" * 4_000_000) + b"\n",  # a huge log
}
"""A log for finished tasks of ``home`` (``t0000010``, interrupted, has none)."""


def _bytes(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
    """A real ``hal ARGS``, its output as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "hal9999", *args], env=_env(home, **extra),
        cwd=home.parent / "here", capture_output=True, timeout=60, check=False,
    )  # fmt: skip


def _write_logs(home: Path) -> None:
    for task_id, data in LOGS.items():
        (home / "sessions" / task_id / LOG_NAME).write_bytes(data)


@pytest.mark.parametrize(
    "argv",
    [["abc"], [], ["a", "b"], ["-f", "abc"], ["abc", "--follow"], ["--help"], ["--", "abc"],
     ["-"], ["-x"]],
)  # fmt: skip
def test_arguments_are_read_as_click_reads_them_or_left_to_it(argv: list[str]) -> None:
    thin = logs_args(argv)
    if thin is None:
        return
    params = logs.make_context("logs", list(argv)).params
    assert (params["task_id"], params["follow"]) == (thin, False)


def test_the_names_are_the_sessions_and_the_states() -> None:
    assert Session(Path("/s")).log == Path("/s") / LOG_NAME
    assert {str(status) for status in ACTIVE} == IN_FLIGHT


@pytest.mark.parametrize("task_id", [*LOGS, "t0000010", " t0000006 ", "full"])
def test_the_thin_logs_are_the_click_commands_byte_for_byte(home: Path, task_id: str) -> None:
    _write_logs(home)
    _, loaded = _hal(home, "task", "logs", task_id)
    assert loaded & HEAVY == set()
    thin = _bytes(home, "task", "logs", task_id)
    full = _bytes(home, "task", "logs", task_id, **FULL)
    assert (thin.returncode, thin.stdout, thin.stderr) == (0, full.stdout, b"")
    assert full.returncode == 0
    if task_id in ("t0000006", " t0000006 "):
        assert thin.stdout == LOGS["t0000006"]


def test_a_task_in_flight_or_no_task_is_the_full_paths(home: Path) -> None:
    _write_logs(home)
    (home / "sessions" / "t0000004" / LOG_NAME).write_bytes(b"still going\n")  # running
    for task_id in ("t0000004", "t0000000", "t", "nope", ""):
        _, loaded = _hal(home, "task", "logs", task_id)
        assert "click" in loaded, task_id
        thin = _bytes(home, "task", "logs", task_id)
        full = _bytes(home, "task", "logs", task_id, **FULL)
        assert (thin.returncode, thin.stdout, thin.stderr) == (
            full.returncode,
            full.stdout,
            full.stderr,
        )
    assert _bytes(home, "task", "logs", "t0000004").stdout == b"still going\n"
    assert _bytes(home, "task", "logs", "nope").returncode != 0


def test_a_log_that_does_not_open_is_the_full_paths_to_word(home: Path) -> None:
    (home / "sessions" / "t0000005" / LOG_NAME).mkdir()
    _, loaded = _hal(home, "task", "logs", "t0000005")
    assert "click" in loaded
    done = _bytes(home, "task", "logs", "t0000005")
    assert done.returncode != 0 and LOG_NAME.encode() in done.stderr


def test_through_a_running_daemon_the_logs_are_the_click_commands(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    home = Path(hal_env["HAL_HOME"])
    with Store.open(home) as store:
        store.insert_task(make_task(home, "d0000001", "succeeded", created_at=10.0))
    (home / "sessions" / "d0000001" / LOG_NAME).write_bytes("from the daemon's home ü\n".encode())
    assert hal("serve", "--detach").returncode == 0
    try:
        args = [sys.executable, "-c", IMPORTED, "task", "logs", "d0000001"]
        run = {"cwd": demo_repo, "capture_output": True, "text": True, "timeout": 60}
        thin = subprocess.run(args, env=hal_env, check=False, **run)  # type: ignore[call-overload]
        full = subprocess.run(args, env={**hal_env, **FULL}, check=False, **run)  # type: ignore[call-overload]
        assert "click" in json.loads(thin.stderr.splitlines()[-1])  # asked first, left to click
        assert thin.stdout == full.stdout == "from the daemon's home ü\n"
    finally:
        assert hal("serve", "--stop").returncode == 0


def test_a_reader_gone_ends_both_paths_quietly_with_141(home: Path) -> None:
    _write_logs(home)
    ends = []
    for extra in ({}, FULL):
        hal = subprocess.Popen(
            [sys.executable, "-m", "hal9999", "task", "logs", "full0001"], env=_env(home, **extra),
            cwd=home.parent / "here", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert hal.stdout is not None and hal.stderr is not None
        assert hal.stdout.read(10) == b"y" * 10
        hal.stdout.close()  # the reader goes away mid-log
        ends.append((hal.wait(timeout=60), hal.stderr.read()))
        hal.stderr.close()
    assert ends[0] == ends[1] == (141, b"")
