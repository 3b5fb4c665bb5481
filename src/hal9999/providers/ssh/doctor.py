"""What ``hal doctor`` says of the ``ssh`` and ``lima`` providers: configured, reachable,
isolated as configured (never as host root), how many sandboxes. Probes only look: a
connection, ``bwrap --version``, ``id`` and ``command -v`` on the host, ``limactl list``;
nothing is created or changed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hal9999.errors import HalError
from hal9999.providers.doctor import Check, DoctorScope
from hal9999.providers.ssh import channel, remote
from hal9999.providers.ssh.config import SshConfig, SshHost
from hal9999.providers.ssh.connections import INSTALL_HINT, ConnectionPool
from hal9999.providers.ssh.records import SshRecords
from hal9999.values import toml_checked


def _warning(name: str, ok: bool, detail: str, fix: str | None = None) -> Check:
    """A line of the report that does not fail it (ssh and lima are optional)."""
    return Check(name, ok, detail, fix, required=False)


async def checks(scope: DoctorScope) -> list[Check]:
    """The ``ssh`` lines of the report; none where the config or HAL_HOME is unusable (the
    provider's records live there)."""
    if scope.state_dir is None or isinstance(scope.config, HalError):
        return []
    return await ssh_findings(scope.settings, scope.state_dir)


async def lima_checks(scope: DoctorScope) -> list[Check]:
    """The ``lima`` lines of the report, on the same terms as :func:`checks`."""
    if scope.state_dir is None or isinstance(scope.config, HalError):
        return []
    return await lima_findings(scope.settings, scope.state_dir)


async def ssh_findings(settings: Mapping[str, Any] | None, state_dir: Path) -> list[Check]:
    """One line per configured host (nothing when none is configured)."""
    if not settings:
        return []
    try:
        config = toml_checked(SshConfig, settings)
    except ValidationError as exc:
        return [_warning("ssh", False, f"[providers.ssh] is invalid: {exc.errors()[0]['msg']}",
                        "fix [providers.ssh] in your hal config")]  # fmt: skip
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return [_warning("ssh", False, "asyncssh is not installed", INSTALL_HINT)]
    used: dict[str, int] = {}
    for record in SshRecords(state_dir).all():
        used[record.host.name] = used.get(record.host.name, 0) + 1
    pool = ConnectionPool(timeout=min(config.connect_timeout_s, 10), keepalive=5)
    try:
        return list(await asyncio.gather(*(
            _host(pool, config, host, used.get(host.name, 0)) for host in config.hosts
        )))  # fmt: skip
    finally:
        await pool.close()


async def _host(pool: ConnectionPool, config: SshConfig, host: SshHost, used: int) -> Check:
    name = f"ssh {host.name}"
    where = f"{host.user}@{host.address}:{host.port}"
    count = f"{used}/{host.capacity} sandboxes"
    try:
        conn = await pool.get(host)
    except HalError as exc:
        return _warning(name, False, f"{where}: {exc.message}", exc.hint)
    # The disk limit needs prlimit (util-linux) there; cgroup limits cannot be set over ssh.
    code, _, _ = await channel.run(conn, remote.plain(["sh", "-c", "command -v prlimit"]),
                                   what="prlimit")  # fmt: skip
    if code != 0:
        return _warning(name, False, f"{where} reachable but has no prlimit (disk limit)",
                       "apt-get install util-linux on that host")  # fmt: skip
    limits = "disk limit enforced; cpu, memory and pid limits are not (refused) over ssh"
    if config.isolation != "bwrap":
        return await _bare(conn, name, f"{where} reachable, isolation {config.isolation}",
                           f"{limits}; {count}")  # fmt: skip
    # What create refuses, said here too (a root login above all), and whether
    # network = "host" (a namespace of its own through slirp4netns) can be given there.
    probe = remote.plain(["sh", "-c", remote.HOST_FACTS, "hal-facts", config.bwrap])
    _, out, _ = await channel.run(conn, probe, what="host facts")
    facts = remote.host_facts(out)
    refused = facts.bwrap_refused(config.bwrap)
    if refused is not None:
        return _warning(name, False, f"{where} reachable but refused: it {refused[0]}", refused[1])
    missing = facts.network_host_missing()
    network = ('network "host" through slirp4netns' if missing is None
               else f'network "host" refused (no {missing} there)')  # fmt: skip
    return _warning(name, True, f"{where} reachable, {facts.bwrap} isolates agents; {network}; "
                   f"{limits}; {count}")  # fmt: skip


async def _bare(conn: Any, name: str, reached: str, rest: str) -> Check:
    # A bare host ends what a command leaves under a python3 reaper (see .reaper); without
    # python3 only the markers are left, which a process with a cleared environment escapes.
    code, _, _ = await channel.run(conn, remote.plain(["sh", "-c", "command -v python3"]),
                                   what="python3")  # fmt: skip
    if code != 0:
        return _warning(name, False, f"{reached} but has no python3: what a command leaves "
                       "running detached (env -i setsid) outlives it; " + rest,
                       "install python3 on that host (apt-get install python3)")  # fmt: skip
    return _warning(name, True, f"{reached}; {rest}")


async def lima_findings(settings: Mapping[str, Any] | None, state_dir: Path) -> list[Check]:
    """limactl installed?, and hal's VMs (nothing when limactl is absent and unconfigured)."""
    program = str((settings or {}).get("limactl", "limactl"))
    found = shutil.which(program)
    if found is None:
        if not settings:
            return []
        return [_warning("lima", False, f"{program} is not installed",
                        "install Lima: https://lima-vm.io/docs/installation/")]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        found, "list", "--json", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    ours = [line for line in out.decode().splitlines() if '"name": "hal-' in line
            or '"name":"hal-' in line]  # fmt: skip
    return [_warning("lima", proc.returncode == 0, f"{found}; {len(ours)} hal VM(s), "
                    f"{len(SshRecords(state_dir).all())} sandbox(es)")]  # fmt: skip
