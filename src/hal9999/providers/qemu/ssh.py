"""The exec channel into a QEMU sandbox: ssh over a virtio-serial port, no network at all.

The guest's init serves ``sshd -i`` on the virtio-serial port ``hal.ssh``; QEMU exposes
that port as a unix socket in the VM's run directory. One ssh ControlMaster per VM holds
the connection (``ProxyUseFdpass``: a tiny proxy connects the socket, hands ssh the file
descriptor and exits), and every command is a multiplexed session over it. Remote
commands run under ``hal-exec`` (in the guest), which gives each its own cgroup, working
directory, uid and exactly its environment. Values of variables travel by ssh's
``SendEnv`` (the ssh protocol's environment requests), never in an argv; only their names
appear on command lines.

Keepalives: under TCG, about one VM start in 25-50 left a session whose command had
finished but whose exit status never came: the guest's sshd sat in ``poll`` with nothing
queued in QEMU's virtio-serial rings, and any later traffic on the connection woke it at
once (a lost wakeup in the guest, not data lost on the host). So the master sends an ssh
keepalive whenever the connection has been quiet for 2 s (``ServerAliveInterval``); a
stuck session costs at most that instead of the setup deadline, and a VM that still does
not answer is started again by the provider.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shlex
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hal9999 import unixsock
from hal9999.errors import ExecError, ProviderError
from hal9999.providers.base import Launch
from hal9999.providers.host import exec as hostexec
from hal9999.providers.qemu.vm import RunDir, tail
from hal9999.providers.ssh.options import config_value, literal

SSH = "/usr/bin/ssh"
HAL_EXEC = "/usr/local/bin/hal-exec"
CGROUP = "/sys/fs/cgroup/hal"
FDPASS = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.connect(sys.argv[1])\n"
    "socket.send_fds(socket.socket(fileno=1), [b'\\0'], [s.fileno()])\n"
)
"""The ProxyCommand: connect the VM's channel socket and pass the descriptor to ssh."""
ENSURE = (
    "import fcntl, os, socket, subprocess, sys\n"
    "ctl, lock, log, *rest = sys.argv[1:]\n"
    "split = rest.index('--')\n"
    "master, command = rest[:split], rest[split + 1:]\n"
    "def up():\n"
    "    s = socket.socket(socket.AF_UNIX)\n"
    "    try:\n"
    "        s.connect(ctl)\n"
    "        return True\n"
    "    except OSError:\n"
    "        return False\n"
    "    finally:\n"
    "        s.close()\n"
    "if not up():\n"
    "    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)\n"
    "    fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "    if not up():\n"
    "        env = {'PATH': '/usr/bin:/bin', 'HOME': os.path.dirname(ctl)}\n"
    "        with open(log, 'ab') as errors:\n"
    "            done = subprocess.run(master, stdin=subprocess.DEVNULL, stdout=errors,\n"
    "                                  stderr=errors, env=env, start_new_session=True)\n"
    "        if done.returncode != 0:\n"
    "            sys.exit('hal: cannot connect ssh to the VM, see ' + log)\n"
    "    os.close(fd)\n"
    "os.execv(command[0], command)\n"
)
"""Runs a host command line over ssh once the VM's ControlMaster is up, starting it first
when no one has (images with the exec agent connect ssh only when something needs it)."""
SSHD_SETS = frozenset({"HOME", "LOGNAME", "MAIL", "PATH", "SHELL", "USER"})
"""Variables sshd sets for every session after the client's own: images with the exec
agent (whose hal-exec knows ``-A``) get them as ``HAL_ENV_<NAME>`` instead, so a command
over ssh sees the same environment as over the agent. Older images' commands see sshd's."""
_VAR = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def config_path(run: RunDir) -> Path:
    """The VM's ssh client configuration."""
    return run.path / "ssh_config"


