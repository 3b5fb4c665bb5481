"""Command lines for the remote host, built on the hal host; quoting happens here only.

Every remote command is ``sh -c WRAPPER hal-ssh ARGV...``, written so that any login shell
of the ssh user (sshd runs it with ``$SHELL -c``: fish, csh and tcsh too) hands it to ``sh``
unchanged (:func:`any_shell`). The wrapper reads one line from
stdin: the command's whole environment as ``export NAME='value'`` lines, base64-encoded.
It drops the login environment sshd gave it, applies that one, and execs ARGV (which reads
the rest of stdin). So values, secrets included, cross over the ssh channel's data and never
appear in an argv on either side (``AcceptEnv`` is off by default in sshd anyway); only the
wrapper's own builtins (``read``, ``printf``) ever hold them on the remote host.
"""

from __future__ import annotations

import base64
import functools
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hal9999.errors import ExecError, ProviderError
from hal9999.providers.base import Command, Launch
from hal9999.providers.bwrap import args as bwrapargs
from hal9999.providers.bwrap import usernet
from hal9999.providers.remote import relay as relaycore
from hal9999.pymodule import module_argv
from hal9999.spec import to_argv

WRAPPER = (
    "IFS= read -r hal_env || exit 125; "
    'hal_env=$(printf %s "$hal_env" | base64 -d) || exit 125; '
    # Drop what sshd set (USER, SSH_CONNECTION, MAIL...): the command gets exactly its env.
    "for hal_v in $(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p'); do "
    'case $hal_v in hal_env|hal_v) ;; *) unset "$hal_v" ;; esac; done; '
    'eval "$hal_env"; unset hal_env hal_v; exec "$@"'
)
"""The constant remote wrapper (see the module docstring)."""

KILL = (
    "for round in 1 2 3 4 5 6 7 8 9 10; do "
    'pids=$(grep -lzxF -- "$1=$2" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); '
    '[ -z "$pids" ] && exit 0; kill -9 $pids 2>/dev/null; sleep 0.05; done; exit 1'
)
"""Kill, until none is left, every process whose environment carries ``$1=$2`` (the
sandbox or command marker), including children that left the process group."""

BARE = (
    'cd -- "$1" || exit 1; shift; "$@"; s=$?; '
    'for p in $(grep -lzxF -- "HAL_EXEC=$HAL_EXEC" /proc/[0-9]*/environ 2>/dev/null '
    '| cut -d/ -f3); do [ "$p" = "$$" ] || kill -9 "$p" 2>/dev/null; done; exit $s'
)
"""Without bwrap: run the command in its directory; when it ends, what it left running
(marked by the command's ``HAL_EXEC``) goes too, as bwrap's pid namespace does."""

HOST_FACTS = (
    'printf "%s\n" "$HOME"; echo "uid $(id -u)"; echo "gid $(id -g)"; '
    'for p in python3 slirp4netns unshare; do command -v $p >/dev/null 2>&1 && echo "has $p"; '
    'done; [ -r /dev/net/tun ] && [ -w /dev/net/tun ] && echo "has tun"; '
    'v=$("$1" --version 2>/dev/null) && echo "bwrap $v"; true'
)
"""What hal needs to know of a host (``$1``: its bubblewrap program), one fact a line: the
login HOME first, then ``uid N``, ``gid N``, ``has P`` for each of ``python3`` (see
:data:`BARE_REAPED`), ``slirp4netns``, ``unshare`` and ``tun`` (a ``/dev/net/tun`` the user
can open) it has, and ``bwrap <its --version>`` (:func:`host_facts` reads it)."""


