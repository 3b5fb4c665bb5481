"""The both-paths contract suite: each test body is written once against
:class:`hal9999.tasks.api.TaskAPI` and runs on every path a task can take.

Fixture ``task_path`` (parametrised ``local`` and ``served``) gives a :class:`TaskPath`:

- ``path.name``: ``"local"`` (:class:`LocalTaskAPI`, tasks run in this test process) or
  ``"served"`` (:class:`DaemonTaskAPI` to a real ``hal serve --detach`` on the same home).
- ``path.home``, ``path.repo``, ``path.config_file``: a private ``HAL_HOME``, a git repo
  with a planted bug (``calc.add`` subtracts) and the user config file (write it before the
  first ``path.api``: the daemon and the API read it then).
- ``path.api``: the task API, built on first use by the CLI's own code
  (:func:`hal9999.cli.app.app` and :func:`hal9999.cli.via_daemon.task_api`, exactly as
  ``hal run`` picks one); for ``served`` the daemon is started then.
- ``path.request(prompt, agent=..., provider=..., **fields)``: a wire request on
  ``path.repo`` with this home's config, as ``hal run`` would build it.
- ``path.hal(*args)``: the ``hal`` CLI on this home (``task stop``, ``logs``...).
- ``path.restart_daemon()``: ``served`` only, stop and start ``hal serve`` again.

The test process's environment is the caller's shell (it is patched for the test: the
private home and config, ``HAL_PROVIDER=bwrap``, ``HAL_NETWORK=none``, and the ``local``
provider, which cannot cut the network off, on the host's). A variable a test
sets with ``monkeypatch.setenv`` after the fixture is set up is in the caller's shell only:
the daemon was started with the environment the fixture saw, so a value it gets from the
caller has to cross the socket as the client sends it.

A test picks its provider in ``path.request(provider=...)``: parametrise it with
:data:`PROVIDERS` (``@pytest.mark.parametrize("provider", PROVIDERS)``), which carries the
markers each needs (a missing component skips locally and fails under ``CI=true``). Those
that need a config table of their own (``ssh`` with ``tests/sshd.py``, ``ray`` with
``tests/ray_cluster.py``, ``qemu`` with ``tests/qemu_image.py``) are added there with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.llm_server.scripts import CALC_BUG
from tests.processes import pointing_into
from tests.support.hal import git

if TYPE_CHECKING:
    from hal9999.cli.app import App
    from hal9999.tasks.api import TaskAPI

PROVIDERS = [
    pytest.param("bwrap", marks=[pytest.mark.bwrap, pytest.mark.tmux]),
    pytest.param("local", marks=[pytest.mark.tmux]),
    # Podman's Docker API: tests/podman_env.py exports HAL_DOCKER_URL before the first test.
    pytest.param("docker", marks=[pytest.mark.podman, pytest.mark.tmux, pytest.mark.slow]),
]
"""The providers a body runs on (``provider`` ids), with the markers they need."""
PATHS = ("local", "served")
"""Every path a task takes from a caller's request (the hive's turn is the third)."""
SETTLE_S = 120.0
"""How long the served path's teardown waits for its tasks to end."""


