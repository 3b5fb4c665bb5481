"""The canary: a secret given to a task is found nowhere it must not be."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.cli import CAPTURED_CLAUDE, _fake_claude
from tests.support.daemon import poll, wait_status
from tests.support.hal import Hal, events_of, one_error_line, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

CANARY = "canary-7f3a9e1c5b2d4f60-SECRET"
CRED = "cred-file-canary-91e0d2c4b7a6"


def argv_of_all_processes() -> list[bytes]:
    """Every process's command line, as ``ps`` would show it."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
    return found


def files_containing(root: Path, needle: bytes, skip: set[Path]) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [
        path
        for path in root.rglob("*")
        if path.is_file() and path not in skip and needle in path.read_bytes()
    ]


def test_canary_secret_is_nowhere(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    cred_source = tmp_path / "token.json"
    cred_source.write_text(CRED)
    config_dir = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        f'[[credentials]]\nsource = "{cred_source}"\ntarget = ".config/tool/token.json"\n'
    )
    # The agent uses the secret (and even prints it), checks the credential file, then waits
    # so the test can look at every process's argv while it runs.
    agent = (
        "sh -c '"
        'echo "token=$CANARY_TOKEN"; '
        'test "$(stat -c %a "$HOME/.config/tool/token.json")" = 600 && echo cred-mode-ok; '
        'grep -q cred-file-canary "$HOME/.config/tool/token.json" && echo cred-ok; '
        'echo "$CANARY_TOKEN" | wc -c > length.txt; '
        "sleep 2'"
    )
    env = {**hal_env, "CANARY_TOKEN": CANARY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hal9999.cli.main",
            "run",
            "--env",
            "CANARY_TOKEN",
            "--agent",
            agent,
            "use the token",
        ],
        cwd=demo_repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen_in_argv = False
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        for cmd in argv_of_all_processes():
            seen_in_argv |= CANARY.encode() in cmd or CRED.encode() in cmd
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert not seen_in_argv

    # The agent really had the secret: it printed it (masked) and measured its length.
    assert b"token=[REDACTED]" in out
    assert b"cred-mode-ok" in out and b"cred-ok" in out
    [task] = tasks_json(hal)
    session = Path(task["session_dir"])
    assert (session / "workspace" / "length.txt").read_text().strip() == str(len(CANARY) + 1)

    assert CANARY.encode() not in out + err
    home = Path(hal_env["HAL_HOME"])
    # The credential file lived in the session only while the run used it (mode 600,
    # checked by the agent above); afterwards no file under HAL_HOME holds either secret.
    assert not (session / "home" / ".config" / "tool" / "token.json").exists()
    for needle in (CANARY.encode(), CRED.encode()):
        assert files_containing(home, needle, skip=set()) == []
    for name in ("hal.db", "hal.db-wal"):
        path = home / name
        if path.exists():
            assert CANARY.encode() not in path.read_bytes()
    events = hal("task", "events", task["id"], "--json").stdout
    assert CANARY not in events and "[REDACTED]" in events
    assert "CANARY_TOKEN" in task["env_keys"]


