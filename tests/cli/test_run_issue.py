"""``hal run --issue``: an issue of a fake GitHub or GitLab becomes a task, in process and
through ``hal serve`` alike (what the fake forge does not cover: tests/forges/test_clients.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.fakes.forge_api import TOKEN, FakeForge
from tests.forges.conftest import forge as forge  # the fixture
from tests.support.cli import quick_path
from tests.support.hal import Hal, one_error_line

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

SHOW_PROMPT = "cat {{prompt_file}}"


def point_at(hal_env: dict[str, str], url: str) -> None:
    """The user's config: both forges at the fake's ``url``."""
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[forges.github]\nbase_url = "{url}"\napi_url = "{url}/api/v3"\n'
        f'[forges.gitlab]\nbase_url = "{url}"\napi_url = "{url}/api/v4"\n'
    )


def test_run_issue(
    hal: Hal, hal_env: dict[str, str], forge: FakeForge, cli_path: str, demo_repo: Path
) -> None:
    point_at(hal_env, forge.url)
    (demo_repo / "calc.py").write_text("# not committed\n")  # the directory hal runs in
    out = hal("run", "--issue", f"{forge.url}/octo/calc/issues/1", "--agent", SHOW_PROMPT,
              "keep it small", "--json", timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "uncommitted" not in out.stderr  # the issue's repository is cloned, not this one
    task = json.loads(out.stdout)
    assert task["issue"] == f"{forge.url}/octo/calc/issues/1"
    assert (task["repo"], task["repo_kind"], task["ref"]) == (
        f"{forge.url}/git/octo/calc.git", "url", "main",
    )  # fmt: skip
    log = Path(task["session_dir"], "agent.log").read_text()
    assert "Comment by @alice" in log and "still broken" in log and "keep it small" in log
    assert (Path(task["session_dir"]) / "workspace" / "calc.py").is_file()
    shown = hal("task", "show", task["id"])
    assert f"issue     {forge.url}/octo/calc/issues/1" in shown.stdout
    doc = json.loads(hal("task", "show", task["id"], "--json").stdout)
    assert doc["issue"] == task["issue"]
    events = [json.loads(line) for line in
              hal("task", "events", task["id"], "--json").stdout.splitlines()]  # fmt: skip
    assert [e["type"] for e in events[:2]] == ["task_created", "issue_fetched"]
    assert (events[1]["issue"], events[1]["url"], events[1]["comments"]) == (
        "github:octo/calc#1", task["issue"], 5,
    )  # fmt: skip


def test_run_gitlab_issue_at_a_ref(hal: Hal, hal_env: dict[str, str], forge: FakeForge) -> None:
    point_at(hal_env, forge.url)
    out = hal("run", "--issue", "gitlab:team/tools/calc#3", "--ref", "main", "--agent",
              SHOW_PROMPT, "--json", timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["issue"] == f"{forge.url}/team/tools/calc/-/issues/3"
    assert "Comment by @dave" in Path(task["session_dir"], "agent.log").read_text()


def test_issue_errors_are_one_line(
    hal: Hal, hal_env: dict[str, str], forge: FakeForge, cli_path: str
) -> None:
    point_at(hal_env, forge.url)
    cases = [
        (["--issue", "octo/calc#1"], 2, "is not an issue reference"),
        (["--issue", "github:octo/calc#99"], 13, "has no issue github:octo/calc#99"),
        (["--issue", "github:octo/calc#1", "--repo", "."], 2, "--issue and --repo"),
    ]
    for args, status, words in cases:
        out = hal("run", *args, "--agent", SHOW_PROMPT)
        assert out.returncode == status, (args, out.stderr)
        assert words in one_error_line(out), out.stderr
    forge.private.add("octo/calc")
    out = hal("run", "--issue", "github:octo/calc#1", "--agent", SHOW_PROMPT)
    assert out.returncode == 13
    assert "set GH_TOKEN or GITHUB_TOKEN" in one_error_line(out)
    assert hal("task", "list", "--json").stdout.strip() == "[]"  # no task was made


@pytest.fixture
def gh_token(hal_env: dict[str, str]) -> str:
    """``GH_TOKEN`` set for hal (and the daemon a test starts after this fixture)."""
    hal_env["GH_TOKEN"] = TOKEN
    return TOKEN


def test_private_repository_cloned_with_the_hosts_token(
    gh_token: str, hal: Hal, hal_env: dict[str, str], forge: FakeForge, cli_path: str
) -> None:
    point_at(hal_env, forge.url)
    forge.private.add("octo/calc")
    out = hal("run", "--issue", "github:octo/calc#1", "--agent", SHOW_PROMPT, "--json",
              timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert (Path(task["session_dir"]) / "workspace" / "calc.py").is_file()
    git_calls = [h for p, h in forge.seen if p.startswith("/git/")]
    assert git_calls and all(h.get("authorization", "").startswith("Basic ") for h in git_calls)
    # The token is in no file of the home (events, the store, the session) ...
    home = Path(hal_env["HAL_HOME"])
    found = subprocess.run(["grep", "-rl", "--", gh_token, str(home)], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert found.stdout == "", found.stdout
    # ... and the checkout's config names no header: the token went to git's environment.
    config = (Path(task["session_dir"]) / "workspace" / ".git" / "config").read_text()
    assert "extraHeader" not in config and "Authorization" not in config


def test_bad_forge_settings_refused_before_any_task(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, cli_path: str
) -> None:
    # A URL task's clone reads [forges] too: a typo there is refused up front, naming the key.
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[forges.github]\ntoken_envs = ["X"]\n')
    out = hal("run", "--repo", f"file://{demo_repo}", "--agent", SHOW_PROMPT, "go")
    assert out.returncode == 2, out.stderr
    line = one_error_line(out)
    assert f"{config}: [forges.github] token_envs: unknown key" in line, line
    assert "takes: base_url, api_url, token_env" in line
    assert hal("task", "list", "--json").stdout.strip() == "[]"


def test_doctor_names_a_bad_forge_table(hal: Hal, hal_env: dict[str, str]) -> None:
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[forges.gitlab]\nbase_url = "http://gitlab.example"\n[forges.gitea]\n')
    out = hal("doctor", "--json", env={"PATH": quick_path(hal_env)}, timeout=120)
    assert out.returncode == 1, out.stdout
    found = {c["name"]: c for c in json.loads(out.stdout)["checks"]}["config"]
    assert not found["ok"] and "[forges.gitea] is not a forge hal knows" in found["detail"]


def test_untrusted_project_config_cannot_send_the_token_elsewhere(
    gh_token: str, hal: Hal, hal_env: dict[str, str], forge: FakeForge, demo_repo: Path
) -> None:
    # A repository's own hal.toml names another API for the forge: until `hal trust` it is
    # ignored, so the token goes to the user's configured forge only.
    point_at(hal_env, forge.url)
    with FakeForge() as thief:
        (demo_repo / "hal.toml").write_text(
            f'[forges.github]\napi_url = "{thief.url}/api/v3"\nbase_url = "{thief.url}"\n'
        )
        out = hal("run", "--issue", "github:octo/calc#1", "--agent", SHOW_PROMPT, "--json",
                  timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert thief.seen == []
    assert any(h.get("authorization") == f"Bearer {gh_token}" for _, h in forge.seen)


def test_the_callers_token_reaches_a_daemon_without_one(
    daemon: Hal, hal_env: dict[str, str], forge: FakeForge
) -> None:
    # As the agent's API key goes: the daemon's environment need not hold the forge token;
    # the client sends its own for the run (the issue's read and the clone), never stored.
    point_at(hal_env, forge.url)
    forge.private.add("octo/calc")
    out = daemon("run", "--issue", "github:octo/calc#1", "--agent", SHOW_PROMPT, "--json",
                 env={"GH_TOKEN": TOKEN}, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert (Path(task["session_dir"]) / "workspace" / "calc.py").is_file()
    git_calls = [h for p, h in forge.seen if p.startswith("/git/")]
    assert git_calls and all(h.get("authorization", "").startswith("Basic ") for h in git_calls)
    found = subprocess.run(["grep", "-rl", "--", TOKEN, hal_env["HAL_HOME"]],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert found.stdout == "", found.stdout
