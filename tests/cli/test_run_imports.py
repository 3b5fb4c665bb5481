"""What an in-process ``hal run`` of a command-template agent imports and builds:
nothing of click, the LLM gateway, the hive's store or the warm pool, which such a run never uses,
and none of the pydantic models it does not validate. Counted in a subprocess, so load
cannot make this pass or fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import RUN_AND_LIST

STATUS_ORDER = """
import sys
from hal9999.cli import notices
started = []
real = notices.HostGit.__init__
def spy(self, args, *rest, **kw):
    if "status" in args:
        started.append("hal9999.config" in sys.modules)
    real(self, args, *rest, **kw)
notices.HostGit.__init__ = spy
sys.argv = ["hal", *sys.argv[1:]]
from hal9999.cli.main import _main
try:
    _main()
except SystemExit:
    pass
sys.stderr.write("\\nstatus started with the config loaded: %s" % started)
"""

NOT_FOR_A_TEMPLATE_AGENT = (
    "click",  # options the entry point reads itself (cli.run_argv): no command tree
    "hal9999.cli.main",
    "httpx",
    "hal9999.auth.claude",
    "hal9999.hive.store",
    "hal9999.events.hive",
    "hal9999.pool.pool",  # the daemon's warm pool: an in-process run creates its sandbox
    "hal9999.pool.lending",
    "hal9999.pool.report",
    "hal9999.server.daemon",
    "hal9999.server.client",  # HAL_NO_DAEMON: no daemon to find or talk to
    "hal9999.trust",  # no ./hal.toml to judge
    "hal9999.config_origin",  # where a setting came from: only errors name it
    "hal9999.gateway.tasks",  # a command template names no upstream: no gateway route
    "hal9999.gateway.channel",
    "hal9999.tasks.scheduler",  # the daemon's; a run that succeeds is not retried
    "hal9999.cli.render",  # event lines and --json's task; the summary is cli.task_table's
    "hal9999.cli.output",  # stdout is no terminal here: output is streamed, not rendered
    # hal reads its plugins' entry points itself (hal9999.entrypoints) and pydantic loads no
    # plugins in hal (cli.entry.no_pydantic_plugins): nothing imports importlib.metadata,
    # nor the email package and zipfile that come with it.
    "importlib.metadata",
    "email.message",
    "zipfile",
    "tomllib",  # no config file to parse (hal9999.configfile imports it where one is)
    # Models such a run never defines (each dear even unbuilt): the
    # daemon API's request body, the gateway's row (the store mixes in its table alone).
    "hal9999.store.gateway",
    "hal9999.store.sandboxrow",  # the warm pool's row (the store mixes in its table alone)
)

FORWARD_REFS = (
    "hal9999.config",  # ConfigSources.project: ProjectConfig (hal9999.trust, not imported)
    "hal9999.hive.mcp.channel",  # McpPaths.home: its module imports Sandbox to type-check
    "hal9999.redact",  # the TypeVar bound to BaseModel (pydantic imported where needed)
)
"""Modules of hal whose body makes a ``typing.ForwardRef`` in an in-process run of a
template agent, once each."""

NOT_BUILT = (
    # Event models of kinds the run does not make (it reads none back through the union).
    "hal9999.events.models.AgentText",
    "hal9999.events.models.Output",
    "hal9999.events.models.RawEvent",
    "hal9999.events.models.ToolCall",
    "hal9999.events.models.ToolResult",
    "hal9999.events.models.Usage",
    "hal9999.events.models.EgressDenied",
    "hal9999.events.models.AgentSession",
    # Validated only inside another model's schema, or by the daemon, or not at all here.
    "hal9999.config.AgentConfig",  # no [agents.<name>] table: AgentSettings() directly
    "hal9999.config.CredentialFile",
    "hal9999.config.GatewayConfig",  # HalConfig's default is built without validation
    "hal9999.config.ModelPrice",
    "hal9999.pool.settings.ProviderSettings",  # no [pool] table, no HAL_* pool setting:
    "hal9999.pool.settings.SchedulerSettings",  # the defaults (values.defaults_of)
    "hal9999.providers.bwrap.provider.BwrapConfig",  # no [providers.bwrap] table: likewise
    "hal9999.spec.RestartPolicy",  # ProcessSpec's default is built without validation
    "hal9999.spec.ShellCommand",
)
"""Pydantic models an in-process run of a template agent has no use for: built on first
use (``defer_build``), not at import."""

# The plugin contract (agents, providers, process managers make and read these): kept as
# dataclasses.
DATACLASSES = frozenset({
    "hal9999.agents.base.AgentContext",
    "hal9999.agents.base.AgentLaunch",
    "hal9999.spec.AgentSettings",
    "hal9999.agents.base.McpServer",
    "hal9999.process.base.ProcessStatus",
    "hal9999.providers.base.Capabilities",
    "hal9999.providers.base.ExecResult",
    "hal9999.providers.base.Launch",
    "hal9999.providers.base.SandboxInfo",
    "hal9999.providers.base.StreamEvent",
})  # fmt: skip
"""The only dataclasses an in-process run of a template agent defines. Python 3.11 makes each
dataclass's methods by compiling their source at import, for each
class; hal's other records on this path are named tuples or plain classes."""