@dataclass(frozen=True)
class HostFacts:
    """What :data:`HOST_FACTS` found on a host."""

    home: str
    uid: int | None
    gid: int | None
    has: frozenset[str]
    """Which of ``python3``, ``slirp4netns``, ``unshare`` and ``tun`` it has."""
    bwrap: str | None
    """What its bubblewrap says it is (``bubblewrap 0.8.0``), None without one."""

    def network_host_missing(self) -> str | None:
        """What ``network = "host"`` (its own namespace with slirp4netns, as a local bwrap
        sandbox's) lacks on this host, or None."""
        if "slirp4netns" not in self.has:
            return "slirp4netns"
        if "unshare" not in self.has:
            return "unshare(1)"
        return None if "tun" in self.has else "a /dev/net/tun the login user can open"

    def bwrap_refused(self, program: str) -> tuple[str, str] | None:
        """Why the host cannot give a sandbox a local bwrap sandbox's boundary, and the fix
        (None: it can): no bubblewrap, a root login (hal switches no uid there, so bwrap
        would run the agent as host uid 0), or a bubblewrap too old to disable nested user
        namespaces."""
        if self.bwrap is None:
            return f"has no {program} (bubblewrap)", "apt-get install bubblewrap on that host"
        if self.uid == 0:
            return ROOT_REFUSED, ROOT_FIX
        found = re.search(r"(\d+)\.(\d+)", self.bwrap)
        if found is None or (int(found[1]), int(found[2])) < BWRAP_AT_LEAST:
            return (
                f"has {self.bwrap}, older than 0.8: it cannot keep the agent from nesting "
                "user namespaces",
                "install bubblewrap 0.8 or later on that host",
            )
        return None


BWRAP_AT_LEAST = (0, 8)
"""The first bubblewrap with ``--disable-userns``, which a local sandbox's options hold."""
ROOT_REFUSED = (
    "logs in as root: bwrap there would run the agent as host uid 0, with /proc/sys "
    "writable (hal switches uids only on its own host)"
)
ROOT_FIX = 'log in as an ordinary user: user = "..." in [[providers.ssh.hosts]]'


def host_facts(out: bytes) -> HostFacts:
    """:data:`HOST_FACTS`'s output, read defensively (the host is not hal's)."""
    home, *rest = out.decode(errors="replace").split("\n")
    facts: dict[str, str] = {}
    has = set()
    for line in rest:
        key, _, value = line.strip().partition(" ")
        if key == "has":
            has.add(value)
        else:
            facts.setdefault(key, value)
    ids = [facts.get(key, "") for key in ("uid", "gid")]
    uid, gid = (int(ids[0]), int(ids[1])) if all(map(_number, ids)) else (None, None)
    return HostFacts(home.strip(), uid, gid, frozenset(has), facts.get("bwrap"))


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()


WITH_REAPER = 'p=$1; shift; command -v python3 >/dev/null 2>&1 && exec python3 -I -S -c "$p" '
"""The start of :data:`BARE_REAPED` and :data:`END`: ``$1`` is :func:`reaper_source`; with
python3 on the host it runs the rest (a mode, then that mode's arguments)."""

BARE_REAPED = WITH_REAPER + 'run "$@"; ' + BARE
"""A bare host's command (``$1`` the reaper's source, ``$2`` the directory, then the
command): run under :mod:`.reaper`, which ends whatever it left, however it hid (a cleared
environment, a session of its own); :data:`BARE` on a host without python3."""

END = WITH_REAPER + 'end "$@"; ' + KILL
"""End every process marked ``$2=$3`` and all under them (``$1`` the reaper's source):
:mod:`.reaper`'s ``end``, :data:`KILL` (the marked ones only) on a host without python3.
Exits 0 once none is left."""


@functools.cache
def reaper_source() -> str:
    """The source of :mod:`.reaper`, run on bare hosts as ``python3 -c``."""
    return (Path(__file__).parent / "reaper.py").read_text()


RESET = (
    'for d in "$@"; do chmod -R u+rwX -- "$d" 2>/dev/null; rm -rf -- "$d" || exit 1; '
    'mkdir -m 700 -- "$d" || exit 1; [ -z "$(ls -A -- "$d")" ] || exit 1; done'
)
"""Replace each of the directories ``$@`` by an empty one (a task may have left 000 or 555
directories there, which ``rm`` alone cannot pass; chmod never follows links)."""

REMOVE = 'chmod -R u+rwX -- "$1" 2>/dev/null; rm -rf -- "$1"'
"""Remove the tree ``$1`` whatever modes a task left in it."""

ETC = (
    "passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
    "services", "protocols", "ssl", "ca-certificates", "alternatives", "ld.so.cache",
    "localtime", "gitconfig", "os-release", "mime.types",
)  # fmt: skip
"""What toolchains need of the remote /etc (as the local bwrap provider binds)."""
MERGED_USR = ("bin", "sbin", "lib", "lib64")


def env_line(env: Mapping[str, str]) -> bytes:
    """The first line of the wrapper's stdin: ``env`` as base64 of ``export`` lines."""
    lines = []
    for name, value in env.items():
        check_name(name)
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return base64.b64encode("".join(lines).encode()) + b"\n"


