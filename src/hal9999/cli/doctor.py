"""``hal doctor``: what hal needs on this machine, what is missing, and how to fix it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import sys
from dataclasses import asdict
from pathlib import Path

import click

from hal9999.agents.registry import available_agents, resolve_agent
from hal9999.cli.main import cli, emit_json, run_async
from hal9999.cli.options import json_option
from hal9999.config import HalConfig, load_config
from hal9999.errors import ConfigError, HalError
from hal9999.home import HalPaths
from hal9999.providers.doctor import Check, DoctorScope
from hal9999.store.migrations import MIGRATIONS

VERSION_TIMEOUT_S = 60.0
"""How long a tool may take to print its version. The agents' CLIs (node, python) start in
1-2 s of CPU each, and the doctor asks them all at once: on a busy 2-core machine (load 24)
three of six took more than 20 s and were reported as not running."""


class _Slow:
    """``_version``'s answer for a tool that printed nothing in time."""


async def _version(argv: list[str]) -> str | _Slow | None:
    """The first line ``argv`` prints; None when it fails, ``_Slow`` when it is still
    running after :data:`VERSION_TIMEOUT_S` (it is killed)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), VERSION_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return _Slow()
    if proc.returncode != 0:
        return None
    lines = out.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else ""


async def _tool(name: str, argv: list[str], fix: str, required: bool = True) -> Check:
    path = shutil.which(argv[0])
    if path is None:
        return Check(name, False, "not installed", fix, required)
    version = await _version([path, *argv[1:]])
    if isinstance(version, _Slow):
        detail = f"{path} {' '.join(argv[1:])} printed nothing in {VERSION_TIMEOUT_S:g} s"
        return Check(name, False, detail, fix, required)
    return Check(name, version is not None, version or f"{path} does not run", fix, required)


def _load() -> HalConfig | HalError:
    """The user's config, or the error loading it raised (a broken config is a finding)."""
    try:
        return load_config()
    except HalError as exc:
        return exc


def _home(config: HalConfig | HalError) -> list[Check]:
    """The config, the data directory and the database: each a line, never a traceback.
    Every bad table and key of the config is a line of its own (a run stops at the first)."""
    from hal9999.tasks.plugins import section_problems

    if isinstance(config, HalError):  # a broken config is itself the finding
        problems = config.details.get("problems") or [config.message]
        fix = config.hint or "fix the file named above"
        return [Check("config", False, problem, fix) for problem in problems]
    found = section_problems(config, os.environ)
    if found:
        return [Check("config", False, exc.message, exc.hint or "fix the file named above")
                for exc in found]  # fmt: skip
    home = config.home
    try:
        paths = HalPaths(home).ensure()
    except HalError as exc:
        return [Check("HAL_HOME", False, exc.message, exc.hint)]
    return [Check("HAL_HOME", True, str(home)), _database(paths.db), _key_leaks(config)]


