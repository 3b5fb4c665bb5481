"""The supervisor parses the agent's raw output before masking, and caps what it writes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hal9999.errors import ConfigError
from hal9999.events.models import Usage
from hal9999.process.caplog import CappedLog, log_cap_from
from hal9999.process.supervisor import supervise
from hal9999.tasks.output import parsed_offset_after, read_parsed

CAPTURED_CLAUDE = Path(__file__).parents[1] / "agents" / "captured" / "claude" / "stdout.jsonl"


def _run(tmp_path: Path, script: str, *options: str, env: dict[str, str] | None = None) -> int:
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return supervise(
            [
                "--log",
                str(tmp_path / "agent.log"),
                "--exit",
                str(tmp_path / "exit"),
                *options,
                "--",
                sys.executable,
                "-c",
                script,
            ]
        )
    finally:
        os.environ.clear()
        os.environ.update(old)


def _usage(tmp_path: Path) -> Usage:
    records, _ = read_parsed(tmp_path / "parsed.jsonl", 0)
    [usage] = [event for _, event, _ in records if isinstance(event, Usage)]
    return usage


@pytest.mark.parametrize("secret", ["false", "error", "12052", "0.049168", "input_tokens"])
def test_parser_reads_raw_output_while_the_log_is_masked(tmp_path: Path, secret: str) -> None:
    script = f"import sys; sys.stdout.write(open({str(CAPTURED_CLAUDE)!r}).read())"
    status = _run(
        tmp_path,
        script,
        "--mask-var",
        "WORD",
        "--parser",
        "claude",
        "--events",
        str(tmp_path / "parsed.jsonl"),
        env={"WORD": secret},
    )
    assert status == 0
    usage = _usage(tmp_path)
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (12052, 48, 0.049168)
    assert usage.total
    log = (tmp_path / "agent.log").read_text()
    assert secret not in log and "[REDACTED]" in log
    # Text fields of parsed events are masked too (numbers are not text).
    for line in (tmp_path / "parsed.jsonl").read_text().splitlines():
        event = json.loads(line)["event"]
        texts = [v for v in event.values() if isinstance(v, str) and v != event["type"]]
        assert not [t for t in texts if secret in t]


def test_parsed_events_name_the_log_offset_that_covers_them(tmp_path: Path) -> None:
    script = f"import sys; sys.stdout.write(open({str(CAPTURED_CLAUDE)!r}).read())"
    parsed = tmp_path / "parsed.jsonl"
    assert _run(tmp_path, script, "--parser", "claude", "--events", str(parsed)) == 0
    size = (tmp_path / "agent.log").stat().st_size
    records, end = read_parsed(parsed, 0)
    assert records and end == parsed.stat().st_size
    assert all(0 < log_end <= size for log_end, _, _ in records)
    # An adopted run that has read the whole log carries on after every record ...
    assert parsed_offset_after(parsed, size) == parsed.stat().st_size
    # ... and one that has read nothing starts from the first.
    assert parsed_offset_after(parsed, 0) == 0
    assert parsed_offset_after(tmp_path / "missing.jsonl", 10) == 0


def test_log_keeps_head_and_tail_and_says_what_was_dropped(tmp_path: Path) -> None:
    # 200 numbered lines of 100 bytes through a 4 KiB cap.
    script = "import sys\nfor i in range(200): sys.stdout.write(f'{i:05d}' + 'x' * 94 + '\\n')"
    assert _run(tmp_path, script, "--log-cap", "4096") == 0
    log = (tmp_path / "agent.log").read_bytes()
    assert len(log) <= 4096 + 200
    assert log.startswith(b"00000x")
    assert log.rstrip().endswith(b"00199" + b"x" * 94)
    marker = [line for line in log.split(b"\n") if line.startswith(b"[hal: ")]
    assert len(marker) == 1 and b"bytes of output dropped" in marker[0]
    dropped = int(marker[0].split()[1])
    kept = len(log) - len(marker[0]) - 2
    assert dropped + kept == 200 * 100
    assert not list(tmp_path.glob(".agent.log.tail-*"))


def test_capped_log_without_overflow_writes_everything(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "a.log", 1000)
    log.write(b"x" * 500)
    assert log.close() == 0
    assert (tmp_path / "a.log").read_bytes() == b"x" * 500


@pytest.mark.parametrize(("value", "expected"), [("", 256 << 20), ("1", 1 << 20), ("0.5", 1 << 19)])
def test_log_cap_from_environment(value: str, expected: int) -> None:
    assert log_cap_from({"HAL_LOG_CAP_MB": value}) == expected


@pytest.mark.parametrize("value", ["nan", "-3", "x", "0", "inf", " "])
def test_a_bad_log_cap_is_refused_naming_the_variable(value: str) -> None:
    # It used to be the default cap without a word: HAL_LOG_CAP_MB=1O kept 256 MiB.
    with pytest.raises(ConfigError, match=r"^HAL_LOG_CAP_MB: expected a number of MiB above 0"):
        log_cap_from({"HAL_LOG_CAP_MB": value})


def test_credential_file_values_are_masked_by_the_supervisor(tmp_path: Path) -> None:
    cred = tmp_path / "netrc"
    cred.write_text("machine api.example.com login me password s3cretPassw0rd\n")
    script = "print('login me password s3cretPassw0rd and', '733363726574'.upper())"
    assert _run(tmp_path, script, "--mask-file", str(cred)) == 0
    log = (tmp_path / "agent.log").read_text()
    assert "s3cretPassw0rd" not in log and "login me password [REDACTED]" in log


def test_a_parser_that_cannot_load_never_stops_the_agent(tmp_path: Path) -> None:
    parsed = tmp_path / "parsed.jsonl"
    status = _run(
        tmp_path, "print('agent ran')", "--parser", "no-such-preset", "--events", str(parsed)
    )
    assert status == 0
    log = (tmp_path / "agent.log").read_text()
    assert "agent ran" in log and "hal: no parsed events for this run" in log


def test_parsed_events_are_bounded_but_usage_stays_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal9999.process import parsedevents

    monkeypatch.setattr(parsedevents, "MAX_EVENT_TEXT", 20)
    monkeypatch.setattr(parsedevents, "PARSED_CAP", 600)
    script = f"import sys; sys.stdout.write(open({str(CAPTURED_CLAUDE)!r}).read())"
    parsed = tmp_path / "parsed.jsonl"
    assert _run(tmp_path, script, "--parser", "claude", "--events", str(parsed)) == 0
    events = [event for _, event, _ in read_parsed(parsed, 0)[0]]
    kinds = [event.type for event in events]
    assert "tool_call" in kinds  # the first events, before the cap
    assert "agent_text" not in kinds  # the last text came after the cap
    usage = _usage(tmp_path)
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (12052, 48, 0.049168)
    results = [e for e in events if e.type == "tool_result"]
    assert all(len(r.output) < 80 for r in results)  # type: ignore[attr-defined]
    assert any("more characters in the log" in r.output for r in results)  # type: ignore[attr-defined]
    assert "parsed events past 600 bytes" in (tmp_path / "agent.log").read_text()


async def test_a_follower_wakes_as_soon_as_the_exit_status_is_written(tmp_path: Path) -> None:
    # The supervisor writes a byte to the FIFO hal made beside the exit file: the
    # follower's nap ends then, not at its next poll.
    import asyncio
    import time

    from hal9999.process.supervisor import ended_path, write_exit_status
    from hal9999.tasks.follow import _EndedSignal

    exit_file = tmp_path / "exit-0"
    os.mkfifo(ended_path(exit_file), 0o600)
    signal = _EndedSignal.open(exit_file)
    assert signal is not None
    try:
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, write_exit_status, exit_file, 3)
        async with asyncio.timeout(120):  # woken: a nap of an hour would time out here
            await signal.nap(3600)
        assert exit_file.read_text() == "3\n"
        start = time.monotonic()
        await signal.nap(0.2)  # once: a signal without an exit status must not make it spin
        assert time.monotonic() - start >= 0.15
    finally:
        signal.close()


async def test_without_a_listener_or_a_fifo_the_exit_status_is_written_all_the_same(
    tmp_path: Path,
) -> None:
    import asyncio

    from hal9999.process.supervisor import ended_path, write_exit_status
    from hal9999.tasks.follow import _EndedSignal

    # A FIFO nobody listens on: the write neither blocks nor fails.
    os.mkfifo(ended_path(tmp_path / "exit-0"), 0o600)
    write_exit_status(tmp_path / "exit-0", 0)
    assert (tmp_path / "exit-0").read_text() == "0\n"
    # No FIFO at all (a run started by an older hal): nothing to open, the follower polls.
    write_exit_status(tmp_path / "exit-1", 1)
    assert _EndedSignal.open(tmp_path / "exit-1") is None
    # A regular file or a link where the FIFO belongs is neither written nor followed.
    plain = Path(ended_path(tmp_path / "exit-2"))
    plain.write_text("keep\n")
    write_exit_status(tmp_path / "exit-2", 2)
    assert plain.read_text() == "keep\n" and _EndedSignal.open(tmp_path / "exit-2") is None
    target = tmp_path / "elsewhere"
    os.mkfifo(target, 0o600)
    os.symlink(target, ended_path(tmp_path / "exit-3"))
    assert _EndedSignal.open(tmp_path / "exit-3") is None
    write_exit_status(tmp_path / "exit-3", 3)
    assert (tmp_path / "exit-3").read_text() == "3\n"
    await asyncio.sleep(0)


def test_the_supervised_command_line_comes_with_a_private_fifo_beside_the_exit_file(
    tmp_path: Path,
) -> None:
    import stat

    from hal9999.process.launch import supervised
    from hal9999.process.supervisor import ended_path
    from hal9999.spec import ArgvCommand, ProcessSpec

    class Box:
        provider = "local"

        def launch(self, command: object, *, env: object = None) -> object:
            from hal9999.providers.base import Launch

            return Launch(argv=["true"], env={}, cwd=None)

    spec = ProcessSpec(
        name="agent",
        command=ArgvCommand(argv=("true",)),
        log_path=tmp_path / "log",
        exit_path=tmp_path / "exit-0",
    )
    (tmp_path / "exit-0").write_text("1\n")  # a previous run's: removed
    supervised(Box(), spec, {})  # type: ignore[arg-type]
    made = os.lstat(ended_path(spec.exit_path))
    assert stat.S_ISFIFO(made.st_mode) and stat.S_IMODE(made.st_mode) == 0o600
    assert not spec.exit_path.exists()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_the_supervisor_passes_a_stop_signal_to_the_agent(tmp_path: Path, name: str) -> None:
    # What `hal task stop` and a process manager send the supervisor reaches the agent's
    # process group, and the agent's own exit is what is recorded.
    import signal
    import subprocess
    import time

    from hal9999.process.launch import SUPERVISOR

    ready, marker = tmp_path / "ready", tmp_path / "got"
    script = (
        "import signal, sys, time, pathlib\n"
        f"def got(n, f): pathlib.Path({str(marker)!r}).write_text(str(n)); sys.exit(7)\n"
        f"signal.signal(signal.{name}, got)\n"
        f"pathlib.Path({str(ready)!r}).write_text('')\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [*SUPERVISOR, "--log", str(tmp_path / "log"), "--exit", str(tmp_path / "exit"),
         "--", sys.executable, "-c", script],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.02)
        proc.send_signal(getattr(signal, name))
        assert proc.wait(timeout=30) == 7
    finally:
        proc.kill()
        proc.wait()
    assert marker.read_text() == str(int(getattr(signal, name)))
    assert (tmp_path / "exit").read_text() == "7\n"


def test_an_event_nested_too_deep_to_write_never_stops_the_supervisor(tmp_path: Path) -> None:
    # A record of a type the parser does not know is kept whole as a raw event; one nested
    # 400 deep could not be serialised, and the exception ended the supervisor itself: the
    # rest of the log lost, no exit status, the agent's pipe closed under it.
    # One nested past Python's JSON parser stopped the parser for the rest of the run.
    deep = '{"type": "weird", "x": ' + "[" * 400 + "]" * 400 + "}"
    deeper = '{"type": "weird", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    result = json.dumps({"type": "result", "usage": {"input_tokens": 7, "output_tokens": 3}})
    script = f"print({deep!r}); print({deeper!r}); print({result!r}); print('the end')"
    parsed = tmp_path / "parsed.jsonl"
    assert _run(tmp_path, script, "--parser", "claude", "--events", str(parsed)) == 0
    assert (tmp_path / "exit").read_text().strip() == "0"
    assert (_usage(tmp_path).input_tokens, _usage(tmp_path).output_tokens) == (7, 3)
    log = (tmp_path / "agent.log").read_text()
    assert "the end" in log and "an event too deep to record" in log
