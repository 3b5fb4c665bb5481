"""The real key never enters the sandbox: a hostile agent finds no trace of a canary key, while
the scripted LLM server receives exactly the canary on every call (``network = "none"``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.e2e.conftest import HalCli, files_containing, git
from tests.llm_server.script import Script, Turn
from tests.llm_server.server import ScriptedLLMServer

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(180)]

HOSTILE = Path(__file__).with_name("hostile_agent.py")


def hostile_report(hal: HalCli, task_id: str) -> dict[str, object]:
    """The hostile agent's findings, from the task's log."""
    logs = hal("task", "logs", task_id).stdout
    [line] = [line for line in logs.splitlines() if line.startswith("HOSTILE ")]
    report: dict[str, object] = json.loads(line.removeprefix("HOSTILE "))
    return report


def test_canary_key_stays_on_the_host(
    hal_cli: HalCli, llm_server: ScriptedLLMServer, bug_repo: Path, dummy_key: str
) -> None:
    shutil.copy(HOSTILE, bug_repo / "hostile.py")
    (bug_repo / "hostile.py").chmod(0o755)
    git(bug_repo, "add", "hostile.py")
    git(bug_repo, "commit", "-qm", "hostile agent")
    llm_server.script = Script(turns=[Turn.say("hello")], model="claude-sonnet-4-5")
    hal_cli.config_file.parent.mkdir(parents=True, exist_ok=True)
    hal_cli.config_file.write_text(
        "[agents.claude]\n"
        'command = "/workspace/hostile.py"\n'
        f'base_url = "{llm_server.base_url}"\n'
        'api_key_env = "E2E_LLM_API_KEY"\n'
    )
    out = hal_cli("run", "--agent", "claude", "--provider", "bwrap", "find the key")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [task] = json.loads(hal_cli("task", "list", "--json").stdout)

    report = hostile_report(hal_cli, task["id"])
    assert report["proc_hits"] == [] and report["file_hits"] == []
    assert isinstance(report["files_seen"], int) and report["files_seen"] > 10
    assert report["gateway_dir"] == ["egress.sock", "forwarder.pl", "forwarder.py", "llm.sock"]
    assert report["token_prefix"] == "hal-gw-", "the agent holds a placeholder, not a key"
    assert report["status"] == 200
    assert report["forged_status"] == 401

    calls = llm_server.requests.all()
    assert len(calls) == 1, "the forged token never reaches the upstream"
    assert calls[0].headers["x-api-key"] == dummy_key

    lines = hal_cli("task", "events", task["id"], "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    usage = [e for e in events if e["type"] == "usage" and e["source"] == "gateway"]
    assert [(u["status"], u["model"]) for u in usage] == [(200, "claude-sonnet-4-5")]
    assert usage[0]["input_tokens"] > 0 and usage[0]["output_tokens"] > 0
    assert files_containing(hal_cli.home, dummy_key.encode()) == []
    assert dummy_key not in out.stdout + out.stderr
