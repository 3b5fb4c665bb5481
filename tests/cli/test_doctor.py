"""``hal doctor`` on agent CLIs: installed or not, their versions, and how to install them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.cli.quick_agents import quick_agents_path
from tests.support.cli import fake_bin
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

PINNED = {
    "claude": "2.1.330",
    "codex": "0.169.0",
    "opencode": "1.18.33",
    "gemini": "0.61.0",
    "aider": "0.86.2",
}
"""What scripts/install-agents.sh installs (tests/agents/test_agent_versions.py keeps the
presets in step with it)."""


def agent_checks(out_json: str) -> dict[str, dict[str, Any]]:
    report = json.loads(out_json)
    return {c["name"].removeprefix("agent "): c for c in report["checks"]}


def test_doctor_reports_agent_versions_and_install_hints(hal: Hal, tmp_path: Path) -> None:
    out = hal("doctor", "--json", env={"PATH": fake_bin(tmp_path)}, timeout=60)
    assert out.returncode == 0, out.stdout  # agents are optional: the report still passes
    checks = agent_checks(out.stdout)

    claude = checks["claude"]
    assert claude["ok"] and not claude["required"]
    assert claude["detail"] == "9.9.9 (Claude Code) (hal is tested with 2.1.330)"

    codex = checks["codex"]
    assert not codex["ok"] and "does not run" in codex["detail"]

    aider = checks["aider"]
    assert not aider["ok"] and aider["detail"] == "not installed"
    assert "pip install aider-chat==0.86.2" in aider["fix"]
    assert "scripts/install-agents.sh aider" in aider["fix"]
    for name in ("opencode", "gemini"):
        assert f"scripts/install-agents.sh {name}" in checks[name]["fix"]
    assert "goose" in checks and checks["goose"]["fix"]

    text = hal("doctor", env={"PATH": fake_bin(tmp_path / "again")}, timeout=60).stdout
    assert "agent claude       9.9.9 (Claude Code)" in text
    assert "fix: pip install aider-chat==0.86.2" in text


def test_doctor_shows_installed_versions(hal: Hal) -> None:
    out = hal("doctor", "--json", timeout=120)
    checks = agent_checks(out.stdout)
    ci = os.environ.get("CI", "").lower() == "true"
    for name, version in PINNED.items():
        check = checks[name]
        if not check["ok"] and not ci:
            continue  # not installed here; CI installs every pinned CLI
        assert check["ok"] and check["detail"], check
        if ci:  # exactly the version hal is tested with, so no note
            assert version in check["detail"] and "tested with" not in check["detail"], check


def test_doctor_says_who_sandboxes_run_as_and_what_network_host_exposes(
    hal: Hal, tmp_path: Path
) -> None:
    # The agent CLIs answer at once (tests/cli/quick_agents.py): this is about sandboxes.
    quick = {"PATH": quick_agents_path(tmp_path / "quick-agents", os.environ["PATH"])}
    out = hal("doctor", "--json", env=quick, timeout=120)
    report = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    user = report["sandbox user"]["detail"]
    assert ("never root" in user) if os.geteuid() == 0 else (f"uid {os.getuid()}" in user)
    assert "loopback only" in report["network none"]["detail"]
    host = report["network host"]
    if host["ok"]:
        assert "not reachable" in host["detail"] and "slirp4netns" in host["detail"]
    else:  # says why, and that the way around it exposes the host's loopback
        assert "loopback" in (host["fix"] or "")


V1_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
"""


def test_doctor_names_the_slow_cgroup_move_and_its_fix_on_v2() -> None:
    from hal9999.providers.bwrap.doctor import FAVOR_V2, cgroup_moves

    # On v1 a launcher joins through tasks, which takes no global lock: nothing to fix.
    v1 = cgroup_moves(V1_MOUNTS, v2=False)
    assert v1.ok and "tasks" in v1.detail
    v2 = cgroup_moves("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate 0 0\n", v2=True)
    assert (v2.ok, v2.required) == (False, False)
    assert "8 ms" in v2.detail and v2.fix is not None and v2.fix.startswith(FAVOR_V2)
    # Any one hierarchy with the option sets it for the kernel's one lock.
    fast = V1_MOUNTS + "cgroup /run/hal-cgfav cgroup rw,relatime,favordynmods,name=halfav 0 0\n"
    assert cgroup_moves(fast, v2=True).ok
    v2_fast = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate,favordynmods 0 0\n"
    assert cgroup_moves(v2_fast, v2=True).ok
    # An option of another filesystem does not count.
    assert not cgroup_moves("tmpfs /x tmpfs rw,favordynmods 0 0\n", v2=True).ok


def test_doctor_names_each_qemu_image_built_before_pings_and_how_to_rebuild_it(
    tmp_path: Path,
) -> None:
    from hal9999.providers.qemu.doctor import outdated_images
    from hal9999.providers.qemu.image.store import Image, ImageMeta

    def image(name: str, **fields: Any) -> Image:
        meta = ImageMeta(name=name, kind="golden", created_at=1.0, setup_adopts=True, **fields)
        return Image(tmp_path / name, meta)

    found = outdated_images([
        image("old", exec_ports=4), image("new", exec_ports=4, agent_pings=True),
        image("ssh-only"),
    ], root=True)  # fmt: skip
    assert [(c.name, c.ok, c.required) for c in found] == [("qemu image old", False, False)]
    assert "a command whose VM hangs waits forever" in found[0].detail
    assert found[0].fix == "rebuild it (as root): hal image rm old && hal image build --name old"


