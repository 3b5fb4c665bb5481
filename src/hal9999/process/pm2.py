"""The pm2 process manager: each process is an app of a PM2 daemon on the host.

Like tmux, PM2 runs the supervised host command (:func:`hal9999.process.launch.supervised`),
so it works with every provider that can launch from the host (``local``, ``bwrap`` -- where
every exec has a pid namespace of its own, so a daemon inside would not see its apps --
``qemu``, ``docker``) and a provider that cannot is refused with a clear error. The daemon
outlives ``hal``; PM2's restart policy comes from the :class:`ProcessSpec`.

The app is described by a JSON ecosystem file (name, program, args, cwd, env, restart
policy), never by inline flags: exec-time secrets travel in its ``env``, so they are in no
argv. The file is written mode 600 in a private directory and removed once PM2 has read it;
the values then live in the daemon's memory, as they live in a tmux server's environment,
until the run has ended: its app is deleted then (:meth:`Pm2ProcessManager.status`).
The daemon's state is under ``HAL_PM2_HOME`` (default a short per-user directory in /tmp:
PM2's sockets live there and unix socket paths are short).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hal9999 import procs
from hal9999.envvars import absolute_dir, env_argv
from hal9999.errors import ProcessError
from hal9999.process import pm2inside
from hal9999.process.base import STOP_WAIT_S, ProcessStatus, read_exit_status
from hal9999.process.caplog import beside
from hal9999.process.launch import run_host, supervised
from hal9999.providers.base import Sandbox
from hal9999.spec import ProcessSpec
from hal9999.unixsock import own_dir

MIN_UPTIME_MS = 100 * 365 * 24 * 3600 * 1000
"""PM2's ``min_uptime`` for an ``on-failure`` app: a century, longer than any run. PM2 counts
an exit toward ``max_restarts`` only when its run lasted less than ``min_uptime`` and it came
within ``min_uptime x max_restarts`` of the first start: with the 5 s hal set before, a
service whose runs failed after more than 5 s was restarted for ever. Now every exit counts,
so ``max_restarts=n`` is n restarts (n + 1 runs) whatever the runs last, as
:class:`hal9999.spec.RestartPolicy` says."""
APP = '"$@"; exit $?'
"""The app's command: ``sh -c APP hal-pm2 SUPERVISOR...``. PM2 reports an app killed by a
signal as exit 0 (fork mode's ``code || 0``), so a supervisor the OOM killer (or a stray
``kill``) ended was a success to PM2: an ``on-failure`` app was not restarted, and hal,
finding no exit file, reported it vanished. ``sh`` stays its parent and exits with its status,
a death by signal as 128+n. It also runs a program whose path holds a space with its
arguments (PM2 runs such a ``script`` as ``bash -c SCRIPT`` and drops its args)."""
KILL_TIMEOUT_MS = 3000
"""Grace between PM2's SIGINT and its SIGKILL when stopping."""


def default_home() -> Path:
    """``HAL_PM2_HOME``, else ``/tmp/hal9999-pm2-<uid>``."""
    override = absolute_dir(os.environ, "HAL_PM2_HOME")
    if override:
        return Path(override)
    return shared_home()


def shared_home() -> Path:
    """The default PM2 home, in the shared temporary directory."""
    return Path(tempfile.gettempdir()) / f"hal9999-pm2-{os.getuid()}"


