"""A host program started without :mod:`subprocess`, its output on a pipe.

Light at import (``os`` and the C ``_signal``): the thin ``hal run`` starts its host ``git
status`` this way, and the full in-process run its tmux server, while it imports the rest.
:mod:`subprocess` with its ``signal``, ``threading``, ``selectors`` and
``locale`` would be a large share of the thin run's start.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Mapping, Sequence
else:
    import _signal  # the C module: signal.py builds three enums at import


class HostChild:
    """``subprocess.Popen(argv, env=env, stdout=PIPE, stderr=DEVNULL)`` (and
    ``stdin=DEVNULL`` with ``no_input``) as far as hal uses it: started by ``posix_spawnp``
    with what Popen gives its child (the signals Python ignores back to their defaults, no
    inherited descriptor but the standard three, ``close_fds``); ``stdout`` is the read end
    of its output's pipe."""

    def __init__(
        self, file: str, argv: Sequence[str], env: Mapping[str, str], *, no_input: bool = False
    ) -> None:
        self.returncode: int | None = None
        read, write = os.pipe()
        try:
            null = os.open(os.devnull, os.O_RDWR if no_input else os.O_WRONLY)
            try:
                actions: list[tuple[int, ...]] = [
                    (os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, null, 2)
                ]  # fmt: skip
                if no_input:
                    actions.append((os.POSIX_SPAWN_DUP2, null, 0))
                actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited(read, write, null)]
                self.pid = os.posix_spawnp(
                    file, list(argv), env, file_actions=actions,
                    setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ),
                )  # fmt: skip
            finally:
                os.close(null)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self.stdout: int | None = read

    def poll(self) -> int | None:
        """Its exit status, or None while it runs."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        """Its exit status, once it ended."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def stop(self) -> None:
        """Kill it and wait for it; its output is not wanted any more."""
        # Not reading to the end: a child it started (a submodule's status) would hold the
        # pipe open.
        if self.returncode is None:
            os.kill(self.pid, _signal.SIGKILL)
        self.wait()
        if self.stdout is not None:
            os.close(self.stdout)
            self.stdout = None


def _inherited(*ours: int) -> list[int]:
    """This process's descriptors past the standard three that a child would inherit (the
    ones Popen's ``close_fds`` closes; the others close on exec)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in ours:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:
                pass  # listdir's own, closed since
    return found