def check_name(name: str) -> None:
    """Variable names become shell code in the wrapper: only [A-Za-z_][A-Za-z0-9_]*."""
    ok = name and (name[0].isalpha() or name[0] == "_")
    if not ok or not all(c.isalnum() or c == "_" for c in name) or not name.isascii():
        raise ProviderError(f"invalid environment variable name {name!r}")


def relay_launch(
    module: str, records: Path, sandbox: str, command: Command, env: Mapping[str, str],
    *options: str,
) -> Launch:  # fmt: skip
    """The launch of a relay (``python -m module``, :mod:`..remote.relay`'s options) running
    ``command`` in ``sandbox``: values ride in its environment, names in argv."""
    argv = [*module_argv(module), "--records", str(records), "--id", sandbox, *options]
    for name in sorted(env):
        check_name(name)
        argv += ["--env", name]
    if command.cwd:
        argv += ["--cwd", command.cwd]
    return Launch(argv=[*argv, "--", *to_argv(command)], env=dict(env),
                  stop_grace_s=relaycore.STOP_GRACE_S)  # fmt: skip


def wrapped(argv: Sequence[str]) -> str:
    """The remote command string that runs ``argv`` under the wrapper."""
    return any_shell(["sh", "-c", WRAPPER, "hal-ssh", *argv])


def plain(argv: Sequence[str]) -> str:
    """A remote command string for hal's own steps (no secrets, login environment)."""
    return any_shell(list(argv))


# What some login shell reads otherwise than sh inside single quotes, or at all: a newline
# (csh and tcsh: "Unmatched '"), "!" (their history), "\\" and "\'" (fish's escapes there),
# any other control or non-ASCII character (a name that is no UTF-8 too: its bytes go encoded).
_NOT_FOR_EVERY_SHELL = re.compile(r"[^\x20-\x7e]|!|\\[\\']")
# A word every shell reads bare as itself: shlex's set without "=" (zsh's "=ls" is ls's path,
# csh's "=1" its directory stack) and "%" (fish's "%self" is its pid).
_BARE = re.compile(r"[A-Za-z0-9_@+:,./-]+")
MAX_COMMAND = (32 << 12) - 1
"""The longest command string the host's exec takes: sshd hands it to the login shell as one
argument, and Linux refuses one past MAX_ARG_STRLEN (32 pages, its NUL included)."""


