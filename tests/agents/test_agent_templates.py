"""Command templates and the launcher, run for real under sh."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hal9999.agents.base import AgentContext, AgentLaunch, AgentSettings
from hal9999.agents.custom import TemplateAgent, agent_launch, key_forwarding
from hal9999.agents.parsing import PlainTextParser
from hal9999.errors import ConfigError, UsageError
from hal9999.spec import ArgvCommand

NASTY = (
    'Fix "it"; don\'t stop\n$(touch /tmp/pwned) `id` && rm -rf / ; echo $HOME \\n & {{prompt}}\n'
)

REPORT = (
    "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}))"
)
"""A stand-in agent that reports the argv and stdin it got."""


def context(tmp_path: Path, prompt: str = NASTY) -> AgentContext:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(prompt)
    (tmp_path / "home").mkdir(exist_ok=True)
    return AgentContext(
        task_id="t-42",
        prompt=prompt,
        prompt_file=str(prompt_file),
        workspace=str(tmp_path),
        home=str(tmp_path / "home"),
    )


def execute(launch: AgentLaunch, **host_env: str) -> subprocess.CompletedProcess[str]:
    """Run a launch the way a runner would: host env, launch env, forwarded secrets."""
    command = launch.command
    assert isinstance(command, ArgvCommand)
    env = {"PATH": os.environ["PATH"]} | launch.env
    env |= {name: host_env[name] for name in launch.secret_env if name in host_env}
    return subprocess.run(
        list(command.argv),
        cwd=command.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def report(launch: AgentLaunch, **host_env: str) -> dict[str, object]:
    done = execute(launch, **host_env)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def template(*argv: str) -> str:
    return shlex.join([sys.executable, "-c", REPORT, *argv])


def test_prompt_with_shell_syntax_stays_one_argv_element(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    agent = TemplateAgent(template("--msg", "{{prompt}}", "--file={{prompt_file}}"))
    got = report(agent.build(ctx))
    assert got["argv"] == ["--msg", NASTY.rstrip("\n"), f"--file={ctx.prompt_file}"]
    assert not Path("/tmp/pwned").exists()


def test_prompt_inside_a_larger_element(tmp_path: Path) -> None:
    agent = TemplateAgent(template("--message=<<{{ prompt }}>>"))
    got = report(agent.build(context(tmp_path, "a & b \\1 $x")))
    assert got["argv"] == ["--message=<<a & b \\1 $x>>"]


def test_all_placeholders_are_filled(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    agent = TemplateAgent(template("{{workspace}}", "{{task_id}}", "h={{home}}", "{{prompt_file}}"))
    got = report(agent.build(ctx))
    assert got["argv"] == [ctx.workspace, "t-42", f"h={ctx.home}", ctx.prompt_file]


def test_prompt_is_on_stdin_too(tmp_path: Path) -> None:
    got = report(TemplateAgent(template("--read-stdin")).build(context(tmp_path)))
    assert got["stdin"] == NASTY


def test_template_without_prompt_placeholder_does_not_substitute(tmp_path: Path) -> None:
    launch = TemplateAgent(template("x")).build(context(tmp_path))
    assert "HAL_PROMPT_MARK" not in launch.env
    assert report(launch)["argv"] == ["x"]


def test_template_result_is_an_argv_command_with_the_program(tmp_path: Path) -> None:
    agent = TemplateAgent("my-agent --task {{prompt_file}}", AgentSettings(extra_args=("-v",)))
    assert agent.program == "my-agent"
    assert not agent.supports_resume
    assert isinstance(agent.parser(), PlainTextParser)
    launch = agent.build(context(tmp_path))
    assert isinstance(launch.command, ArgvCommand)
    assert launch.command.argv[-4:] == ("my-agent", "--task", str(tmp_path / "prompt.txt"), "-v")
    assert launch.env["HOME"] == str(tmp_path / "home")


def test_command_setting_replaces_the_program(tmp_path: Path) -> None:
    agent = TemplateAgent("my-agent {{prompt_file}}", AgentSettings(command="/opt/x/agent"))
    assert agent.program == "/opt/x/agent"
    assert agent.build(context(tmp_path)).command.argv[4] == "/opt/x/agent"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("my-agent {{promt}}", r"\{\{promt\}\}.*\{\{prompt\}\}"),
        ("my-agent {{prompt", "unterminated"),
        ("my-agent 'unclosed", "cannot parse"),
        ("   ", "empty"),
    ],
)
def test_bad_templates_are_usage_errors(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        TemplateAgent(text)
    assert "{{prompt_file}}" in (info.value.hint or "") or "quote" in (info.value.hint or "")


def test_launcher_copies_the_key_to_the_agents_variable(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    settings = AgentSettings(api_key_env="HOST_KEY")
    key_env, secret_env = key_forwarding(settings, ["AGENT_KEY", "OTHER_KEY"])
    show = "import json, os; print(json.dumps({k: v for k, v in os.environ.items()}))"
    launch = agent_launch(ctx, [sys.executable, "-c", show], env=key_env, secret_env=secret_env)
    assert secret_env == ("HOST_KEY",)
    done = execute(launch, HOST_KEY="sk-123")
    env = json.loads(done.stdout)
    assert env["AGENT_KEY"] == env["OTHER_KEY"] == env["HOST_KEY"] == "sk-123"
    assert not any(name.startswith("HAL_API_KEY") for name in env)


def test_launcher_sets_nothing_when_the_host_key_is_missing(tmp_path: Path) -> None:
    key_env, _ = key_forwarding(AgentSettings(api_key_env="HOST_KEY"), ["AGENT_KEY"])
    show = "import os; print(os.environ.get('AGENT_KEY', 'unset'))"
    launch = agent_launch(context(tmp_path), [sys.executable, "-c", show], env=key_env)
    assert execute(launch).stdout.strip() == "unset"


def test_key_forwarding_rejects_a_bad_variable_name() -> None:
    with pytest.raises(ConfigError):
        key_forwarding(AgentSettings(api_key_env="$(id)"), ["X"])


def test_launcher_reports_a_missing_program(tmp_path: Path) -> None:
    done = execute(agent_launch(context(tmp_path), ["hal-no-such-agent", "--x"]))
    assert done.returncode == 127
    assert "hal-no-such-agent is not installed" in done.stderr


def test_every_mark_in_every_element_is_the_prompt_and_the_order_stays(tmp_path: Path) -> None:
    agent = TemplateAgent(template("a", "{{prompt}}+{{prompt}}", "b", "x{{prompt}}"))
    got = report(agent.build(context(tmp_path, "p *$1 {{prompt}}")))
    prompt = "p *$1 {{prompt}}"  # the prompt's own mark is text: substituted once, not again
    assert got["argv"] == ["a", f"{prompt}+{prompt}", "b", f"x{prompt}"]


def test_launcher_refuses_a_key_variable_that_is_not_a_name(tmp_path: Path) -> None:
    # hal never sets one (key_forwarding checks the name), but the launcher's `eval` must
    # not see anything else all the same.
    pwned = tmp_path / "pwned"
    for bad in (f"X;touch {pwned}", "1X", "X}"):
        launch = agent_launch(context(tmp_path), ["true"], env={"HAL_API_KEY_ENV": bad})
        done = execute(launch)
        assert done.returncode == 2, bad
        assert "not a variable name" in done.stderr
    assert not pwned.exists()


FORWARDER = "import json, sys; open(sys.argv[1] + '.args', 'w').write(json.dumps(sys.argv[2:]))"


@pytest.mark.parametrize("egress", [False, True])
def test_launcher_starts_the_gateway_forwarder(tmp_path: Path, egress: bool) -> None:
    gateway = tmp_path / "gw"
    gateway.mkdir()
    (gateway / "forwarder.py").write_text(
        f"import sys; sys.argv.insert(1, {str(gateway / 'called')!r}); exec({FORWARDER!r})"
    )
    env = {"HAL_GATEWAY_PORT": "4100", "HAL_GATEWAY_DIR": str(gateway)}
    if egress:
        env |= {"HAL_EGRESS_PORT": "4101", "HAL_GATEWAY_TOKEN": "tok"}
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    launch = agent_launch(context(tmp_path), [sys.executable, "-c", show], env=env)
    done = execute(launch)
    assert done.returncode == 0, done.stderr
    args = json.loads((gateway / "called.args").read_text())
    seen = json.loads(done.stdout)
    llm = ["4100", f"{gateway}/llm.sock"]
    if egress:
        assert args == [*llm, "4101", f"{gateway}/egress.sock"]
        assert seen["HTTPS_PROXY"] == seen["http_proxy"] == "http://hal:tok@127.0.0.1:4101"
        assert seen["NO_PROXY"] == "127.0.0.1,localhost"
    else:
        assert args == llm
        assert "HTTPS_PROXY" not in seen
    assert not {"HAL_GATEWAY_PORT", "HAL_GATEWAY_DIR", "HAL_EGRESS_PORT"} & set(seen)
