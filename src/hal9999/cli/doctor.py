"""``hal doctor``: what hal needs on this machine, what is missing, and how to fix it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from hal9999.agents.registry import available_agents, resolve_agent
from hal9999.cli.main import cli, emit_json, run_async
from hal9999.cli.options import json_option
from hal9999.config import HalConfig, load_config
from hal9999.errors import HalError
from hal9999.home import HalPaths
from hal9999.providers.qemu.image.store import Image, ImageStore
from hal9999.providers.qemu.notice import notices
from hal9999.store.migrations import MIGRATIONS

_CGROUP = Path("/sys/fs/cgroup")
VERSION_TIMEOUT_S = 60.0
"""How long a tool may take to print its version. The agents' CLIs (node, python) start in
1-2 s of CPU each, and the doctor asks them all at once: on a busy 2-core machine (load 24)
three of six took more than 20 s and were reported as not running."""


class _Slow:
    """``_version``'s answer for a tool that printed nothing in time."""


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True


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


async def _bwrap_works() -> Check:
    if shutil.which("bwrap") is None:
        return Check("bwrap sandbox", False, "bubblewrap missing", "apt-get install bubblewrap")
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path("/", name).is_symlink():
            argv += ["--symlink", f"usr/{name}", f"/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", "true"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode == 0:
        return Check("bwrap sandbox", True, "namespaces work")
    return Check(
        "bwrap sandbox",
        False,
        err.decode(errors="replace").strip()[:200],
        "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
        "or run as root",
    )


def _boundary() -> list[Check]:
    """Who sandbox processes run as, what the seccomp filter covers, and what each network
    mode exposes (docs/security.md)."""
    from hal9999.providers.bwrap import seccomp, usernet
    from hal9999.providers.host import user as sandboxuser

    if sandboxuser.privileged():
        who = (
            "hal runs as root: each bwrap sandbox runs as a host uid of its own "
            f"({sandboxuser.UID_BASE}+), never root"
        )
    else:
        who = f"each bwrap sandbox runs as this user (uid {os.getuid()}) in a user namespace"
    checks = [Check("sandbox user", True, who)]
    covered = seccomp.supported()
    checks.append(
        Check(
            "seccomp filter",
            covered,
            "x86_64, i386 and x32 ABIs covered" if covered else "not on this CPU architecture",
            None if covered else "only x86_64 hosts get the filter; the rest of the boundary holds",
            required=False,
        )
    )
    checks.append(
        Check(
            "network none",
            True,
            "loopback only: no host or outside service; presets reach their API through the "
            "LLM gateway (the key stays on the host) and other hosts through the egress proxy "
            "([gateway] egress)",
        )
    )
    try:
        usernet.check(userns=not sandboxuser.privileged())
    except HalError as exc:
        checks.append(
            Check(
                "network host",
                False,
                f"unavailable: {exc.message}",
                f"{exc.hint}; or [providers.bwrap] host_network = \"shared\", which exposes "
                "every service on the host's loopback and its abstract unix sockets",
                required=False,
            )
        )
    else:
        checks.append(
            Check(
                "network host",
                True,
                "own namespace, outbound through slirp4netns; the host's loopback services, "
                "abstract unix sockets and other tasks are not reachable",
            )
        )
    return checks


def _cgroups() -> Check:
    fix = "run as root or delegate a cgroup to your user; without it, limits are not enforced"
    if (_CGROUP / "cgroup.controllers").exists():
        controllers = (_CGROUP / "cgroup.controllers").read_text().split()
        ok = os.access(_CGROUP, os.W_OK) and {"memory", "pids"} <= set(controllers)
        return Check("cgroups", ok, f"v2 ({' '.join(controllers)})", None if ok else fix, False)
    v1 = [c for c in ("memory", "pids", "cpu") if os.access(_CGROUP / c, os.W_OK)]
    ok = len(v1) == 3
    return Check(
        "cgroups", ok, f"v1 writable: {', '.join(v1) or 'none'}", None if ok else fix, False
    )


FAVOR_V2 = "mount -o remount,favordynmods /sys/fs/cgroup"


def cgroup_moves(mounts: str, *, v2: bool) -> Check:
    """Whether moving a process into a sandbox's cgroup (every bwrap command does) is quick.

    On cgroup v2, unless some hierarchy is mounted with ``favordynmods`` (Linux 6.0+), the
    kernel's lock for such moves waits for an RCU grace period whenever it has not been
    taken for a few milliseconds: measured here, a sandbox command after an idle spell took
    17 ms instead of 8.5 (docs/benchmarks.md). The option makes forks and exits a little
    dearer, so hal names it and leaves the choice to whoever runs the host. On v1 the
    launcher moves its one thread through ``tasks``, which takes no such lock
    (:meth:`hal9999.providers.host.cgroups.CgroupV1.join_files`)."""
    if not v2:
        return Check("cgroup moves", True, "v1: commands join through tasks, no wait", None, False)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            if "favordynmods" in fields[3].split(","):
                return Check("cgroup moves", True, f"favordynmods on {fields[1]}", None, False)
    return Check(
        "cgroup moves",
        False,
        "each sandbox command after an idle spell waits ~8 ms for the kernel (an RCU grace "
        "period to move it into its cgroup)",
        FAVOR_V2 + " (Linux 6.0+; forks and exits get a little dearer)",
        False,
    )


def _cgroup_checks() -> list[Check]:
    found = _cgroups()
    if not found.ok:  # hal moves nothing into cgroups here
        return [found]
    return [found, _cgroup_moves()]


def _cgroup_moves() -> Check:
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError as exc:
        return Check("cgroup moves", False, f"cannot read /proc/self/mounts: {exc}", None, False)
    return cgroup_moves(mounts, v2=(_CGROUP / "cgroup.controllers").exists())


def _home() -> list[Check]:
    """The config, the data directory and the database: each a line, never a traceback.
    Every bad table and key of the config is a line of its own (a run stops at the first)."""
    from hal9999.tasks.plugins import section_problems

    try:
        config = load_config()
    except HalError as exc:  # a broken config is itself the finding
        problems = exc.details.get("problems") or [exc.message]
        fix = exc.hint or "fix the file named above"
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
    """Run every check."""
    home = _home()
    checks = [
        Check("python", True, sys.version.split()[0]),
        *home,
        await _tool("git", ["git", "--version"], "apt-get install git"),
        await _tool("tmux", ["tmux", "-V"], "apt-get install tmux"),
        await _tool("bubblewrap", ["bwrap", "--version"], "apt-get install bubblewrap"),
        await _bwrap_works(),
        *_boundary(),
        *_cgroup_checks(),
    ]
    checks += await asyncio.gather(*(_agent(name) for name in available_agents()))
    checks += await _qemu()
    if not any(check.name == "HAL_HOME" and not check.ok for check in home):
        # Their state lives in HAL_HOME: one that is unusable (a symlink loop made the docker
        # provider's Path.resolve raise) is the finding already, said once with its fix.
        checks += await _remote()
        checks += await _containers()
    return checks


async def _containers() -> list[Check]:
    """The ``docker`` provider (SDK, engine, image, sandboxes) and PM2."""
    from hal9999.providers.docker.doctor import docker_findings, pm2_finding

    try:
        config = load_config()
    except HalError:  # reported by the config check
        return []
    state = HalPaths(config.home).sandbox_state("docker")
    found = await docker_findings(config.providers.get("docker"), state)
    return [Check(*finding, required=False) for finding in [*found, pm2_finding()]]


async def _remote() -> list[Check]:
    """The ``ssh`` hosts (reachable, bwrap there) and ``lima`` (limactl, hal's VMs)."""
    from hal9999.providers.ssh.doctor import lima_findings, ssh_findings

    try:
        config = load_config()
    except HalError:  # reported by the config check
        return []
    paths = HalPaths(config.home)
    found = await ssh_findings(config.providers.get("ssh"), paths.sandbox_state("ssh"))
    found += await lima_findings(config.providers.get("lima"), paths.sandbox_state("lima"))
    return [Check(f.name, f.ok, f.detail, f.fix, required=False) for f in found]


async def _qemu() -> list[Check]:
    """The ``qemu`` provider: QEMU, the image build tools, KVM (probed by booting), images."""
    fix = "apt-get install qemu-system-x86 qemu-utils (or from a checkout: scripts/setup-qemu.sh)"
    checks = [
        await _tool("qemu", ["qemu-system-x86_64", "--version"], fix, required=False),
        await _tool("qemu-img", ["qemu-img", "--version"], fix, required=False),
        await _tool(
            "debootstrap", ["debootstrap", "--version"], "apt-get install debootstrap "
            "(needed by `hal image build`)", required=False,
        ),
    ]  # fmt: skip
    try:
        from hal9999.cli.image import image_store

        store = image_store(load_config())
        images = store.all() if store.root.is_dir() else []
    except HalError as exc:  # HAL_QEMU_IMAGES, say (a broken config has its own check)
        return [*checks, Check("qemu images", False, exc.message, exc.hint, False)]
    except Exception as exc:  # a broken config is reported by the config check
        return [*checks, Check("qemu images", False, str(exc), None, False)]
    golden = [i for i in images if i.meta.kind == "golden"]
    if images:
        names = ", ".join(f"{i.name} ({i.meta.kind}, {len(i.states())} saved state(s))"
                          for i in images)  # fmt: skip
        checks.append(Check("qemu images", True, f"{store.root}: {names}", required=False))
    else:
        checks.append(Check("qemu images", False, f"none in {store.root}",
                            "hal image build (as root)", required=False))  # fmt: skip
    from hal9999.providers.host.user import privileged  # what the provider asks

    checks += outdated_images(images, root=privileged())
    if golden:
        checks.append(Check("guest kernel", True, golden[0].meta.kernel, required=False))
    checks.append(await _kvm(store, golden[0] if golden else None))
    return checks


def outdated_images(images: list[Image], *, root: bool) -> list[Check]:
    """One line per thing an image lacks that a rebuild gives it: an exec agent that
    answers pings (a hung VM of it is never noticed, its commands wait forever) and, for a
    ``root`` hal, ``hal-setup``'s ``adopt`` step (each start, restore or fork runs a separate
    find/chown in the guest). Each says the command that rebuilds it."""
    return [Check(f"qemu image {i.name}", False, what, fix, required=False)
            for i in images for what, fix in notices(i.meta, root=root)]  # fmt: skip


async def _kvm(store: ImageStore, image: Image | None) -> Check:
    """Whether KVM really runs a guest here (booted once, remembered), else TCG."""
    if not Path("/dev/kvm").exists():
        return Check("kvm", False, "no /dev/kvm: qemu sandboxes use TCG (software emulation, "
                     "slower)", "enable KVM (nested virtualisation) for faster VMs",
                     required=False)  # fmt: skip
    if image is None or shutil.which("qemu-system-x86_64") is None:
        return Check("kvm", False, "/dev/kvm exists; not probed yet (needs QEMU and an image)",
                     "hal image build", required=False)  # fmt: skip
    from hal9999.providers.qemu.state import accel

    chosen, why = await accel(store, image)
    return Check("kvm", chosen == "kvm", f"{why}: qemu sandboxes use {chosen}",
                 None if chosen == "kvm" else "TCG works; HAL_QEMU_ACCEL=kvm forces KVM",
                 required=False)  # fmt: skip


async def _agent(name: str) -> Check:
    """An agent CLI: installed?, its version, and the version hal is tested with."""
    agent = resolve_agent(name)
    tested: str | None = getattr(agent, "tested_version", None)
    fix = agent.install_hint
    if tested is not None:
        fix += f" (or, from a hal checkout, as root: scripts/install-agents.sh {name})"
    check = await _tool(f"agent {name}", [agent.program, "--version"], fix, required=False)
    if check.ok and tested is not None and tested not in check.detail:
        check.detail += f" (hal is tested with {tested})"
    return check


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