def test_missing_forwarded_variable_is_a_clear_error(hal: Hal) -> None:
    out = hal("run", "--env", "NOT_SET_ANYWHERE_123", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 8
    assert "NOT_SET_ANYWHERE_123 is not set" in out.stderr
    assert tasks_json(hal) == []


def _captured_result() -> dict[str, object]:
    import json

    lines = [json.loads(line) for line in CAPTURED_CLAUDE.read_text().splitlines() if line]
    [result] = [r for r in lines if r.get("type") == "result"]
    return result


@pytest.mark.parametrize(
    ("args", "extra_env", "masked"),
    [
        # A literal value is configuration: never masked, even when it is a common word.
        (["--env", "FLAG=false", "--env", "VERBOSE=true"], {}, None),
        # A marked secret that is a common word or a number in the output: masked in the
        # log, while usage and cost, parsed from the raw output, stay exact.
        (["--secret", "WORD"], {"WORD": "error"}, "error"),
        (["--secret", "PIN"], {"PIN": "12052"}, "12052"),
    ],
)
def test_masking_never_corrupts_usage_and_cost(
    hal: Hal,
    hal_env: dict[str, str],
    demo_repo: Path,
    args: list[str],
    extra_env: dict[str, str],
    masked: str | None,
) -> None:
    _fake_claude(hal_env, demo_repo)
    out = hal("run", "--agent", "claude", *args, "fix it", env=extra_env)
    assert out.returncode == 0, out.stderr
    [task] = tasks_json(hal)
    result = _captured_result()
    usage = result["usage"]
    assert isinstance(usage, dict)
    assert task["input_tokens"] == usage["input_tokens"]
    assert task["output_tokens"] == usage["output_tokens"]
    assert task["cost_usd"] == result["total_cost_usd"]
    log = (Path(task["session_dir"]) / "agent.log").read_text()
    if masked is None:
        assert "[REDACTED]" not in log
        assert '"is_error":false' in log
    else:
        assert masked not in log and "[REDACTED]" in log
        # No text of any event holds it (field names and numbers are not text).
        texts = [s for event in events_of(hal, task["id"]) for s in _strings(event)]
        assert texts and not [s for s in texts if masked in s]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_forwarded_secret_by_name_is_masked_and_plain_value_is_not(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    agent = "sh -c 'echo \"k=$MY_API_KEY m=$MODE_NAME\"'"
    env = {"MY_API_KEY": "plainword", "MODE_NAME": "fastmode"}
    out = hal("run", "--env", "MY_API_KEY", "--env", "MODE_NAME", "--agent", agent, "x", env=env)
    assert out.returncode == 0, out.stderr
    [task] = tasks_json(hal)
    log = (Path(task["session_dir"]) / "agent.log").read_text()
    assert "k=[REDACTED] m=fastmode" in log


def test_credential_file_values_are_masked_and_reinstalled_on_resume(
    hal: Hal, hal_env: dict[str, str], tmp_path: Path
) -> None:
    token = "ghp_9fK2mQ7xLw4Zt8Rb1Vn6Yc3Hd5Js0Ae"
    cred = tmp_path / "hosts.yml"
    cred.write_text(f"github.com:\n  user: octocat\n  oauth_token: {token}\n")
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[[credentials]]\nsource = "{cred}"\ntarget = ".config/gh/hosts.yml"\n')
    # The agent prints the file, and the token hex-encoded and base64-encoded.
    agent = (
        "sh -c 'f=$HOME/.config/gh/hosts.yml; cat $f; "
        'grep oauth_token $f | cut -d" " -f4 | tr -d "\\n" | od -An -tx1; '
        'grep oauth_token $f | cut -d" " -f4 | base64\''
    )
    out = hal("run", "--agent", agent, "x")
    assert out.returncode == 0, out.stderr
    [task] = tasks_json(hal)
    session = Path(task["session_dir"])
    log = (session / "agent.log").read_text()
    assert "user: octocat" in log  # the file is shown, its token is not
    assert token not in log and token.encode().hex()[:20] not in log.replace(" ", "")
    assert "[REDACTED]" in log
    assert not (session / "home" / ".config" / "gh" / "hosts.yml").exists()
    again = hal("task", "resume", task["id"], "again")
    assert again.returncode == 0, again.stderr
    log = (session / "agent.log").read_text()
    assert log.count("user: octocat") == 2  # installed again for the second run
    assert token not in log
    assert not (session / "home" / ".config" / "gh" / "hosts.yml").exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://bob:Tr0ub4dor3x@127.0.0.1:9/x.git",
        "https://ghp_Tr0ub4dor3x0123456789@127.0.0.1:9/x.git",
        "ssh://git:Tr0ub4dor3x@127.0.0.1:9/x.git",
    ],
)
@pytest.mark.parametrize("via_daemon", [False, True])
def test_a_repo_url_with_credentials_is_refused_before_anything_keeps_it(
    hal: Hal, url: str, via_daemon: bool
) -> None:
    # The URL is the task's `repo`: its record, its events, the dashboard and host git's
    # command line would all show the password. Refused up front, the password not echoed.
    if via_daemon:
        assert hal("serve", "--detach").returncode == 0
    try:
        out = hal("run", "--repo", url, "--agent", "true {{prompt_file}}", "x")
        assert out.returncode == 4, out.stderr
        assert "carries credentials in its URL" in out.stderr
        assert "credential.helper" in out.stderr
        assert "Tr0ub4dor3x" not in out.stdout + out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert tasks_json(hal) == []
    finally:
        if via_daemon:
            assert hal("serve", "--stop").returncode == 0


