"""What a person sees of a run: no escape injection in any viewer, readable output in a
terminal, bounded output on disk, and an offline agent named before it starts."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import _fake_claude, _run_in_terminal
from tests.support.hal import Hal, events_of, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

# Window title, clipboard write (OSC 52), clear screen, cursor up, erase line, 8-bit CSI,
# carriage return; then a colour that must survive.
HOSTILE_AGENT = (
    "sh -c 'printf \"\\033]0;pwned\\007\\033]52;c;ZXZpbA==\\007\\033[2J\\033[1A\\033[2K"
    "\\302\\2332J\\rstatus succeeded\\033[31mred\\033[0m\\n\"'"
)
INJECTIONS = ["\x1b]", "\x1b[2J", "\x1b[1A", "\x1b[2K", "\x9b", "\r"]


def _assert_clean(text: str) -> None:
    for bad in INJECTIONS:
        assert bad not in text, (bad, text)
    assert "\x1b[31mred\x1b[0m" in text


def test_no_viewer_passes_terminal_escapes_from_the_agent(hal: Hal) -> None:
    out = hal("run", "--agent", HOSTILE_AGENT, "x")
    assert out.returncode == 0, out.stderr
    _assert_clean(out.stdout)
    [task] = tasks_json(hal)
    # The log on disk keeps the agent's bytes; every viewer cleans them.
    log = (Path(task["session_dir"]) / "agent.log").read_text()
    assert "\x1b]52;" in log
    for args in (["logs"], ["logs", "-f"], ["events", "--output"]):
        shown = hal("task", *args, task["id"])
        assert shown.returncode == 0, shown.stderr
        _assert_clean(shown.stdout)
    text = hal("task", "events", task["id"]).stdout
    assert not [bad for bad in INJECTIONS if bad in text]
    raw = hal("task", "events", "--json", task["id"]).stdout
    assert "\x1b" not in raw and "\x9b" not in raw
    assert any(e["type"] == "output" and "\x1b]52" in e["text"] for e in events_of(hal, task["id"]))


def test_the_patch_a_hostile_agent_writes_is_clean_on_a_terminal_and_exact_in_a_pipe(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The agent's bytes in a changed file: `hal task diff` wrote them to the terminal raw.
    writer = HOSTILE_AGENT.replace("\\n\"'", "\\n\" >> calc.py'")
    assert writer != HOSTILE_AGENT
    out = hal("run", "--agent", writer, "x")
    assert out.returncode == 0, out.stderr
    [task] = tasks_json(hal)
    patch = (Path(task["session_dir"]) / "result.patch").read_bytes()
    assert b"\x1b]52;" in patch and b"\r" in patch
    shown = _run_in_terminal(["task", "diff", task["id"]], hal_env, demo_repo)
    _assert_clean(shown.replace("\r\n", "\n"))  # the terminal's own newlines (onlcr)
    assert "status succeeded" in shown
    piped = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "diff", task["id"]],
        cwd=demo_repo, env=hal_env, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert piped.stdout == patch  # what `git apply` reads


def test_output_on_disk_is_capped_with_head_and_tail(hal: Hal) -> None:
    agent = "sh -c 'seq 1 400000'"  # about 2.7 MB
    out = hal("run", "--agent", agent, "x", "--json", env={"HAL_LOG_CAP_MB": "1"})
    assert out.returncode == 0, out.stderr
    [task] = tasks_json(hal)
    session = Path(task["session_dir"])
    log = (session / "agent.log").read_text()
    assert len(log) < (1 << 20) + 1000
    assert log.startswith("1\n2\n3\n") and log.endswith("399999\n400000\n")
    assert "bytes of output dropped here (log cap)" in log
    events = events_of(hal, task["id"])
    recorded = sum(len(e["text"]) for e in events if e["type"] == "output")
    assert 0 < recorded <= 1 << 19
    assert any(e["type"] == "message" and "output events stop after" in e["text"] for e in events)
    assert (session / "events.jsonl").stat().st_size < 1 << 20


def test_offline_api_agent_is_named_before_it_starts(hal: Hal, hal_env: dict[str, str]) -> None:
    """With the LLM gateway (the default) the missing key is named, never the network: the
    gateway needs none in the sandbox; with the gateway off, the network is what lacks."""
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('network = "none"\n[agents.claude]\ncommand = "false"\n')
    env = {"ANTHROPIC_API_KEY": ""}
    out = hal("run", "--agent", "claude", "x", env=env)
    lines = out.stderr.splitlines()
    [warning] = [i for i, line in enumerate(lines) if line.startswith("hal: warning: agent")]
    [started] = [i for i, line in enumerate(lines) if line.startswith("hal: task ")]
    assert warning < started  # said before the agent starts
    assert "has no API key: ANTHROPIC_API_KEY is not set" in lines[warning], lines[warning]
    assert (
        "hal auth claude login" in lines[warning]
        and "network" not in lines[warning].split("needs no network")[1]
    ), lines[warning]
    [task] = tasks_json(hal)
    again = hal("task", "resume", task["id"], env=env)
    # Up front: after at most the line naming the config files, before anything else.
    head = again.stderr.splitlines()[:2]
    assert any(line.startswith("hal: warning: agent claude has no API key") for line in head)
    config.write_text(
        'network = "none"\n[gateway]\nenabled = false\n[agents.claude]\ncommand = "false"\n'
    )
    out = hal("run", "--agent", "claude", "x", env=env)
    [warning] = [line for line in out.stderr.splitlines() if line.startswith("hal: warning: agent")]
    assert "calls an LLM API" in warning and 'network = "host"' in warning, warning


def test_terminal_shows_rendered_events_raw_and_jsonl_on_request(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    _fake_claude(hal_env, demo_repo)
    shown = _run_in_terminal(["run", "--agent", "claude", "fix it"], hal_env, demo_repo)
    assert "Done: add() now returns a + b and the test passes." in shown
    assert "▸ Read" in shown and "calc.py" in shown
    assert "▸ Bash" in shown and "python3 -m unittest -q test_calc" in shown
    assert '{"type":' not in shown  # no raw stream-json
    assert "tokens    12052 in, 48 out" in shown and "cost      $0.0492" in shown

    raw = _run_in_terminal(["run", "--raw", "--agent", "claude", "fix it"], hal_env, demo_repo)
    assert '"type":"result"' in raw

    out = hal("run", "--events", "--agent", "claude", "fix it")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = {e["type"] for e in events}
    assert {"phase", "tool_call", "tool_result", "usage", "task_end"} <= kinds
    assert events[-1]["type"] == "task_end" and events[-1]["status"] == "succeeded"


@pytest.fixture
def claude_replay(hal_env: dict[str, str], demo_repo: Path) -> None:
    """The claude preset replays a captured run (configured before any daemon starts)."""
    _fake_claude(hal_env, demo_repo)


@pytest.mark.usefixtures("claude_replay", "daemon")
def test_through_the_daemon_the_views_are_the_same(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    shown = _run_in_terminal(["run", "--agent", "claude", "fix it"], hal_env, demo_repo)
    assert "Done: add() now returns a + b and the test passes." in shown
    assert "▸ Read" in shown and '{"type":' not in shown

    out = hal("run", "--events", "--agent", "claude", "fix it")
    assert out.returncode == 0, out.stderr
    assert "via hal serve" in out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert {"tool_call", "usage", "task_end"} <= {e["type"] for e in events}

    # A resume shows its own run, not the earlier ones again.
    task_id = events[0]["task_id"]
    again = _run_in_terminal(["task", "resume", task_id], hal_env, demo_repo)
    assert again.count("Done: add() now returns a + b") == 1, again

    hostile = hal("run", "--agent", HOSTILE_AGENT, "x")
    assert hostile.returncode == 0, hostile.stderr
    _assert_clean(hostile.stdout)


# A clean filter of the checkout's own config fails collection with the agent's bytes on
# stderr: they become the task's error, which the run's closing summary and `task show` print.
FAILING_FILTER = r"""
bytes='\033]52;c;ZXZpbA==\007\033[2J\033[1A\233boom'
git config filter.x.clean "sh -c 'printf \"$bytes\" >&2; exit 1'"
git config filter.x.required true
echo '* filter=x' > .git/info/attributes
echo changed >> calc.py
"""


def test_the_error_a_hostile_agent_makes_reaches_no_viewer_raw(hal: Hal, demo_repo: Path) -> None:
    (demo_repo / "evil.sh").write_text(FAILING_FILTER)
    subprocess.run(["git", "add", "evil.sh"], cwd=demo_repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "evil"],
        cwd=demo_repo, check=True,
    )  # fmt: skip
    out = hal("run", "--agent", "sh evil.sh", "x")
    assert out.returncode != 0
    [task] = tasks_json(hal)
    assert "\x1b]52" in task["error_message"]  # recorded as the agent made it
    assert "boom" in out.stdout + out.stderr
    for text in (out.stdout + out.stderr, hal("task", "show", task["id"]).stdout):
        assert not [bad for bad in [*INJECTIONS, "\x1b"] if bad in text], text


# Stream-json a hostile "claude" prints: lone UTF-16 surrogates as JSON escapes (which
# json.loads decodes and no encoder takes), also in a key, and a tool name with escapes.
LONE_SURROGATES = [
    {"type": "system", "subtype": "init", "session_id": "s1", "model": "m"},
    {"type": "assistant", "message": {"content": [{"type": "text", "text": "hi \ud800 there"}]}},
    {"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t1", "name": "Bash\udfff\x1b]52;c;aGk=\x07",
         "input": {"\udc00key": ["\ud83d"]}}]}},
    {"type": "odd\ud800", "value": "\udbff"},
    {"type": "result", "subtype": "success", "result": "done \ud800", "session_id": "s1"},
]  # fmt: skip


def test_lone_surrogates_in_an_agents_json_never_fail_the_run(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # Before, the first of them made `hal run` fail with an internal error (the event log
    # could not encode it) and left the task interrupted, its work not collected.
    (demo_repo / "evil-stream.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in LONE_SURROGATES)
    )
    script = demo_repo / "fake-claude"
    script.write_text("#!/bin/sh\ncat /workspace/evil-stream.jsonl\necho changed > calc.txt\n")
    script.chmod(0o755)
    subprocess.run(["git", "add", "."], cwd=demo_repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "evil"],
        cwd=demo_repo, check=True,
    )  # fmt: skip
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[agents.claude]\ncommand = "/workspace/fake-claude"\n')
    out = hal("run", "--agent", "claude", "x")
    assert out.returncode == 0, out.stderr
    assert "internal error" not in out.stdout + out.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded" and task["files_changed"] == 1
    events = events_of(hal, task["id"])
    texts = [e["text"] for e in events if e["type"] == "agent_text"]
    assert "hi \ufffd there" in texts
    [call] = [e for e in events if e["type"] == "tool_call"]
    assert call["name"].startswith("Bash\ufffd") and call["input"] == {"\ufffdkey": ["\ufffd"]}
    [raw] = [e for e in events if e["type"] == "raw" and e["data"].get("value")]
    assert raw["data"] == {"type": "odd\ufffd", "value": "\ufffd"}
    shown = hal("task", "events", task["id"])
    assert shown.returncode == 0 and "Bash" in shown.stdout and "\x1b]" not in shown.stdout


def test_a_style_the_agent_leaves_set_hides_nothing_hal_prints_after(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # Colours pass, and so did a conceal (ESC[8m) the agent left set at its end: the run's
    # summary ("status failed") was printed invisible after the agent's own fake line.
    from tests.support.cli import _hidden_at_end

    agent = "sh -c 'printf \"status    succeeded\\033[8m\\033[30;40m\\n\"; exit 3'"
    for args in (["run", "--agent", agent, "x"], ["run", "--raw", "--agent", agent, "x"]):
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "hal9999", *args], cwd=demo_repo,
                                env=hal_env, stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=subprocess.PIPE)  # fmt: skip
        os.close(slave)
        chunks: list[bytes] = []
        while select.select([master], [], [], 60)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        proc.communicate(timeout=60)
        shown = b"".join(chunks).decode()
        assert "\x1b[8m" in shown  # the agent's styles are kept...
        summary = shown.index("task      ")
        assert not _hidden_at_end(shown[:summary]), (args, shown)  # ...and closed
        assert "status    failed" in shown[summary:]
