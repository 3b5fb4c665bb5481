"""Bad input to ``hal run`` and ``hal task resume`` (its options, prompt, repository,
secrets) ends in one clear line and the documented status, never a traceback, and leaves no
task or session behind when it is refused up front."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.hal import Hal, git, no_sessions, one_error_line, tasks_json


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


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "1e400", "soon", "1e-300"])
def test_bad_timeouts_are_refused_up_front(hal: Hal, hal_env: dict[str, str], value: str) -> None:
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


@pytest.mark.parametrize("option", ["--agent", "--provider", "--process-manager"])
def test_empty_names_are_refused(hal: Hal, option: str) -> None:
    out = hal("run", option, "", "x")
    assert out.returncode == 2
    assert option in one_error_line(out)
    assert tasks_json(hal) == []


@pytest.mark.parametrize("args", [("--retries", "-1"), ("--priority", str(2**70)), ("--nope",), ()])
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
    # With --json, stdout is the error as one JSON object (README); else nothing.
    if "--json" in args:
        assert json.loads(out.stdout)["error"]["code"] == "usage"
    else:
        assert out.stdout == ""
    assert no_sessions(hal_env)


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


@pytest.mark.parametrize("option", ["--ref", "--repo", "--agent", "--env", "--prompt-file"])
def test_arguments_that_are_not_utf8(hal_env: dict[str, str], demo_repo: Path, option: str) -> None:
    value = b"A=\xff" if option == "--env" else b"ma\xffin"
    out = subprocess.run(
        [sys.executable.encode(), b"-m", b"hal9999", b"run", option.encode(), value, b"x"],
        cwd=demo_repo, env=hal_env, capture_output=True, text=True, errors="replace",
    )  # fmt: skip
    assert out.returncode == 2
    assert "not UTF-8 text" in one_error_line(out)


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


def test_resume_env_by_name_takes_the_shells_value_or_names_it_missing(
    hal: Hal, demo_repo: Path
) -> None:
    """``hal task resume ID --env NAME`` (the form ``hal run --env NAME`` takes) was dropped
    without a word: the agent ran without the variable, and an unset one was not named."""
    agent = "sh -c 'echo \"[$MY_T_FOO]\" > foo.txt'"
    first = hal("run", "--agent", agent, "x", "--json")
    assert first.returncode == 0, first.stderr
    task_id = json.loads(first.stdout)["id"]
    missing = hal("task", "resume", task_id, "--env", "MY_T_UNSET_VAR")
    assert missing.returncode == 8
    assert "environment variable MY_T_UNSET_VAR is not set" in one_error_line(missing)
    out = hal("task", "resume", task_id, "--env", "MY_T_FOO", env={"MY_T_FOO": "bar"})
    assert out.returncode == 0, out.stderr
    assert git(demo_repo, "show", f"hal/{task_id}:foo.txt") == "[bar]"


@pytest.mark.parametrize("option", ["--egress", "--egress-only"])
def test_of_several_egress_hosts_the_bad_one_is_named(hal: Hal, option: str) -> None:
    """The line said only "expected HOST, HOST:PORT or *.DOMAIN[:PORT]": with several hosts
    given, not which one."""
    out = hal("run", option, "api.example.com", option, "bad host:x", "--agent", "true", "x")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "'bad host:x' is not HOST, HOST:PORT" in line and option in line, line


@pytest.mark.parametrize("value", ["0", "99999999999999999999999"])
def test_a_token_budget_out_of_range_is_refused_naming_it(
    hal: Hal, hal_env: dict[str, str], value: str
) -> None:
    """10^23 tokens was taken (past any real budget and SQLite's 64-bit integers)."""
    out = hal("run", "--max-tokens", value, "--detach", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "'--max-tokens'" in line and value in line and "1000000000000" in line, line
    assert tasks_json(hal) == [] and no_sessions(hal_env)


@pytest.mark.parametrize("where", [{}, {"HAL_NO_DAEMON": "1"}])
def test_an_empty_hal_agent_is_refused_not_read_as_the_default(
    hal: Hal, hal_env: dict[str, str], where: dict[str, str]
) -> None:
    """``HAL_AGENT=$AGENT`` with AGENT unset ran claude, the default, without a word."""
    out = hal("run", "--detach", "x", env={"HAL_AGENT": "", **where})
    assert out.returncode == 2
    line = one_error_line(out)
    assert "HAL_AGENT is set but empty" in line and "unset HAL_AGENT" in line, line
    assert tasks_json(hal) == [] and no_sessions(hal_env)


def test_diff_of_a_task_whose_session_was_deleted_says_it_is_gone(hal: Hal) -> None:
    """The hint pointed at the workspace under the deleted session directory."""
    out = hal("run", "--provider", "local", "--agent", "true {{prompt_file}}", "x", "--json")
    task = json.loads(out.stdout)
    session = Path(task["session_dir"])
    assert session.is_dir()
    shutil.rmtree(session)
    diff = hal("task", "diff", task["id"])
    assert diff.returncode == 9
    line = one_error_line(diff)
    assert f"its session directory {session} is gone" in line, line
    assert f"hal task rm {task['id']}" in line and "work, if any, is in" not in line, line