def _key_leaks(config: HalConfig) -> Check:
    """Whether a session holds an agent's API key as set in this shell (a hal from before
    the key path was closed gave it to agents run through ``hal serve``)."""
    from hal9999.tasks.keyleaks import configured_keys, files_holding

    keys = configured_keys(config, available_agents(), os.environ)
    found = files_holding(HalPaths(config.home).sessions, keys)
    if not found:
        return Check("session keys", True, f"no session file holds {', '.join(keys) or 'a key'}")
    names = sorted({name for held in found.values() for name in held})
    shown = ", ".join(str(path) for path in list(found)[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return Check(
        "session keys", False,
        f"{len(found)} session file(s) hold the key in {', '.join(names)}: {shown}{more}",
        f"rotate the key of {', '.join(names)} at its provider (an agent held it and may have "
        "sent it on), then remove those files or their tasks (`hal task rm ID`)",
    )  # fmt: skip


def _database(db: Path) -> Check:
    """Whether hal.db opens and passes SQLite's quick check (read-only: doctor changes nothing)."""
    if not db.exists():
        return Check("database", True, f"{db} (not created yet)")
    fix = f"move {db} aside (tasks are forgotten, sessions stay on disk) or restore a backup"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
            tracked = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'"
            ).fetchone()
            version = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations" if tracked else "SELECT 0"
            ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("database", False, f"{db}: {exc}", fix)
    if not result or result[0] != "ok":
        return Check("database", False, f"{db}: damaged ({result[0] if result else '?'})", fix)
    latest = MIGRATIONS[-1].version
    if version > latest:  # every other command refuses it: a newer hal wrote it
        return Check("database", False,
                     f"{db}: schema version {version}, newer than this hal knows ({latest})",
                     "upgrade hal9999 to the version that wrote it")  # fmt: skip
    return Check("database", True, f"{db}: ok")


async def gather() -> list[Check]:
    """Run every check: hal's own, each provider's (the default provider's first, as a run
    needs it), each agent CLI's and the process managers'."""
    from hal9999.providers.registry import provider_doctors

    config = _load()
    home = _home(config)
    # Provider state lives in HAL_HOME: one that is unusable (a symlink loop made the docker
    # provider's Path.resolve raise) is the finding already, said once with its fix.
    usable = isinstance(config, HalConfig) and not any(
        check.name == "HAL_HOME" and not check.ok for check in home
    )
    default = config.default_provider if isinstance(config, HalConfig) else DEFAULT_PROVIDER
    hooks = provider_doctors()
    checks = [
        Check("python", True, sys.version.split()[0]),
        *home,
        await _tool("git", ["git", "--version"], "apt-get install git"),
        await _tool("tmux", ["tmux", "-V"], "apt-get install tmux"),
        *_helpers(),
    ]
    for name, hook in hooks:
        if name == default:
            checks += await hook.doctor(_scope(name, config, usable))
    agents = await asyncio.gather(*(_agent(name, config) for name in available_agents()))
    checks += [check for found in agents for check in found]
    for name, hook in hooks:
        if name != default:
            checks += await hook.doctor(_scope(name, config, usable))
    if usable:
        checks.append(_pm2())
    return checks


HELPERS_FIX = (
    "from a hal source checkout: bash scripts/setup.sh (gcc) builds them into its build/, "
    "where a hal installed from that checkout (uv sync, pip install -e .) finds them; "
    "a wheel install has none and hal works without them"
)
"""How to get the C helpers: they are built from ``scripts/*.c`` beside ``src``, never
shipped in the pure-Python wheel."""


def _helpers() -> list[Check]:
    """The three C helpers ``scripts/setup.sh`` builds: found where hal looks for them, or
    what running without each costs (a warning: hal has a fallback for every one)."""
    from hal9999.process.tmux import NO_UTMP_BUILT
    from hal9999.providers.host.exec import LAUNCH_HELPER_BUILT, launch_helper
    from hal9999.providers.host.user import DROP_HELPER_BUILT, drop_helper, trusted_program

    found = {
        "hal-launch": (launch_helper(), LAUNCH_HELPER_BUILT,
                       "every sandbox command starts through sh instead, and idle bwrap "
                       "sandboxes keep no namespaces warm (a warm task's commands each start "
                       "bwrap)"),
        "hal-drop": (drop_helper(), DROP_HELPER_BUILT,
                     "as root, bwrap sandboxes switch to their uid with setpriv instead "
                     "(slower per command)"),
        "hal-noutmp": (trusted_program(NO_UTMP_BUILT), NO_UTMP_BUILT,
                       "tmux records each agent's pane as a login in utmp (who, last)"),
    }  # fmt: skip
    return [
        Check(f"helper {name}", True, path, required=False)
        if path is not None
        else Check(f"helper {name}", False, f"not built ({where}): {cost}", HELPERS_FIX, False)
        for name, (path, where, cost) in found.items()
    ]


DEFAULT_PROVIDER: str = HalConfig.model_fields["default_provider"].default
"""The provider a task gets when the config names none (or does not load)."""


def _scope(name: str, config: HalConfig | HalError, usable: bool) -> DoctorScope:
    """What provider ``name``'s doctor hook is given (its state dir where HAL_HOME is
    ``usable``)."""
    state_dir = None
    if usable and isinstance(config, HalConfig):
        state_dir = HalPaths(config.home).sandbox_state(name)
    return DoctorScope(name=name, config=config, state_dir=state_dir, tool=_tool)


def _pm2() -> Check:
    """Whether PM2 is on PATH (for ``--process-manager pm2``)."""
    from hal9999.envvars import absolute_dir

    found = shutil.which("pm2")
    if found is None:
        return Check("pm2", False, "not installed (only for --process-manager pm2)",
                     "bash scripts/install-pm2.sh (PM2 from npm, pinned)",
                     required=False)  # fmt: skip
    try:
        absolute_dir(os.environ, "HAL_PM2_HOME")
    except ConfigError as exc:
        return Check("pm2", False, exc.message, exc.hint, required=False)
    return Check("pm2", True, found, required=False)


async def _agent(name: str, config: HalConfig | HalError) -> list[Check]:
    """An agent CLI: installed?, its version, and the version hal is tested with; for an
    installed one, whether its API key is there. A preset that cannot be loaded is a
    warning of its own; the others are checked."""
    try:
        agent = resolve_agent(name)
    except HalError as exc:
        return [Check(f"agent {name}", False, exc.message, exc.hint, required=False)]
    tested: str | None = getattr(agent, "tested_version", None)
    fix = agent.install_hint
    if tested is not None:
        fix += f" (or, from a hal checkout, as root: scripts/install-agents.sh {name})"
    check = await _tool(f"agent {name}", [agent.program, "--version"], fix, required=False)
    if check.ok and tested is not None and tested not in check.detail:
        check.detail += f" (hal is tested with {tested})"
    if not check.ok or isinstance(config, HalError):
        return [check]
    key = _key(name, config)
    return [check] if key is None else [check, key]


def _key(name: str, config: HalConfig) -> Check | None:
    """Whether the API key of preset ``name`` is there for its LLM gateway (the variable's
    name only, never its value); None when the preset does not go through the gateway."""
    from hal9999.agents.base import needs_network
    from hal9999.gateway.tasks import missing_key, upstream_key_env
    from hal9999.tasks.context import missing_key_fix

    try:
        agent = resolve_agent(name, config.agent_settings(name))
    except HalError:
        return None  # its agent line says so
    key_env = upstream_key_env(config, name)
    if not needs_network(agent) or key_env is None or not config.gateway.enabled:
        return None
    if missing_key(config, agent, os.environ) is None:
        return Check(f"key {name}", True, f"{key_env} is set (hal's gateway adds it upstream)",
                     required=False)  # fmt: skip
    return Check(f"key {name}", False, f"{key_env} is not set",
                 missing_key_fix(name, key_env), required=False)  # fmt: skip


@cli.command()
@json_option("Print JSON.")
def doctor(as_json: bool) -> None:
    """Check what hal needs and say how to fix what is missing."""
    checks = run_async(gather())
    failed = [c for c in checks if c.required and not c.ok]
    if as_json:
        emit_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            line = f"{mark}  {c.name:<18} {c.detail}"
            if not c.ok and c.fix:
                line += f"\n      fix: {c.fix}"
            click.echo(line)
        click.echo(
            "all required checks passed"
            if not failed
            else f"{len(failed)} required check(s) failed"
        )
    sys.exit(1 if failed else 0)