def _word(arg: str) -> str:
    if _BARE.fullmatch(arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def any_shell(argv: Sequence[str]) -> str:
    """``argv`` as a command string that the ssh user's login shell, which sshd hands it to
    (``$SHELL -c``), runs as ``argv`` whether it is sh, bash, zsh, fish, csh or tcsh: the
    plain shell words when every such shell reads them as sh does, else the same words
    base64-encoded for ``sh`` to decode (``base64``, as the wrapper's, is on the host).
    Raises :class:`ExecError` for one longer than the host's exec takes (:data:`MAX_COMMAND`,
    the encoding a third longer), which would fail there as "Argument list too long"."""
    text = " ".join(map(_word, argv))
    if _NOT_FOR_EVERY_SHELL.search(text):
        encoded = base64.b64encode(text.encode("utf-8", "surrogateescape")).decode()
        text = f"sh -c 'eval \"$(echo {encoded} | base64 -d)\"'"
    if len(text) > MAX_COMMAND:
        raise ExecError(
            f"the command is too long for the ssh host: {len(text)} bytes as its login shell "
            f"gets it, at most {MAX_COMMAND} (a word with a newline, '!', a backslash or "
            "non-ASCII text goes base64-encoded, a third longer)",
            hint="pass long data on the command's stdin or in a file in the sandbox",
        )
    return text


class Mounts:
    """Where each sandbox path lives in the mirror on the remote host."""

    def __init__(self, root: str, mounts: Sequence[tuple[str, str, bool]]) -> None:
        self.root = root
        self.mounts = sorted(mounts, key=lambda m: m[0].count("/"))
        """(target inside, directory in the mirror, writable), shallowest first."""

    def remote(self, target: str) -> str | None:
        """The mirror directory of the mount whose target is ``target`` exactly."""
        for inside, where, _ in self.mounts:
            if inside == target:
                return where
        return None

    def writable(self, path: str) -> bool:
        """Whether ``path`` (inside, or in the mirror) lies on a writable mount."""
        path = posixpath.normpath(path)
        best: tuple[int, bool] = (-1, True)
        for inside, where, writable in self.mounts:
            for base in (inside, where):
                if path == base or path.startswith(base.rstrip("/") + "/"):
                    best = max(best, (len(base), writable))
        return best[1]

    def mirrored(self, path: str) -> str:
        """``path`` as a bare command on the remote host sees it: a path already in the
        mirror as it is, one inside the sandbox translated (:meth:`translate`)."""
        for _, where, _ in self.mounts:
            if path == where or path.startswith(where + "/"):
                return path
        return self.translate(path)

    def translate(self, path: str) -> str:
        """``path`` (as seen inside a bwrap sandbox) as a path on the remote host."""
        path = posixpath.normpath(path)
        best: tuple[str, str] | None = None
        for inside, where, _ in self.mounts:
            if path == inside or path.startswith(inside.rstrip("/") + "/"):
                if best is None or len(inside) > len(best[0]):
                    best = (inside, where)
        if best is None:
            raise ProviderError(f"{path} is outside the sandbox's directories")
        rest = path[len(best[0]) :].lstrip("/")
        return posixpath.join(best[1], rest) if rest else best[1]


SECCOMP_FILE = "seccomp.bpf"
"""The filter's file in a sandbox's root on the host, beside (never inside) its binds."""

MAKE_ROOT = 'mkdir -p -m 700 -- "$@" && printf %s "$0" | base64 -d > "$1/seccomp.bpf"'
"""Make a sandbox's root (``$1``) and directories, and write bwrap's filter (``$0``'s
base64, as :mod:`hal9999.providers.bwrap.seccomp` builds it) into the root."""

AS_USER = (
    f'if [ "$(id -u)" = 0 ]; then echo "hal: error: the ssh host {ROOT_REFUSED}" >&2; '
    'exit 125; fi; f=$1; shift; [ -n "$f" ] || exec "$@"; exec "$@" 9<"$f"'
)
"""Exec bwrap (``$@``) with the filter's file (``$1``, none when empty) open on fd 9, for
``--seccomp 9``; never as root (a sandbox made on the host before it was refused)."""
USERNET = ("slirp4netns", "unshare")
"""The programs :mod:`hal9999.providers.bwrap.usernet`'s wiring runs on the host (on its PATH)."""


def bwrap_argv(
    bwrap: str,
    mounts: Mounts,
    *,
    cwd: str,
    network: bool,
    tty: bool,
    argv: Sequence[str],
    root: str | None,
    user_ids: tuple[int, int] | None,
) -> list[str]:
    """bubblewrap on the remote host, its namespaces and ``/proc`` as a local bwrap
    sandbox's of an ordinary user (:mod:`hal9999.providers.bwrap.args`): all namespaces
    unshared, no nested user namespace, the seccomp filter (written into ``root`` by
    :data:`MAKE_ROOT`; none without a ``root``: a sandbox an older hal made), ``/proc``'s
    host-wide writers read-only; with ``network`` a network namespace of its own wired to
    the outside by slirp4netns (:mod:`hal9999.providers.bwrap.usernet`, its fifos in the mirror's
    root), never the host's. Then the read-only system, the mirror's directories bound at
    their targets, the command last. ``user_ids``: the login user's (None, an older
    sandbox's record: its own user namespace's root, the login user on the host). The
    environment is inherited from the wrapper (bwrap's ``--setenv`` would put values in
    its argv)."""
    filter_file = f"{root}/{SECCOMP_FILE}" if root is not None else ""
    args = ["sh", "-c", AS_USER, "hal-bwrap", filter_file]
    if network:
        args += usernet.prefix(mounts.root, USERNET[0], userns=True, unshare=USERNET[1])
    args.append(bwrap)
    args += bwrapargs.namespace_args(
        None, seccomp_fd=root is not None, shared_net=False, usernet_wired=network,
        die_with_parent=True, user_ids=user_ids or (0, 0),
    )  # fmt: skip
    if not tty:
        # Without a terminal of its own, TIOCSTI on an inherited one is the escape to close.
        args.append("--new-session")
    args += ["--ro-bind", "/usr", "/usr"]
    for name in MERGED_USR:
        args += ["--ro-bind-try", f"/{name}", f"/{name}"]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += bwrapargs.proc_args(as_root=False)
    for inside, where, writable in mounts.mounts:
        args += ["--bind" if writable else "--ro-bind", where, inside]
    args += ["--dir", "/var", "--symlink", "../tmp", "/var/tmp", "--chdir", cwd, "--", *argv]
    return args