class TaskPath:
    """One path to run tasks on, over a private home (see the module docstring)."""

    def __init__(self, name: str, home: Path, repo: Path, config_file: Path) -> None:
        self.name = name
        self.home = home
        self.repo = repo
        self.config_file = config_file
        self.daemon_env = dict(os.environ)
        """The environment ``hal serve`` is started with (the caller's at setup)."""
        self._app: App | None = None
        self._api: TaskAPI | None = None
        self._serving = False
        self._logging: tuple[list[logging.Handler], int] = ([], logging.WARNING)

    @property
    def api(self) -> TaskAPI:
        """The task API of this path (the daemon started on first use for ``served``)."""
        if self._api is None:
            if self.name == "served":
                self.start_daemon()
            from hal9999.cli.app import app
            from hal9999.cli.via_daemon import task_api

            root = logging.getLogger()
            self._logging = (list(root.handlers), root.level)  # app() installs hal's own
            self._app = app()
            self._api = task_api(self._app)
            assert self._app.via_daemon == (self.name == "served"), self.name
        return self._api

    def request(
        self, prompt: str, *, agent: str, provider: str = "bwrap", **fields: Any
    ) -> dict[str, Any]:
        """A wire request on :attr:`repo`, with this home's config, as ``hal run`` builds
        one (:func:`hal9999.runoptions.run_wire`)."""
        api = self.api  # the config is loaded with it
        assert self._app is not None
        config = self._app.config
        del api
        return {
            "prompt": prompt,
            "repo": str(self.repo),
            "agent": agent,
            "provider": provider,
            "process_manager": config.process_manager,
            "timeout_s": config.timeout_s,
            "cwd": str(self.repo),
            "config": config,
            **fields,
        }

    def hal(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``hal ARGS...`` on this home, from the caller's shell (never raises on failure)."""
        return subprocess.run(
            [sys.executable, "-m", "hal9999", *args],
            cwd=self.repo,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start_daemon(self) -> None:
        """``hal serve --detach`` for this home, with :attr:`daemon_env`."""
        env = {k: v for k, v in self.daemon_env.items() if k != "HAL_NO_DAEMON"}
        out = self.hal("serve", "--detach", env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        self._serving = True

    def stop_daemon(self) -> None:
        """``hal serve --stop``."""
        out = self.hal("serve", "--stop", env={"HAL_NO_DAEMON": ""})
        assert out.returncode == 0, out.stderr[-2000:]
        self._serving = False

    def restart_daemon(self) -> None:
        """Stop and start this path's ``hal serve`` (it adopts what runs)."""
        assert self.name == "served", "only the served path has a daemon"
        self.stop_daemon()
        self.start_daemon()

    def close(self) -> None:
        """Settle the served path's tasks and stop its daemon; close the store."""
        if self._serving:
            self._settle()
            self.stop_daemon()
        if self._app is not None:
            with contextlib.suppress(Exception):
                self._app.store.close()
            root = logging.getLogger()
            handlers, level = self._logging
            for handler in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)

    def _settle(self) -> None:
        import json

        deadline = time.monotonic() + SETTLE_S
        cancelled: set[str] = set()
        while True:
            listed = self.hal("task", "list", "--json")
            busy = [t for t in json.loads(listed.stdout or "[]") if t["status"] in _IN_FLIGHT]
            if not busy:
                return
            assert time.monotonic() < deadline, f"tasks never settled: {busy}"
            for task in busy:
                if task["status"] != "collecting" and task["id"] not in cancelled:
                    self.hal("task", "cancel", task["id"])
                    cancelled.add(task["id"])
            time.sleep(0.5)


_SUITE_VARS = frozenset({"HAL_DOCKER_URL", "HAL_QEMU_IMAGES"})
"""What the suite's own set-up exports for every test (tests/podman_env.py, qemu_image.py)."""
_IN_FLIGHT = frozenset({"queued", "provisioning", "preparing", "running", "collecting"})


@pytest.fixture
def contract_repo(tmp_path: Path) -> Path:
    """A git repo whose test fails: ``calc.add`` subtracts."""
    repo = tmp_path / "repo"
    repo.mkdir()
    CALC_BUG.write(repo)
    (repo / ".gitignore").write_text("__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "calc with a bug")
    return repo


@pytest.fixture(params=PATHS)
def task_path(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    contract_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[TaskPath]:
    """One :class:`TaskPath` per path (``local``, ``served``) over a private home."""
    name = str(request.param)
    home = tmp_path / "halhome"
    config_home = tmp_path / "xdg-config"
    for key in [k for k in os.environ if k.startswith("HAL_") and k not in _SUITE_VARS]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HAL_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("HAL_PROVIDER", "bwrap")
    monkeypatch.setenv("HAL_NETWORK", "none")
    monkeypatch.setenv("HAL_GATEWAY_IDLE_S", "2")
    monkeypatch.setenv("HAL_LOCAL_NETWORK", "host")  # `local` cannot cut the network off
    if name == "local":
        monkeypatch.setenv("HAL_NO_DAEMON", "1")
    config_file = config_home / "hal9999" / "config.toml"
    config_file.parent.mkdir(parents=True)
    path = TaskPath(name, home, contract_repo, config_file)
    try:
        yield path
    finally:
        path.close()
    # The gateway stays up for HAL_GATEWAY_IDLE_S after its last task, then ends itself.
    deadline = time.monotonic() + 60
    while (left := pointing_into(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == {}, f"the {name} path left processes running"