def test_a_repo_url_with_a_user_name_only_is_not_refused(hal: Hal) -> None:
    # ssh://git@ and https://alice@ (Bitbucket's clone URLs) name a user, not a secret.
    out = hal("run", "--repo", "https://alice@127.0.0.1:9/x.git", "--agent", "true", "x")
    assert "carries credentials" not in out.stderr


@pytest.mark.parametrize("via_daemon", [False, True], ids=["in-process", "daemon"])
def test_a_resume_prompt_holding_a_secrets_value_is_refused_without_saying_it(
    hal: Hal, hal_env: dict[str, str], via_daemon: bool
) -> None:
    # `hal run` refused a prompt holding a secret's value; `hal task resume TASK PROMPT` took
    # it, and the follow-up prompt was stored and shown as written.
    value = "tok-9f8e7d6c5b4a3210"
    env = {"HAL_TEST_TOKEN": value}
    if via_daemon:
        assert hal("serve", "--detach", env=env).returncode == 0
    try:
        out = hal("run", "--secret", "HAL_TEST_TOKEN", "--agent", "true {{prompt_file}}",
                  "first", env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr
        [task] = tasks_json(hal)
        leaky = f"now push with https://x:{value}@example.invalid/r.git"
        for args, extra in [((), env), (("--env", f"HAL_TEST_TOKEN={value}"), {})]:
            refused = hal("task", "resume", task["id"], *args, leaky, env=extra)
            assert refused.returncode == 2, refused.stderr
            assert "the prompt holds the value of HAL_TEST_TOKEN, a secret" in refused.stderr
            assert value not in refused.stderr + refused.stdout
        [after] = tasks_json(hal)
        assert after["status"] == "succeeded", "a refused resume leaves the task as it was"
        home = Path(hal_env["HAL_HOME"])
        assert files_containing(home, value.encode(), set()) == []
        fine = hal("task", "resume", task["id"], "push; the token is in HAL_TEST_TOKEN", env=env)
        assert fine.returncode == 0, fine.stderr
    finally:
        if via_daemon:
            assert hal("serve", "--stop").returncode == 0


def test_a_resume_prompt_holding_a_secret_only_the_client_knows_never_reaches_the_daemon(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    # The daemon checked a resume's prompt against the secrets of its own environment only:
    # one that only the client's shell held (sent with `hal run`, never kept) went through,
    # and the prompt was stored and given to the agent as written.
    value = "tok-client-only-5e4d3c2b1a"
    client = {"HAL_TEST_TOKEN": value}
    assert hal("serve", "--detach").returncode == 0  # HAL_TEST_TOKEN is not in its environment
    try:
        out = hal("run", "--secret", "HAL_TEST_TOKEN", "--agent", "true {{prompt_file}}",
                  "first", env=client)  # fmt: skip
        assert out.returncode == 0, out.stderr
        [task] = tasks_json(hal)
        leaky = f"resume-marker-31c7: push with https://x:{value}@example.invalid/r.git"
        for detach in ((), ("--detach",)):
            refused = hal("task", "resume", task["id"], *detach, leaky, env=client)
            assert refused.returncode == 2, refused.stderr
            assert "the prompt holds the value of HAL_TEST_TOKEN, a secret" in refused.stderr
            assert value not in refused.stderr + refused.stdout
        [after] = tasks_json(hal)
        assert after["status"] == "succeeded", "the daemon never saw the resume"
        home = Path(hal_env["HAL_HOME"])
        for needle in (value, "resume-marker-31c7"):
            assert files_containing(home, needle.encode(), set()) == [], needle
    finally:
        assert hal("serve", "--stop").returncode == 0


SEEN = (
    'sh -c \'printf %s "$HAL_TEST_TOKEN" | sha256sum | cut -c1-16 | sed s/^/seen=/; '
    'grep -q hold "$HAL_PROMPT_FILE" && exec sleep 60; true\''
)
"""An agent that prints a hash of its HAL_TEST_TOKEN (never the value: the value is in no
argv and no file), then waits to be stopped when its prompt says ``hold``."""


def _seen(value: str) -> str:
    return "seen=" + hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.mark.parametrize("via_daemon", [False, True], ids=["in-process", "daemon"])
def test_a_resume_through_the_daemon_carries_the_clients_secret_as_hal_run_does(
    hal: Hal, hal_env: dict[str, str], via_daemon: bool
) -> None:
    # `hal run` through the daemon sends the values of the task's secrets from the client's
    # shell; `hal task resume` sent only its --env: a secret only the client's shell held
    # was missing in the daemon, and the resumed run failed there. In-process, the resume
    # reads its own environment (unchanged).
    value = "tok-resume-carried-8c1d2e3f4a"
    client = {"HAL_TEST_TOKEN": value}
    home = Path(hal_env["HAL_HOME"])
    if via_daemon:
        # HAL_TEST_TOKEN is not in its environment.
        assert hal("serve", "--detach").returncode == 0
    try:
        out = hal("run", "--detach", "--secret", "HAL_TEST_TOKEN", "--agent", SEEN, "hold",
                  env=client)  # fmt: skip
        assert out.returncode == 0, out.stderr
        task_id = out.stdout.strip()
        running = wait_status(hal, task_id, {"running"})
        log = Path(running["session_dir"]) / "agent.log"
        # `running` is recorded as the launch starts; the log comes with the supervisor.
        poll("the first run's agent", lambda: log.exists() and _seen(value) in log.read_text())
        assert hal("task", "stop", task_id).returncode == 0
        assert wait_status(hal, task_id, {"stopped"})

        # A shell without the secret: refused before the task is touched (through the
        # daemon, before anything is sent; in-process, before it is queued for a run that
        # could not start, which a later daemon would have run), naming it and how to give
        # it (never on the command line).
        for detach in ((), ("--detach",)):
            lacking = hal("task", "resume", task_id, *detach, "go on")
            assert lacking.returncode == 8, lacking.stderr
            line = one_error_line(lacking)
            assert f"task {task_id} needs HAL_TEST_TOKEN, which this shell does not set" in line
            assert "export HAL_TEST_TOKEN=..." in line and "--env" not in line, line
            assert ("hal serve keeps no value" in line) == via_daemon, line
        [after] = [t for t in tasks_json(hal) if t["id"] == task_id]
        assert after["status"] == "stopped", "the refused resume changed the task"

        resumed = hal("task", "resume", task_id, "go on", "--json", env=client, timeout=90)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "succeeded"
        assert log.read_text().count(_seen(value)) == 2, "the resumed agent saw the secret"
        assert _seen("") not in log.read_text()
    finally:
        if via_daemon:
            assert hal("serve", "--stop").returncode == 0
    assert files_containing(home, value.encode(), set()) == []
