"""``network = "host"`` for bwrap: the sandbox's own network namespace, with outbound access
through user-mode networking (slirp4netns) and the host's loopback out of reach.

Sharing the host's network namespace would show the sandbox every loopback listener of the
host (other tasks' servers, the daemon's port) and every abstract unix socket. Instead bwrap
makes a fresh namespace as for ``none``, and slirp4netns gives it a ``tap0`` whose traffic
leaves through ordinary host sockets: TCP/UDP to the outside world works, the gateway
(:data:`GATEWAY`, standing for the host) is refused (``--disable-host-loopback``), abstract
sockets are per namespace anyway, and DNS goes to slirp's forwarder (:data:`DNS`). The
virtual network is link-local (:data:`CIDR`), not slirp's default 10.0.2.0/24, so it can
never shadow or be mistaken for a private network the host routes to. slirp4netns sandboxes itself
(``--enable-sandbox``, ``--enable-seccomp``) and exits when the sandbox's processes are gone.

The wiring is a constant ``sh`` script between the launcher and bwrap: it starts a helper
that reads the sandbox's pid from bwrap's ``--info-fd``, attaches slirp4netns to its
namespace and only then releases bwrap's ``--block-fd``, so the command never runs before
its network is there.
"""

from __future__ import annotations

import os
import shutil

from hal9999.errors import CapabilityError

INFO_FD, BLOCK_FD, EXIT_FD = 5, 6, 7
CIDR = "169.254.231.0/24"
"""The sandbox's virtual network (slirp4netns ``--cidr``): link-local, private to the namespace."""
GATEWAY = "169.254.231.2"
"""slirp's gateway, which would be the host's loopback were it not disabled."""
DNS = "169.254.231.3"
"""slirp4netns's DNS forwarder, which resolves with the host's resolvers."""
RESOLV_CONF = f"nameserver {DNS}\n"

SCRIPT = r"""
d=$1 slirp=$2 unshare=$3; shift 3
info=$d/info.$$ block=$d/block.$$ gone=$d/exit.$$
rm -f "$info" "$block" "$gone"
mkfifo -m 600 "$info" "$block" "$gone" || exit 125
# All three held open here before the helper starts (read-write: no open waits), so no open
# of the helper's waits on this shell: killed before its exec (hal's death), its ends close,
# the helper reads the end of `info` and starts nothing. bwrap's 5 is write-only again.
exec 7<>"$gone" 6<>"$block" 5<>"$info"
(
  exec 4<"$gone" 5<"$info" 7>&- 9<&-
  pid=
  while read -r line <&5; do
    case $line in *'"child-pid"'*) pid=${line##*: }; pid=${pid%,}; break ;; esac
  done
  # The rest of bwrap's report is drained, or bwrap would die of SIGPIPE writing it.
  cat <&5 >/dev/null &
  exec 5<&-
  rm -f "$info" "$block" "$gone"
  set -- --configure --mtu=65520 --cidr=@CIDR@ --disable-host-loopback \
    --enable-sandbox --enable-seccomp --exit-fd 4 --ready-fd 3
  if [ -z "$pid" ]; then
    set --
  elif [ -n "$unshare" ]; then
    # bwrap runs in the namespaces `unshare` made, where root is mapped: slirp4netns joins
    # them through bwrap's own pid ($$, exec'd over this shell), brings loopback up itself.
    set -- "$@" "$$"
  else
    # bwrap's child brings its loopback up in parallel; slirp4netns touching the namespace
    # before that makes bwrap fail. Wait for 127.0.0.1 to appear there (2 s at most).
    tries=400
    while [ "$tries" -gt 0 ]; do
      up=
      while read -r l; do case $l in *127.0.0.1*) up=1; break ;; esac; done \
        < "/proc/$pid/net/fib_trie" 2>/dev/null
      [ -n "$up" ] && break
      tries=$((tries - 1)); sleep 0.005
    done
    set -- "$@" --netns-type=path "/proc/$pid/ns/net"
  fi
  if [ "$#" -gt 0 ]; then
    # Released once slirp4netns is ready, or has failed (then with loopback only); what it
    # says on failure is kept next to the fifos.
    "$slirp" "$@" tap0 3>&1 >/dev/null 2>"$d/slirp.log" |
      { head -c1 >/dev/null; echo go >&6; }
  else
    echo go >&6
  fi
) </dev/null >/dev/null 2>&1 &
[ -n "$unshare" ] && exec "$unshare" --user --map-root-user --net -- "$@" 5>"$info"
exec "$@" 5>"$info"
""".replace("@CIDR@", CIDR)
"""Args: a private dir for the fifos, the slirp4netns program, the ``unshare`` program when
hal runs as an ordinary user (else empty); then the bwrap argv (which must carry
:func:`bwrap_args`). A constant, never interpolated. If slirp4netns fails the command still
runs, with no network but loopback: it fails closed.

Run by root, bwrap makes the network namespace and slirp4netns (root) attaches to it. Run by
an ordinary user, slirp4netns's own sandbox (``--enable-sandbox``) must become root in the
user namespace that owns the network namespace, and bwrap's maps only the user: so ``unshare``
first makes a user namespace mapping root to the user, with a network namespace of its own,
and bwrap runs inside it sharing that network (``--share-net``) with the user's own uid and
gid (``--uid``/``--gid``) in its nested user namespace, as without ``host`` networking."""


def program() -> str | None:
    """The slirp4netns program, if installed."""
    return shutil.which("slirp4netns")


def check(*, userns: bool) -> str:
    """The slirp4netns program; :class:`CapabilityError` naming the fix when it cannot work."""
    found = program()
    if found is None:
        raise CapabilityError(
            'network "host" needs slirp4netns for the sandbox\'s own network namespace',
            hint='apt-get install slirp4netns (or use network "none")',
        )
    if userns and shutil.which("unshare") is None:
        raise CapabilityError(
            'network "host" needs unshare(1) when hal runs as an ordinary user',
            hint='apt-get install util-linux (or use network "none")',
        )
    if userns and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        raise CapabilityError(
            'network "host" needs /dev/net/tun, which this user cannot open',
            hint='chmod 0666 /dev/net/tun (its usual mode), run hal as root, or use network "none"',
        )
    return found


def prefix(run_dir: str, slirp: str, *, userns: bool, unshare: str | None = None) -> list[str]:
    """The argv that runs before bwrap to give its namespace user-mode networking;
    ``unshare``: the program where it runs (found on this host's PATH by default)."""
    program = (unshare or shutil.which("unshare") or "unshare") if userns else ""
    return ["/bin/sh", "-c", SCRIPT, "hal-usernet", run_dir, slirp, program]


def bwrap_args() -> list[str]:
    """What bwrap needs for :data:`SCRIPT`: report its pid, wait for the network."""
    return ["--info-fd", str(INFO_FD), "--block-fd", str(BLOCK_FD)]