def test_doctor_names_each_qemu_image_built_before_adopt_to_a_root_hal(tmp_path: Path) -> None:
    # Images built by an older hal have no setup_adopts: a root hal's start, restore or fork
    # of one ran a separate find/chown in the guest (costly in its CPU) without a word.
    from hal9999.providers.qemu.doctor import outdated_images
    from hal9999.providers.qemu.image.store import Image, ImageMeta

    def image(name: str, **fields: Any) -> Image:
        meta = ImageMeta(**{"name": name, "kind": "golden", "created_at": 1.0,
                            "exec_ports": 4, "agent_pings": True, **fields})  # fmt: skip
        return Image(tmp_path / name, meta)

    old, new = image("old", packages=["make"]), image("new", setup_adopts=True)
    snap = image("snap", kind="snapshot", parent="old")
    found = outdated_images([old, new, snap], root=True)
    assert [(c.name, c.ok, c.required) for c in found] == [
        ("qemu image old", False, False), ("qemu image snap", False, False)]  # fmt: skip
    assert found[0].detail.startswith("qemu image 'old' was built before its guest setup")
    assert "separate find/chown in the guest" in found[0].detail
    assert found[0].fix == (
        "rebuild it (as root): hal image rm old && hal image build --name old --packages make"
    )
    assert found[1].fix is not None and "snapshot (of 'old')" in found[1].fix
    # Not root: its sandboxes have no uid of their own, so there is nothing to hand over.
    assert outdated_images([old, new, snap], root=False) == []


async def test_a_tool_slow_to_print_its_version_is_said_to_be_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a loaded machine the agents' CLIs, asked all at once, took longer than the doctor
    # waited, and an installed agent was reported as one that "does not run" (CI).
    from hal9999.cli import doctor

    slow = tmp_path / "slow-cli"
    pid_file = tmp_path / "pid"
    slow.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    slow.chmod(0o755)
    monkeypatch.setattr(doctor, "VERSION_TIMEOUT_S", 0.5)
    check = await doctor._tool("agent slow", [str(slow), "--version"], "fix it")
    assert not check.ok
    assert check.detail == f"{slow} --version printed nothing in 0.5 s", check
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists(), "the slow tool was left running"


def test_doctor_names_session_files_holding_an_agents_key_and_says_to_rotate_it(
    hal: Hal, hal_env: dict[str, str], tmp_path: Path
) -> None:
    # What a hal before the key path was closed left: codex, run through `hal serve`, was
    # given the caller's real key and kept it in its transcript under the session's home.
    key = "sk-proj-" + "k" * 40
    sessions = Path(hal_env["HAL_HOME"], "sessions")
    transcript = sessions / "abcd1234" / "home" / ".codex" / "sessions" / "rollout.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text(json.dumps({"env": {"OPENAI_API_KEY": key}}) + "\n")
    (sessions / "abcd1234" / "home" / "link").symlink_to(transcript)  # never followed
    clean = sessions / "efgh5678" / "agent.log"
    clean.parent.mkdir(parents=True)
    clean.write_text("nothing here\n")
    path = quick_agents_path(tmp_path / "quick-agents", os.environ["PATH"])

    out = hal("doctor", "--json", env={"OPENAI_API_KEY": key, "PATH": path}, timeout=120)

    [check] = [c for c in json.loads(out.stdout)["checks"] if c["name"] == "session keys"]
    assert not check["ok"] and check["required"], check
    assert check["detail"] == f"1 session file(s) hold the key in OPENAI_API_KEY: {transcript}"
    assert check["fix"].startswith("rotate the key of OPENAI_API_KEY at its provider")
    assert key not in out.stdout + out.stderr
    assert out.returncode == 1

    transcript.unlink()
    out = hal("doctor", "--json", env={"OPENAI_API_KEY": key, "PATH": path}, timeout=120)
    [check] = [c for c in json.loads(out.stdout)["checks"] if c["name"] == "session keys"]
    assert check["ok"] and "OPENAI_API_KEY" in check["detail"], check
    assert check["detail"].startswith("no session file holds ")


def test_doctor_says_whether_each_installed_presets_key_is_there(hal: Hal, tmp_path: Path) -> None:
    # Named, never shown: the line says which variable, not its value.
    canary = "sk-ant-doctor-canary-0123456789"
    env = {"PATH": fake_bin(tmp_path), "ANTHROPIC_API_KEY": ""}
    keys = agent_checks(hal("doctor", "--json", env=env, timeout=60).stdout)
    assert keys["key claude"]["ok"] is False and not keys["key claude"]["required"]
    assert keys["key claude"]["detail"] == "ANTHROPIC_API_KEY is not set"
    assert keys["key claude"]["fix"] == "export ANTHROPIC_API_KEY=... or `hal auth claude login`"
    assert "key aider" not in keys, "an agent that is not installed has no key line"

    given = hal("doctor", "--json", env={**env, "ANTHROPIC_API_KEY": canary}, timeout=60)
    assert canary not in given.stdout + given.stderr
    claude = agent_checks(given.stdout)["key claude"]
    assert claude["ok"] and claude["detail"].startswith("ANTHROPIC_API_KEY is set")
