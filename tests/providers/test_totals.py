"""The defaults bound the total: the cgroup holding every sandbox has memory and pids limits
within the host, and as many default sandboxes as may run at once fit within them. Read from
the cgroup files of a real sandbox, never by filling the host."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hal9999 import hostlimits
from hal9999.config import HalConfig
from hal9999.providers import limits
from hal9999.providers.bwrap.provider import BwrapSandbox
from hal9999.providers.host import cgroups
from hal9999.spec import SandboxSpec
from hal9999.tasks.plugins import load_provider_for

pytestmark = [pytest.mark.bwrap, pytest.mark.cgroup]
UNLIMITED = 1 << 62
"""At least this, in a memory limit file, is no limit (v1 writes a page-rounded maximum)."""


def number(path: Path) -> int:
    """A limit file's value (``max``: unlimited)."""
    text = path.read_text().strip()
    return UNLIMITED if text in ("max", "-1") else int(text)


def host() -> tuple[int, int]:
    """The host's RAM in bytes and its pids (``pid_max``, ``threads-max``: the lower)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            ram = int(line.split()[1]) << 10
    pids = min(int(Path(f"/proc/sys/kernel/{n}").read_text()) for n in ("pid_max", "threads-max"))
    return ram, pids


def sandbox_limits(sandbox: BwrapSandbox) -> tuple[int, int]:
    """The sandbox's own memory (bytes) and pids limits, read from its cgroup."""
    assert sandbox.cgroup is not None
    found = {p.name: p for d in sandbox.cgroup.dirs for p in d.iterdir()}
    memory = found.get("memory.max") or found["memory.limit_in_bytes"]
    return number(memory), number(found["pids.max"])


def parent_files() -> dict[str, Path]:
    """The memory and pids limit files of the cgroup holding every sandbox."""
    found = cgroups.detect()
    assert found is not None
    if found.version == 1:
        return {"memory": found.roots["memory"] / cgroups.PARENT / "memory.limit_in_bytes",
                "pids": found.roots["pids"] / cgroups.PARENT / "pids.max"}  # fmt: skip
    parent = found.roots["unified"] / cgroups.PARENT
    return {"memory": parent / "memory.max", "pids": parent / "pids.max"}


def parent_limits() -> tuple[int, int]:
    """The memory (bytes) and pids limits of the cgroup holding every sandbox."""
    files = parent_files()
    return number(files["memory"]), number(files["pids"])


@pytest.fixture
def parent_kept() -> Iterator[None]:
    """The parent's limits as they were before the test, written back after it (other
    runs of hal on this host share that cgroup)."""
    before = {path: path.read_text().strip() for path in parent_files().values()}
    yield
    for path, value in before.items():
        path.write_text(value + "\n")
    cgroups._parent_written.clear()


@pytest.fixture
async def make_sandbox(hal_home: Path, tmp_path: Path, parent_kept: None) -> AsyncIterator[object]:
    made = []

    async def make(config: HalConfig) -> BwrapSandbox:
        provider = load_provider_for(config, "bwrap")
        workspace = tmp_path / f"ws{len(made)}"
        workspace.mkdir()
        sandbox = await provider.create(SandboxSpec(workspace=workspace))
        assert isinstance(sandbox, BwrapSandbox)
        made.append((provider, sandbox.id))
        return sandbox

    yield make
    for provider, sandbox_id in made:
        await provider.destroy(sandbox_id)


async def test_default_sandboxes_at_max_concurrency_fit_the_parent_and_the_parent_the_host(
    hal_home: Path, make_sandbox: object
) -> None:
    config = HalConfig(home=hal_home)
    sandbox = await make_sandbox(config)  # type: ignore[operator]
    ram, pids = host()
    memory, processes = sandbox_limits(sandbox)
    parent_memory, parent_pids = parent_limits()
    concurrent = 8  # [scheduler] max_concurrent's default
    assert memory * concurrent <= parent_memory <= ram
    assert processes * concurrent <= parent_pids <= pids
    hierarchy = parent_files()["memory"].with_name("memory.use_hierarchy")
    if hierarchy.exists():  # v1: the parent's limit holds its children only hierarchically
        assert hierarchy.read_text().strip() == "1"


async def test_configured_totals_bound_the_parent_and_size_each_sandbox(
    hal_home: Path, make_sandbox: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Values under the host's defaults, so other runs sharing the parent lose nothing.
    default = hostlimits.default_totals()
    assert default.memory_mb is not None and default.pids is not None
    total_mb, total_pids = default.memory_mb - 64, default.pids - 64
    monkeypatch.setenv("HAL_MAX_CONCURRENT", "4")
    config = HalConfig(home=hal_home, totals={"memory_mb": total_mb, "pids": total_pids})
    sandbox = await make_sandbox(config)  # type: ignore[operator]
    memory, processes = sandbox_limits(sandbox)
    assert parent_limits() == (total_mb << 20, total_pids)
    assert memory == (total_mb // 4) << 20 or memory == (host()[0] >> 21) << 20
    assert processes == min(limits.DEFAULT_PIDS, total_pids // 4)
    assert memory * 4 <= total_mb << 20 and processes * 4 <= total_pids


@pytest.mark.parametrize(
    ("variable", "said"),
    [("HAL_TOTAL_MEMORY_MB", "more than this host's RAM"),
     ("HAL_TOTAL_PIDS", "more than this host allows")],
)  # fmt: skip
def test_a_total_over_the_host_is_refused_in_one_line(
    hal_home: Path, tmp_path: Path, variable: str, said: str
) -> None:
    ram, pids = host()
    over = str((ram >> 20) + 1 if variable == "HAL_TOTAL_MEMORY_MB" else pids + 1)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    env = {"HAL_HOME": str(hal_home), "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
           "HAL_NO_DAEMON": "1", "PATH": "/usr/local/bin:/usr/bin:/bin",
           variable: over}  # fmt: skip
    argv = [sys.executable, "-m", "hal9999", "run", "--agent", "true {{prompt_file}}", "x"]
    out = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.count("hal: error:") == 1 and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    doctor = subprocess.run([sys.executable, "-m", "hal9999", "doctor"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert said in doctor.stdout + doctor.stderr
