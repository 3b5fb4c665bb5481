"""The handle on a ``qemu`` sandbox (:class:`QemuSandbox`), and :func:`run_root` for hal's
own root steps in its guest.

Commands reach the guest over virtio-serial ports: ``exec`` and ``exec_stream`` over hal's
exec agent (:mod:`.agent`) when the image has one and a port is free, else over ssh
(:mod:`.ssh`), which also carries ``launch``, ``attach`` and port forwards. With the
agent, ssh connects only when one of those first needs it. The lifecycle is the provider's
(:mod:`hal9999.providers.qemu.provider`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999.envvars import env_argv
from hal9999.providers.base import Command, ExecResult, Launch, StreamEvent
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host.sandbox import HostSandbox, SandboxRecord
from hal9999.providers.qemu import agent as qemuagent
from hal9999.providers.qemu import ssh as qemussh
from hal9999.providers.qemu.vm import RunDir
from hal9999.spec import ArgvCommand, display, to_argv

if TYPE_CHECKING:
    from hal9999.providers.qemu.provider import QemuProvider

WORKDIR = "/workspace"
HOME = "/home/hal"


async def run_root(
    run: RunDir,
    ports: int,
    argv: list[str],
    *,
    pings: bool,
    stdin: bytes = b"",
    time_limit: float,
    restored: bool = False,
) -> str:
    """One of hal's own root steps in the guest, over the exec agent when it has one
    (``pings``: it answers pings, see :func:`.agent.claim`; ``restored``: the first
    since a restore, see :func:`.agent._hello`)."""
    if ports:
        return await qemuagent.run_root(
            run, ports, argv, pings=pings, stdin=stdin, time_limit=time_limit,
            restored=restored,
        )  # fmt: skip
    return await qemussh.run_root(run, argv, stdin=stdin, time_limit=time_limit)


class QemuSandbox(HostSandbox):
    """A microVM; shared directories are read and written on the host, the rest inside."""

    home = HOME

    def __init__(self, owner: QemuProvider, record: SandboxRecord) -> None:
        workspace = record.spec.workspace
        mounts = [hostfs.Mount(WORKDIR, workspace, True)] if workspace else []
        mounts += [
            hostfs.Mount(hostfs.normalize(b.target, "/"), b.source, not b.read_only)
            for b in record.spec.binds
        ]
        super().__init__(owner, record, hostfs.PathMap(mounts, cwd=WORKDIR))
        self._run = RunDir(record.id)
        self._provider = owner
        self._ports: int | None = None
        self._pings = False

    def _ids(self) -> tuple[int, int]:
        """The uid and gid commands run as inside: the sandbox's own under a root hal (see
        :meth:`QemuProvider._claim_ids`), else the host user's, so shared files keep it."""
        uid = self._record.uid
        return qemussh.uid_gid() if uid is None else (uid, uid)

    def guest_env(self, command: Command, env: Mapping[str, str] | None) -> dict[str, str]:
        """The command's environment inside, with the sandbox marker."""
        return self.command_env(command, env) | {"HAL_SANDBOX": self.id}

    @property
    def agent_ports(self) -> int:
        """Ports of the VM's exec agent (0: an image without one, every command over ssh)."""
        if self._ports is None:
            vm = self._provider.vm_record(self.id)
            if vm is None:
                return 0
            self._ports, self._pings = vm.exec_ports, vm.agent_pings
        return self._ports

    def _claim(self) -> qemuagent.Claim | None:
        """A free port of the VM's exec agent, or None (none free, or no agent)."""
        ports = self.agent_ports  # reads the VM record, and with it whether it answers pings
        return qemuagent.claim(self._run, ports, pings=self._pings)

    def _ssh_launch(self, command: Command, env: Mapping[str, str] | None) -> Launch:
        guest = self.guest_env(command, env)
        uid, gid = self._ids()
        aliased = self.agent_ports > 0  # its hal-exec takes sshd's own variables by -A
        argv = qemussh.command_argv(
            self._run, to_argv(command), env=guest,
            cwd=self._paths.normalize(command.cwd or WORKDIR), uid=uid, gid=gid, aliased=aliased,
        )  # fmt: skip
        return Launch(argv=argv, env=qemussh.ssh_env(guest, aliased=aliased), cwd=self.dir)

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """An ssh command line over the VM's channel; variable values ride in its env. With
        the exec agent, ssh may not be connected yet: the line connects it first if so."""
        launch = self._ssh_launch(command, env)
        if self.agent_ports:
            argv = qemussh.ensured(self._run, launch.argv, log=self.dir / "qemu.log")
            return Launch(argv=argv, env=launch.env, cwd=launch.cwd)
        return launch

    async def _ssh_ready(self) -> None:
        """Connect ssh if it is not (images with the exec agent connect it on first need)."""
        if self.agent_ports:
            await qemussh.ensure_master(self._run, log=self.dir / "qemu.log", time_limit=60)

    def _agent_request(
        self, command: Command, env: Mapping[str, str] | None
    ) -> tuple[list[str], dict[str, str]]:
        """hal-exec's arguments and environment: what the ssh channel would run."""
        guest = self.guest_env(command, env)
        uid, gid = self._ids()
        cwd = self._paths.normalize(command.cwd or WORKDIR)
        args = qemussh.hal_exec_args(to_argv(command), sorted(guest), cwd=cwd, uid=uid, gid=gid)
        return args, guest

    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a command to completion over the exec agent (ssh when it has no free port);
        past ``timeout``, or ``stdout_limit`` bytes of stdout, it is killed and ExecError
        raised."""
        self._require(running=True)
        port = self._claim()
        if port is None:
            await self._ssh_ready()
            launch = self._ssh_launch(command, env)
            return await hostexec.run(launch, stdin=stdin, time_limit=timeout,
                                      what=display(command),
                                      stdout_limit=stdout_limit)  # fmt: skip
        try:
            args, guest = self._agent_request(command, env)
            code, out, err = await qemuagent.run(
                port, args, guest, stdin=stdin, time_limit=timeout, what=display(command),
                stdout_limit=stdout_limit,
            )  # fmt: skip
        finally:
            port.release()
        return ExecResult(code, out, err)

    async def exec_stream(
        self, command: Command, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run a command, yielding output as it comes and the exit status last."""
        self._require(running=True)
        port = self._claim()
        if port is None:
            await self._ssh_ready()
            events = hostexec.stream(self._ssh_launch(command, env))
        else:
            try:
                args, guest = self._agent_request(command, env)
            except BaseException:
                port.release()
                raise
            events = qemuagent.stream(port, args, guest)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        finally:
            if port is not None:
                port.release()

    async def forward_socket(self, port: int, socket: Path) -> None:
        """``127.0.0.1:port`` in the guest reaches the host unix ``socket`` over the exec
        channel (how the LLM gateway and the egress proxy reach a VM with no network)."""
        await self._ssh_ready()
        await qemussh.forward_socket(self._run, port, socket)

    def attach_command(self) -> list[str]:
        """An interactive bash inside (a terminal when the caller has one)."""
        shell = ArgvCommand(argv=("bash", "-i"))
        guest = self.guest_env(shell, None)
        uid, gid = self._ids()
        aliased = self.agent_ports > 0
        argv = qemussh.command_argv(
            self._run, to_argv(shell), env=guest, cwd=WORKDIR, uid=uid, gid=gid, tty=True,
            aliased=aliased,
        )  # fmt: skip
        if aliased:
            argv = qemussh.ensured(self._run, argv, log=self.dir / "qemu.log")
        values = qemussh.ssh_env(guest, aliased=aliased)
        return env_argv(values, argv)