def _run_and_list(
    hal_env: dict[str, str], demo_repo: Path, manager: str = "direct"
) -> tuple[set[str], str]:
    """An in-process run of a template agent (``RUN_AND_LIST``) under process manager
    ``manager``: the modules it imported, and its models' JSON line."""
    env = {**hal_env, "HAL_NO_DAEMON": "1"}
    argv = ["run", "--agent", "true {{prompt_file}}", "--process-manager", manager, "x"]
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *argv],
        cwd=demo_repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    *_, status, listed, models = done.stderr.splitlines()
    assert status in ("exit 0", "exit None"), done.stderr[-2000:]
    return set(json.loads(listed)), models


@pytest.mark.bwrap
def test_an_in_process_run_imports_no_gateway_or_hive_store_and_builds_only_its_models(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    modules, models = _run_and_list(hal_env, demo_repo)
    assert "hal9999.tasks.runner" in modules  # the run did happen in this process
    assert not modules & set(NOT_FOR_A_TEMPLATE_AGENT), sorted(
        modules & set(NOT_FOR_A_TEMPLATE_AGENT)
    )
    found = json.loads(models)
    built = set(found["built"])
    assert "hal9999.events.models.TaskEnd" in built  # the run built what it used
    assert not built & set(NOT_BUILT), sorted(built & set(NOT_BUILT))
    assert found["union"] is False  # the union of every event kind: no run reads through it
    assert set(found["dataclasses"]) <= DATACLASSES, sorted(set(found["dataclasses"]) - DATACLASSES)
    # The garbage collector waits while the run loads its modules (cli.app.collector_paused).
    assert found["collections"] == []
    # No model's default factory is a builtin whose signature pydantic has parsed from its
    # text (values.empty_list in place of list).
    assert found["tokenized"] == 0
    # A NamedTuple (or model) defined under `from __future__ import annotations` turns each
    # field's annotation text into a typing.ForwardRef, one compile() each:
    # 63 on this path before the run's NamedTuple modules evaluated their annotations (issue
    # 16). What is left names a class imported only for type checking.
    assert sorted(found["forward"]) == sorted(FORWARD_REFS), found["forward"]
    # Patterns compiled on first use, which a template run has none of: the lone-surrogate
    # class (for a JSON record to mend), a credential file's lines;
    # a --repo URL, git's refusal of another user's repository, an --egress host, an origin
    # URL to drop, a JSON line past the bound, a hive agent's name.
    from hal9999 import values
    from hal9999.agents import parsing
    from hal9999.credentials import _line_patterns
    from hal9999.hive.mcp import channel
    from hal9999.tasks import gitdir, gitrepo

    lazy = {repr(p.pattern) for p in (parsing._surrogate(), *_line_patterns())}
    lazy |= {repr(getattr(text, "pattern", text)) for text in (
        gitrepo._URL, gitrepo._DUBIOUS, values._EGRESS_HOST, gitdir._URL_KEY,
        parsing._JSON_STRING, channel.AGENT_NAME,
    )}  # fmt: skip
    assert not lazy & set(found["patterns"]), sorted(lazy & set(found["patterns"]))


@pytest.mark.bwrap
@pytest.mark.tmux
def test_an_in_process_run_in_a_tmux_pane_compiles_no_dataclass_beyond_the_contract(
    hal_env: dict[str, str], demo_repo: Path, reaped: None
) -> None:
    # The benchmark's row (`hal run` in-process, tmux its default manager): the pane's
    # modules (tmux, tmuxearly, tmuxwarm, tmuxowned) define records that are not the plugin
    # contract's as named tuples or plain classes (tmuxwarm.WarmPane was a frozen dataclass).
    modules, models = _run_and_list(hal_env, demo_repo, "tmux")
    assert "hal9999.process.tmuxwarm" in modules  # the run did go through tmux's manager
    found = json.loads(models)
    assert set(found["dataclasses"]) <= DATACLASSES, sorted(set(found["dataclasses"]) - DATACLASSES)
    assert not modules & set(NOT_FOR_A_TEMPLATE_AGENT), sorted(
        modules & set(NOT_FOR_A_TEMPLATE_AGENT)
    )


@pytest.mark.bwrap
def test_an_in_process_run_checks_for_uncommitted_changes_while_it_imports(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The host `git status` runs while the config and the task service load (less wall
    # time); its line is still printed where it was.
    (demo_repo / "calc.py").write_text("changed\n")
    env = {**hal_env, "HAL_NO_DAEMON": "1"}
    argv = ["run", "--agent", "true {{prompt_file}}", "--process-manager", "direct", "x"]
    done = subprocess.run(
        [sys.executable, "-c", STATUS_ORDER, *argv],
        cwd=demo_repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "1 uncommitted change(s)" in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == "status started with the config loaded: [False]"


@pytest.mark.bwrap
def test_a_run_does_not_import_the_providers_whose_tables_it_does_not_use(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # `hal doctor` and `hal serve` check every [providers.*] table (tasks.plugins.
    # check_sections); a run checks only its own: importing qemu's or kubernetes's module to
    # check their tables is dear in CPU (docs/benchmarks.md).
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[providers.qemu]\nboot = "cold"\n[providers.kubernetes]\n')
    modules, _ = _run_and_list(hal_env, demo_repo)
    assert "hal9999.providers.bwrap.provider" in modules  # the run did load its own provider
    unused = {"hal9999.providers.qemu.provider", "hal9999.providers.k8s.provider"}
    assert not modules & unused, sorted(modules & unused)