class Pm2ProcessManager:
    """Runs each process as an app of a PM2 daemon on the host."""

    name = "pm2"
    survives_caller = True

    def __init__(self, *, runtime_dir: Path | None = None, home: Path | None = None) -> None:
        self._pm2 = shutil.which("pm2")
        self.home = home or default_home()
        self._forgotten: set[str] = set()
        """Apps this manager deleted once their run had ended (:meth:`_forget_ended`)."""

    def app_name(self, spec: ProcessSpec) -> str:
        """PM2 names are global in a daemon: the spec's name plus a digest of its log path."""
        key = hashlib.sha256(f"{spec.log_path}\0{spec.name}".encode()).hexdigest()[:12]
        return f"{spec.name}-{key}"

    def _env(self) -> dict[str, str]:
        # The daemon starts from the first command's environment: nothing of hal's own.
        return {"PM2_HOME": str(self.home), "HOME": str(self.home), "PATH": os.environ["PATH"]}

    def _make_home(self) -> None:
        """The PM2 home, made (mode 700). The default is in ``/tmp``, where whoever made it
        first could replace PM2's sockets and run anything as this user, so there it must
        be this user's alone."""
        if self.home != shared_home():
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        own_dir(self.home, "PM2's sockets", "HAL_PM2_HOME")

    async def _run(self, *args: str, check: bool = True) -> tuple[int, str]:
        if self._pm2 is None:
            raise ProcessError("PM2 is not installed", hint="bash scripts/install-pm2.sh")
        self._make_home()
        status, out = await run_host([self._pm2, *args], env=self._env(), check=False)
        if check and status != 0:
            lines = [line for line in out.splitlines() if line.strip()]
            raise ProcessError(
                f"pm2 {args[0]} failed (exit {status}): {lines[-1] if lines else 'no output'}",
                hint=f"see the daemon's log in {self.home}/pm2.log",
            )
        return status, out

    def ecosystem(self, spec: ProcessSpec, argv: list[str], env: Mapping[str, str],
                  cwd: str) -> dict[str, Any]:  # fmt: skip
        """The app's ecosystem document (see the module docstring)."""
        restart = spec.restart.mode == "on-failure"
        name = self.app_name(spec)
        app: dict[str, Any] = {
            "name": name,
            "script": "/bin/sh",
            "args": ["-c", APP, "hal-pm2", *argv],
            "interpreter": "none",
            "cwd": cwd,
            "env": dict(env),
            "filter_env": True,
            "autorestart": restart,
            # No copy of PM2's own: it was the whole output, past the log cap, in one file per
            # task that nothing removed; hal's log is the one kept (see logs()).
            "out_file": "/dev/null",
            "error_file": "/dev/null",
            # The supervisor kills its command once the launch's grace is over (a relay's
            # is its last bring-back of the work): PM2's SIGKILL only past the longest.
            "kill_timeout": int(STOP_WAIT_S * 1000),
            "treekill": True,
        }
        if restart:
            app |= {
                # PM2 stops once its count of unstable runs reaches max_restarts, and the
                # first run counts: n restarts after the first run are n + 1 runs. Every run
                # is unstable to PM2 with this min_uptime (see MIN_UPTIME_MS).
                "max_restarts": spec.restart.max_restarts + 1,
                "min_uptime": MIN_UPTIME_MS,
                "stop_exit_codes": [0],
            }
        return {"apps": [app]}

    async def start(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start ``spec`` as a PM2 app running the supervised command; inside the sandbox
        when it hosts daemons and has node and pm2 (:mod:`.pm2inside`), else on the host."""
        await self.stop(spec)
        self._forgotten.discard(self.app_name(spec))  # this run's app goes when it ends too
        if pm2inside.hosts_daemons(sandbox) and await pm2inside.has_pm2(sandbox):
            name = self.app_name(spec)
            document = pm2inside.payload(spec, name, sandbox.workdir, MIN_UPTIME_MS,
                                         KILL_TIMEOUT_MS)  # fmt: skip
            names = sorted(set(env or {}) | set(spec.command.env))
            pm2inside.save_control(sandbox, spec, name)
            spec = pm2inside.follower_spec(spec, document, names)
        # A restarted app's next run finds the marker taken: claimed only by an app PM2
        # runs once.
        launch = supervised(sandbox, spec, env, claim=spec.restart.mode == "never")
        cwd = str(launch.cwd) if launch.cwd else str(spec.log_path.parent)
        document = self.ecosystem(spec, launch.argv, launch.env, cwd)
        private = self.home / "apps"
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = private / f"{self.app_name(spec)}.{secrets.token_hex(4)}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle)
            await self._run("start", str(path))
        finally:
            path.unlink(missing_ok=True)

    async def _app(self, spec: ProcessSpec) -> dict[str, Any] | None:
        """The app's entry in ``pm2 jlist`` (holds its env: never logged), or None."""
        _, out = await self._run("jlist")
        start = out.find("[")
        try:
            apps = json.loads(out[start:]) if start >= 0 else []
        except ValueError as exc:
            raise ProcessError("pm2 jlist printed no JSON list") from exc
        name = self.app_name(spec)
        for app in apps:
            if app.get("name") == name:
                return dict(app)
        return None

    async def status(self, spec: ProcessSpec) -> ProcessStatus:
        """Exited once the exit file exists; running while PM2 has the app online. Each run's
        supervisor writes the exit file, so for an ``on-failure`` app PM2 is asked first: a
        run that failed with a restart to come is still running, not exited."""
        restarts = spec.restart.mode == "on-failure"
        code = None if restarts else read_exit_status(spec.exit_path)
        if code is not None:
            await self._forget_ended(spec)
            return ProcessStatus("exited", code)
        if self._pm2 is None or not (self.home / "rpc.sock").exists():
            # No daemon: nothing to ask, none to start (and no restart to come).
            code = read_exit_status(spec.exit_path)
            return ProcessStatus("exited", code) if code is not None else ProcessStatus("missing")
        if _running(await self._app(spec)):
            return ProcessStatus("running")
        code = read_exit_status(spec.exit_path)
        if code is None:
            return ProcessStatus("missing")
        await self._forget_ended(spec)
        return ProcessStatus("exited", code)

    async def _forget_ended(self, spec: ProcessSpec) -> None:
        """Delete the app of a run that has ended for good (its exit file is written, no
        restart to come), once. A stopped app stays in PM2's daemon with its ``env``, the
        run's secrets among it, for as long as the daemon lives (``pm2 jlist`` shows it to
        any process of this user, ``pm2 save`` writes it to disk): the secret sweep checks it."""
        name = self.app_name(spec)
        if name in self._forgotten or self._pm2 is None:
            return
        self._forgotten.add(name)
        if (self.home / "rpc.sock").exists():
            await self._run("delete", name, check=False)

    async def logs(self, spec: ProcessSpec, lines: int = 100) -> str:
        """The run's last output lines as hal keeps them: its log (masked, capped), and while a
        capped run goes on, the tail segments beside it (:mod:`hal9999.process.caplog`). On
        the host and inside a sandbox alike: PM2's copy was the whole output past the cap,
        with its own header lines, and inside, unmasked."""
        return last_lines(spec.log_path, lines)

    async def stop(self, spec: ProcessSpec) -> None:
        """Stop and forget the app; PM2 kills its whole process tree. Idempotent."""
        await pm2inside.stop_inside(spec, self.app_name(spec))
        if self._pm2 is None or not (self.home / "rpc.sock").exists():
            return
        status, out = await self._run("delete", self.app_name(spec), check=False)
        if status != 0 and "not found" not in out:
            lines = [line for line in out.splitlines() if line.strip()]
            raise ProcessError(f"pm2 delete failed: {lines[-1] if lines else status}")

    def attach_command(self, spec: ProcessSpec) -> list[str] | None:
        """PM2 has no terminal to attach: this follows the app's output instead."""
        if self._pm2 is None:
            return None
        argv = [self._pm2, "logs", self.app_name(spec), "--raw"]
        return env_argv(self._env(), argv, clear=False)

    async def kill_daemon(self) -> None:
        """End the PM2 daemon and every app it runs (tests, and `hal` housekeeping)."""
        try:
            pid = int((self.home / "pm2.pid").read_text().strip())
        except (OSError, ValueError):
            pid = None
        if self._pm2 is not None and (self.home / "rpc.sock").exists():
            await self._run("kill", check=False)
        if pid is not None:
            # `pm2 kill` can return while the daemon still winds down (and rewrites its home).
            await _daemon_gone(pid)


def last_lines(log: Path, lines: int) -> str:
    """The last ``lines`` lines of ``log`` followed by its live tail segments, if any."""
    segments = [Path(beside(str(log), f".{log.name}.tail-{n}")) for n in (0, 1)]
    found = [(part.stat().st_mtime_ns, part) for part in segments if part.exists()]
    parts = [log, *(part for _, part in sorted(found))]
    kept = b""
    for part in reversed(parts):
        kept = _tail(part, lines + 1) + kept
        if kept.count(b"\n") > lines:
            break
    text = b"\n".join(kept.splitlines()[-lines:]) if lines > 0 else b""
    return text.decode("utf-8", "replace") + ("\n" if text else "")


def _tail(path: Path, lines: int, block: int = 65536) -> bytes:
    """The end of ``path`` holding at least ``lines`` line ends (all of it when shorter)."""
    try:
        with open(path, "rb") as file:
            end = file.seek(0, os.SEEK_END)
            start = end
            data = b""
            while start > 0 and data.count(b"\n") <= lines:
                start = max(0, start - block)
                file.seek(start)
                data = file.read(end - start)
            return data
    except FileNotFoundError:
        return b""


def _running(app: dict[str, Any] | None) -> bool:
    """Whether ``app`` (its ``pm2 jlist`` entry) runs or will run again: online or starting,
    or ``stopped`` with a restart to come (PM2 zeroes the pid of an app it will not restart:
    stopped on request, autorestart off, an exit code of ``stop_exit_codes``; too many
    unstable restarts is ``errored``), as :data:`pm2inside.STATE` reads it inside."""
    env = (app or {}).get("pm2_env", {})
    state = env.get("status")
    if state in ("online", "launching", "waiting restart", "one-launch-status", "stopping"):
        return True
    stops = env.get("stop_exit_codes") or []
    stops = [int(code) for code in (stops if isinstance(stops, list) else [stops])]
    return (
        state == "stopped" and int((app or {}).get("pid") or 0) > 0
        and env.get("autorestart") not in (False, "false") and env.get("exit_code") not in stops
    )  # fmt: skip


def _is_daemon(pid: int) -> bool:
    try:
        return b"PM2" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def _daemon_gone(pid: int, wait_s: float = 5.0) -> None:
    """Wait for the PM2 daemon ``pid`` to exit; SIGKILL it when it does not in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    # Polling: another process's exit cannot be awaited as an event here.
    while _is_daemon(pid) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(procs.POLL_S)
    await procs.kill_until_gone(pid, still=lambda: _is_daemon(pid))