def write_config(run: RunDir, *, key: Path, known_hosts: Path) -> Path:
    """Write the ssh configuration (and the fd-passing proxy) into the run directory."""
    proxy = run.path / "fdpass.py"
    proxy.write_text(FDPASS)
    (run.path / "ensure.py").write_text(ENSURE)
    lines = {
        "HostName": "hal",
        "User": "root",
        "HostKeyAlias": "hal",
        "UserKnownHostsFile": config_value(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "UpdateHostKeys": "no",
        "IdentityFile": config_value(key),
        "IdentitiesOnly": "yes",
        "BatchMode": "yes",
        "PasswordAuthentication": "no",
        "ControlPath": config_value(run.control),
        # A shell line, in which ssh first expands its own % tokens.
        "ProxyCommand": literal(shlex.join([sys.executable, "-I", str(proxy), str(run.channel)])),
        "ProxyUseFdpass": "yes",
        "LogLevel": "ERROR",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "EscapeChar": "none",
        "ConnectTimeout": "60",
        # See "Keepalives" in the module docstring: a quiet channel is nudged every 2 s.
        "ServerAliveInterval": "2",
        "ServerAliveCountMax": "60",
    }
    text = "Host hal\n" + "".join(f"  {k} {v}\n" for k, v in lines.items())
    path = config_path(run)
    path.write_text(text)
    return path


def master_argv(run: RunDir) -> list[str]:
    """The ssh command line that connects the VM's ControlMaster and backgrounds it."""
    return [SSH, "-F", str(config_path(run)), "-f", "-N", "-o", "ControlMaster=yes",
            "-o", "ControlPersist=yes", "-o", "SendEnv=*", "hal"]  # fmt: skip


def master_up(run: RunDir) -> bool:
    """Whether the VM's ControlMaster answers on its control socket."""
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(run.control))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def ensure_master(run: RunDir, *, log: Path, time_limit: float) -> None:
    """Connect the ControlMaster unless it is up (one at a time per VM, across processes:
    a second master would queue behind the first on the single ssh port)."""
    if master_up(run):
        return
    lock = os.open(run.path / "master.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + time_limit
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ProviderError("ssh to the VM: another connect did not finish") from None
                await asyncio.sleep(0.02)
        if not master_up(run):
            await start_master(run, log=log, time_limit=time_limit)
    finally:
        os.close(lock)


def ensured(run: RunDir, argv: Sequence[str], *, log: Path) -> list[str]:
    """``argv`` (an ssh session over the master) preceded by :data:`ENSURE`, which starts
    the master first when it is not up."""
    return [sys.executable, "-I", str(run.path / "ensure.py"), str(run.control),
            str(run.path / "master.lock"), str(log), *master_argv(run), "--", *argv]  # fmt: skip


async def start_master(run: RunDir, *, log: Path, time_limit: float) -> None:
    """Connect the ControlMaster; it backgrounds itself once logged in, and lives as long
    as the VM does (it exits when QEMU closes the channel). The channel's socket may be
    connected while QEMU still loads a saved VM state: what ssh sends waits in the socket,
    and once the state is loaded QEMU tells the guest's port that the host is there. The
    master forwards only the variables its own SendEnv allows, so it allows all; each
    session's ssh client decides which of its variables to send (the master itself runs no
    session, sends nothing)."""
    argv = master_argv(run)
    with log.open("ab") as errors:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=errors,
            env={"PATH": "/usr/bin:/bin", "HOME": str(run.path)},
            start_new_session=True,
        )
    try:
        code = await asyncio.wait_for(proc.wait(), time_limit)
    except TimeoutError:
        await _end(proc)
        raise ProviderError(f"ssh to the VM timed out after {time_limit:g}s: {tail(log)}") from None
    except BaseException:  # cancelled: the VM it was connecting to failed to restore
        await _end(proc)
        raise
    if code != 0:
        raise ProviderError(f"ssh to the VM failed (exit {code}): {tail(log)}")


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` (unless it has exited) and reap it, even when cancelled meanwhile."""
    if proc.returncode is None:
        proc.kill()
    await asyncio.shield(proc.wait())


async def stop_master(run: RunDir) -> None:
    """End the ControlMaster (and so the guest's ``sshd -i``, which then reads EOF)."""
    proc = await asyncio.create_subprocess_exec(
        SSH, "-F", str(config_path(run)), "-O", "exit", "hal",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "HOME": str(run.path)},
    )  # fmt: skip
    await proc.wait()


async def forward_socket(run: RunDir, port: int, socket: Path) -> None:
    """Have the ControlMaster listen on ``127.0.0.1:port`` in the guest (sshd's remote
    forward; loopback only, ``GatewayPorts`` is off) and carry each connection to the host
    unix ``socket``. The forward lives as long as the master (the VM), not this process, so
    an agent still runs through it after the hal that started it is gone; the socket is
    connected afresh per connection, so a restarted listener on the same path is reached."""
    if not 0 < port < 65536 or ":" in str(socket) or not socket.is_absolute():
        raise ProviderError(f"cannot forward guest port {port} to {socket}")
    try:
        # The master connects the path; one past sun_path (a deep HAL_HOME) is given
        # through a link in the run directory (mode 700, a short path).
        where = unixsock.linked(socket, run.path)
    except OSError as exc:
        raise ProviderError(f"cannot forward guest port {port}: {exc}") from None
    spec = f"127.0.0.1:{port}:{where}"
    base = [SSH, "-F", str(config_path(run))]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(run.path)}
    null = asyncio.subprocess.DEVNULL
    # A forward left by an earlier launch in this VM would make the new one fail: drop it.
    cancel = await asyncio.create_subprocess_exec(
        *base, "-O", "cancel", "-R", spec, "hal", stdin=null, stdout=null, stderr=null, env=env
    )  # fmt: skip
    await cancel.wait()
    proc = await asyncio.create_subprocess_exec(
        *base, "-O", "forward", "-R", spec, "hal", stdin=null, stdout=null,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ProviderError(f"forwarding guest port {port} timed out") from None
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip()[-300:]
        raise ProviderError(f"cannot forward guest port {port} to {socket}: {text}")


def check_names(names: Sequence[str]) -> None:
    """Variable names travel as ssh options: refuse anything but [A-Za-z0-9_]."""
    for name in names:
        if not name or not set(name) <= _VAR or name[0].isdigit():
            raise ProviderError(f"invalid environment variable name {name!r}")


def command_argv(
    run: RunDir,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    uid: int,
    gid: int,
    tty: bool = False,
    aliased: bool = False,
) -> list[str]:
    """The host ssh command line that runs ``argv`` inside via hal-exec. The values of
    ``env`` must be in the ssh process's own environment (see :func:`ssh_env`, with the
    same ``aliased``: whether the guest's hal-exec takes :data:`SSHD_SETS` by ``-A``)."""
    names = sorted(env)
    remote = [HAL_EXEC, *hal_exec_args(argv, names, cwd=cwd, uid=uid, gid=gid, tty=tty,
                                       aliased=aliased)]  # fmt: skip
    sent = [_alias(name) if aliased and name in SSHD_SETS else name for name in names]
    send = [arg for name in sent for arg in ("-o", f"SendEnv={name}")]
    return [SSH, "-F", str(config_path(run)), "-t" if tty else "-T", *send, "hal",
            shlex.join(remote)]  # fmt: skip


def hal_exec_args(
    argv: Sequence[str],
    names: Sequence[str],
    *,
    cwd: str,
    uid: int,
    gid: int,
    tty: bool = False,
    aliased: bool = False,
) -> list[str]:
    """hal-exec's arguments (after its own name) for ``argv`` with the variables ``names``
    taken from hal-exec's environment (``aliased``: :data:`SSHD_SETS` from their
    ``HAL_ENV_`` names): the same over ssh and over the exec agent."""
    check_names(names)
    args = [*(["-t"] if tty else []), "-u", str(uid), "-g", str(gid), "-d", cwd, "-C", CGROUP]
    for name in names:
        args += ["-A" if aliased and name in SSHD_SETS else "-E", name]
    return [*args, "--", *argv]


def _alias(name: str) -> str:
    return f"HAL_ENV_{name}"


def root_argv(run: RunDir, argv: Sequence[str]) -> list[str]:
    """An ssh command line that runs ``argv`` as root in the guest (hal's own setup steps)."""
    return [SSH, "-F", str(config_path(run)), "-T", "hal", shlex.join(argv)]


def ssh_env(env: Mapping[str, str], *, aliased: bool = False) -> dict[str, str]:
    """The ssh process's environment: what it sends, plus nothing of ``hal``'s (with
    ``aliased``, :data:`SSHD_SETS` also under their ``HAL_ENV_`` names)."""
    extra = {_alias(k): v for k, v in env.items() if aliased and k in SSHD_SETS}
    return dict(env) | extra


async def run_root(
    run: RunDir, argv: Sequence[str], *, stdin: bytes = b"", time_limit: float
) -> str:
    """Run a setup command as root in the guest; its output (stdout, then stderr), or
    ProviderError. The output is bounded as a sandbox command's (see
    :func:`~hal9999.providers.handle.collect`): the command is hal's, what the guest prints
    is not."""
    launch = Launch(argv=root_argv(run, argv), env={"PATH": "/usr/bin:/bin", "HOME": str(run.path)})
    try:
        result = await hostexec.run(launch, stdin=stdin, time_limit=time_limit, what=argv[0])
    except ExecError as exc:
        if "timeout" in exc.details:
            raise ProviderError(f"{argv[0]} in the VM timed out") from None
        raise ProviderError(f"{argv[0]} in the VM failed: {exc.message}") from exc
    text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
    if result.exit_code != 0:
        raise ProviderError(f"{argv[0]} in the VM failed: {text[-500:]}")
    return text


def uid_gid() -> tuple[int, int]:
    """Commands inside run as the host user, so files on the shares keep their owner."""
    return os.getuid(), os.getgid()
