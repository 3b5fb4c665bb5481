"""What the task tests share: git as a test user, a source repository of a few files, and
the world of the collection tests (test_collect*.py): a task session with its clone, in a
real local sandbox whose commands a leftover agent process may follow."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.second_filesystem import second_filesystem

from hal9999.providers.base import Sandbox
from hal9999.providers.registry import load_provider
from hal9999.spec import SandboxSpec
from hal9999.tasks import collect, gitrepo
from hal9999.tasks.session import Session

TASK = "abcdef012345"
BRANCH = f"hal/{TASK}"
Hook = Callable[[Path], None]


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as a test user and return its stdout."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A repository made at ``path`` with ``files`` in one commit on main; its HEAD."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "initial")
    return git(path, "rev-parse", "HEAD")


class HostileSandbox:
    """Delegates to a real sandbox; after each exec, ``hook`` gets the result dir (if any)."""

    def __init__(self, inner: Sandbox, home: Path) -> None:
        self._inner = inner
        self._home = home
        self.hook: Hook | None = None
        self.stdout_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def exec(self, *args: Any, **kw: Any) -> Any:
        result = await self._inner.exec(*args, **kw)
        self.stdout_sizes.append(len(result.stdout))
        outs = sorted(self._home.glob(".hal-result-*"))
        if self.hook is not None and outs:
            self.hook(outs[0])
        return result


@pytest.fixture(params=["same-fs", "other-fs"])
def base_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """Where the session lives: the test's tmp filesystem, or /dev/shm (a second one) with
    the host's files on tmp."""
    if request.param == "same-fs":
        yield tmp_path
        return
    with second_filesystem(tmp_path) as other:
        yield other


class World:
    """A source repository and the host's files (under ``host``), a task session (under
    ``base``) and the base commit of its clone."""

    def __init__(self, base: Path, host: Path) -> None:
        self.source = host / "source"
        self.host = host
        self.session = Session(base / "session")
        self.base = ""

    def host_secret(self) -> Path:
        """A host file only the host may read, for a hostile hook to aim at."""
        secret = self.host / "shadow"
        secret.write_text("host-only secret\n")
        return secret


@pytest.fixture
async def world(
    base_dir: Path, tmp_path: Path, hal_home: Path
) -> AsyncIterator[tuple[World, HostileSandbox]]:
    """A session with its clone of a one-commit source, and a local sandbox of it."""
    w = World(base_dir, tmp_path)
    make_repo(w.source, {"a.txt": "one\n"})
    w.session.create()
    src = gitrepo.RepoSource("local", str(w.source))
    w.base = await gitrepo.clone(src, None, w.session.workspace, BRANCH)
    provider = load_provider("local", state_dir=hal_home / "sandboxes")
    spec = SandboxSpec(
        provider="local", network="host", workspace=w.session.workspace, binds=w.session.binds()
    )
    async with await provider.create(spec) as sandbox:
        yield w, HostileSandbox(sandbox, w.session.home)


async def run_collect(w: World, sandbox: HostileSandbox, *, full: bool = False) -> Any:
    """Collect the task's work from ``sandbox`` (``full``: a whole bundle, as for a URL
    source)."""
    return await collect.collect(
        sandbox,  # type: ignore[arg-type]
        w.session,
        base=w.base,
        branch=BRANCH,
        task_id=TASK,
        full_bundle=full,
    )
