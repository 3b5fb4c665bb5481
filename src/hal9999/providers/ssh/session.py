"""An agent's run in a tmux session ON the ssh host, and the ``ssh`` command that attaches to it.

The relay (:mod:`.relay`) starts the run with :data:`START` under the environment wrapper of
:mod:`.remote`: a tmux server of its own (socket in a private run directory of the sandbox's
mirror, outside every bind, so the agent cannot reach it) whose pane runs :data:`PANE`. The
server inherits the wrapper's environment, so secrets reach the pane without an argv, as
they do in the host's tmux. The pane sends the command's combined output both to its own
terminal (what a person attaching sees) and to a file the relay follows with ``tail``, and
records the exit status; the relay's stream ends when the pane does. A connection lost
under the relay leaves the run going in tmux until hal stops or destroys the sandbox (its
processes carry the sandbox marker).

``hal task attach`` runs the system ``ssh`` client with the host's key and a known_hosts file
written by hal from the configured entry (strict checking, nothing learnt, no user config),
which opens :data:`ATTACH` with a terminal.
"""

from __future__ import annotations

from pathlib import Path

from hal9999 import fs
from hal9999.errors import ProviderError
from hal9999.providers.ssh import remote
from hal9999.providers.ssh.config import SshHost
from hal9999.providers.ssh.options import config_value

PANE = (
    'd=$1; shift; { HAL_EXEC="${HAL_EXEC}p" "$@"; s=$?; printf "%s\\n" "$s" > "$d/status.tmp"; '
    'mv -f -- "$d/status.tmp" "$d/status"; } 2>&1 | tee -a -- "$d/out"'
)
"""What the remote pane runs: the command, its output to the pane and ``$d/out``, its status
to ``$d/status``. The command's own exec marker gets a suffix (:func:`inner_token`): without
bwrap, what the command leaves running is killed by its marker when it ends, which must not
take the session and the relay's ``tail`` along."""

START = (
    'd=$1; pane=$2; shift 2; umask 077; mkdir -p -- "$d" && : > "$d/out" || exit 125; '
    # The clipboard option before the pane exists: the agent must not write the clipboard
    # of whoever attaches (OSC 52 would pass through to the outer terminal); the status line
    # without the pane's title, which the agent sets (tmuxearly.STATUS_RIGHT).
    'tmux -S "$d/sock" -f /dev/null start-server \\; set-option -s set-clipboard off \\; '
    "set-option -g status-right '%H:%M %d-%b-%y' \\; "
    'new-session -d -s hal -x 200 -y 50 -- sh -c "$pane" hal-pane "$d" "$@" || exit 125; '
    "pid=$(tmux -S \"$d/sock\" display-message -p -t hal '#{pane_pid}' 2>/dev/null); "
    'if [ -n "$pid" ]; then tail -s 0.2 -c +1 --pid="$pid" -f -- "$d/out"; '
    'else cat -- "$d/out"; fi; '
    's=$(cat -- "$d/status" 2>/dev/null); rm -rf -- "$d"; '
    'case $s in ""|*[!0-9]*) exit 255 ;; *) exit "$s" ;; esac'
)
"""Start the session (``$1``: the run directory, ``$2``: :data:`PANE`, then the command),
follow its output until the pane ends, exit with the command's status."""

ATTACH = (
    'for s in "$1"/r-*/sock; do [ -S "$s" ] && exec tmux -S "$s" attach-session -t hal; done; '
    'echo "hal: no agent is running in this sandbox on the host" >&2; exit 1'
)
"""Attach to the sandbox's live session (``$1``: the sandbox's mirror root)."""

HAS_TMUX = "command -v tmux >/dev/null 2>&1"
"""Whether the host can hold the run in tmux (otherwise the relay runs it directly)."""


def inner_token(token: str) -> str:
    """The exec marker of the command inside the session whose own marker is ``token``."""
    return f"{token}p"


def run_dir(root: str, token: str) -> str:
    """The private directory of one run (socket, output, status) in the sandbox's mirror."""
    return f"{root}/r-{token[:12]}"


def known_hosts_file(host: SshHost, state_dir: Path) -> Path:
    """A known_hosts file holding exactly the configured entry for ``host`` (written by hal,
    mode 600), or the configured file itself."""
    if host.known_hosts is not None:
        return host.known_hosts
    assert host.host_key is not None
    fields = host.host_key.split()
    if len(fields) < 2:
        raise ProviderError(f"host_key of ssh host {host.name!r} is not a public key")
    name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
    directory = state_dir / "known_hosts"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / host.name
    fs.write_text(path, f"{name} {fields[0]} {fields[1]}\n", mode=0o600, durable=False)
    return path


def attach_argv(host: SshHost, root: str, state_dir: Path, *, ssh: str = "ssh") -> list[str]:
    """The ``ssh`` command line that opens the sandbox's live tmux session on its host.

    Only hal's own settings count: no ``~/.ssh/config`` (``-F /dev/null``), no agent, only
    the configured key, strict host key checking against the file hal wrote, and no key is
    ever added to it."""
    known = known_hosts_file(host, state_dir)
    options = {
        # Not `-i`: ssh looks for that file before it expands the `%` tokens in its name.
        "IdentityFile": config_value(host.key_file),
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": config_value(known),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ConnectTimeout": "15",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
    }
    argv = [ssh, "-F", "/dev/null", "-p", str(host.port), "-l", host.user]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    command = remote.any_shell(["sh", "-c", ATTACH, "hal-attach", root])
    return [*argv, "-t", "--", host.address, command]
