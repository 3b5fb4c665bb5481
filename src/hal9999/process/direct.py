"""The direct process manager: the supervised command is a plain child process.

One-shot and simple: nothing to attach to, and the run is tied to the life of its caller's
machine session (it is started in its own process group so it can be killed as a whole).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from hal9999.process.base import ProcessStatus, read_exit_status
from hal9999.process.launch import supervised
from hal9999.providers.base import Sandbox
from hal9999.spec import ProcessSpec


def _pid_file(spec: ProcessSpec) -> Path:
    return spec.exit_path.with_name(f".{spec.exit_path.name}.pid")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it has ended all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class DirectProcessManager:
    """Runs each process as a child of the calling ``hal`` process."""

    name = "direct"
    survives_caller = False

    def __init__(self, *, runtime_dir: Path | None = None) -> None:
        self._children: dict[str, asyncio.subprocess.Process] = {}

    async def start(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Spawn the supervised command in its own process group."""
        launch = supervised(sandbox, spec, env)
        proc = await asyncio.create_subprocess_exec(
            *launch.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=launch.env,
            cwd=launch.cwd,
            start_new_session=True,
        )
        self._children[spec.name] = proc
        _pid_file(spec).write_text(str(proc.pid))

    async def status(self, spec: ProcessSpec) -> ProcessStatus:
        """Exited once the exit file exists; running while the supervisor lives."""
        code = read_exit_status(spec.exit_path)
        if code is not None:
            await self._reap(spec)
            return ProcessStatus("exited", code)
        pid = self._pid(spec)
        if pid is not None and _alive(pid):
            return ProcessStatus("running")
        code = read_exit_status(spec.exit_path)
        return ProcessStatus("exited", code) if code is not None else ProcessStatus("missing")

    async def stop(self, spec: ProcessSpec) -> None:
        """Terminate the supervisor's process group, then kill what is left."""
        pid = self._pid(spec)
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = asyncio.get_running_loop().time() + wait
            # Polling: another process's exit cannot be awaited as an event here.
            while _alive(pid) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if not _alive(pid):
                break
        await self._reap(spec)
        _pid_file(spec).unlink(missing_ok=True)

    def attach_command(self, spec: ProcessSpec) -> list[str] | None:
        """Direct processes have no terminal to attach to."""
        return None

    def _pid(self, spec: ProcessSpec) -> int | None:
        try:
            return int(_pid_file(spec).read_text())
        except (FileNotFoundError, ValueError):
            return None

    async def _reap(self, spec: ProcessSpec) -> None:
        proc = self._children.pop(spec.name, None)
        if proc is not None:
            await proc.wait()
