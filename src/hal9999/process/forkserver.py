"""The supervisor fork server: one ``python -I -S`` that has loaded the supervisor and forks a
copy of itself for each run, instead of a new interpreter per run.

Every run of the ``direct`` process manager starts the supervisor (see
:mod:`hal9999.process.supervisor`); an interpreter's start costs several times the CPU of
a fork of this small process (the largest
share of a task's processes' CPU through ``hal serve``). A process that starts a second run
(the daemon) therefore starts this server once, over a socketpair
(:class:`ForkServerClient`); a process with one run (an in-process ``hal run``) never does.

A request names the supervisor's options, the run's complete environment and its working
directory: the environment holds the run's secrets, so it travels over the socket as it
traveled in the environment of an ``exec`` before, never in argv. The child does what the
``exec``'d supervisor did before its first line: a session of its own, that environment
and directory, no descriptor past stdio (all ``/dev/null``, as the direct manager gave them),
default ``SIGCHLD``; then :func:`~hal9999.process.supervisor.supervise` and ``_exit``. The
server reaps its children as they end (a ``SIGCHLD`` wakes it), and exits when its client's
end of the socket closes; runs still going are unaffected, as they were by their starter's
exit before.

Framing: a 4-byte big-endian length, then that many bytes of JSON, each way.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys

from hal9999.process.supervisor import supervise

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import subprocess
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any
else:
    import _signal as signal  # see supervisor.py: the enum-free C module

MAX_MESSAGE = 64 << 20
"""Largest request or reply (bytes); a longer length prefix ends the server."""


def _read_exact(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_message(fd: int) -> Any | None:
    """One framed JSON message from ``fd``; None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        return None
    body = _read_exact(fd, size)
    return None if body is None else json.loads(body)


def write_message(fd: int, message: object) -> None:
    """Send ``message`` as one framed JSON message on ``fd``."""
    body = json.dumps(message).encode()
    view = memoryview(len(body).to_bytes(4, "big") + body)
    while view:
        view = view[os.write(fd, view) :]


def reap_exited() -> None:
    """Reap every child that has exited, without waiting for one that runs (any child's
    status is taken: call it with none whose status its caller still wants)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _coerce_c_locale() -> None:
    """What an interpreter's start does to the environment it is given (PEP 538): where
    ``LC_ALL`` is unset and the ``LC_CTYPE`` locale it names is C (or not installed),
    ``LC_CTYPE`` becomes ``C.UTF-8``, which the command inherits; a forked supervisor must
    hand its command the same environment an ``exec``'d one did."""
    import _locale

    if os.environ.get("LC_ALL"):
        return
    _locale.setlocale(_locale.LC_CTYPE, "C")  # a new process's locale, not the server's
    # `_locale.Error` (not in typeshed) when the locale is not installed: C stays.
    with contextlib.suppress(Exception):
        _locale.setlocale(_locale.LC_CTYPE, "")
    if _locale.setlocale(_locale.LC_CTYPE, None) != "C":
        return
    for name in ("C.UTF-8", "C.utf8", "UTF-8"):
        try:
            _locale.setlocale(_locale.LC_CTYPE, name)
        except Exception:  # `_locale.Error`: not installed
            continue
        os.environ["LC_CTYPE"] = name
        return


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the run's supervisor; never returns."""
    status = 127
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        cwd = request.get("cwd")
        if cwd:
            os.chdir(cwd)
        os.environ.clear()
        os.environ.update(request["env"])
        _coerce_c_locale()
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        status = supervise(list(request["args"]))
    except BaseException:  # nothing to report to: stdio is /dev/null, as it was before
        pass
    finally:
        os._exit(status & 0xFF)


def serve(fd: int) -> None:
    """Answer requests on ``fd`` with the pid of a forked supervisor, until end of file."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    while True:
        reap_exited()
        ready, _, _ = select.select([fd, wake_read], [], [])
        if wake_read in ready:
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
        if fd not in ready:
            continue
        try:
            request = read_message(fd)
        except (OSError, ValueError):
            request = None
        if not isinstance(request, dict):
            return
        try:
            pid = os.fork()
        except OSError as exc:
            write_message(fd, {"error": str(exc)})
            continue
        if pid == 0:
            _child(request)
        del request  # its environment holds the run's secrets: not kept past the fork
        write_message(fd, {"pid": pid})


def main() -> None:
    """Entry point: ``python -I -S -c ... FD`` (see :class:`ForkServerClient`)."""
    serve(int(sys.argv[1]))


class ServerUnavailable(OSError):
    """Nothing was forked for a request (see :meth:`ForkServerClient.spawn`)."""


class ForkServerClient:
    """The starting side: a fork server started on first use, one request at a time."""

    def __init__(self, prefix: Sequence[str]) -> None:
        import threading

        self._prefix = list(prefix)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None

    def spawn(self, args: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> int:
        """Fork a supervisor running ``args`` in ``env`` and ``cwd``; its pid.

        :class:`ServerUnavailable` when nothing was forked (no server could be started, the
        request did not reach it, it could not fork): the caller may start the run another
        way. Any other OSError means the request was sent and went unanswered, so a
        supervisor may be running: the caller must not start a second one."""
        request = {"args": list(args), "env": dict(env), "cwd": None if cwd is None else str(cwd)}
        with self._lock:
            try:
                alive = self._proc is not None and self._proc.poll() is None
                fd = self._fd if alive and self._fd is not None else self._start()
                write_message(fd, request)
            except OSError as exc:
                self._stop()
                raise ServerUnavailable(f"supervisor fork server: {exc}") from exc
            try:
                reply = read_message(fd)
            except (OSError, ValueError) as exc:
                self._stop()
                raise OSError(f"supervisor fork server did not answer: {exc}") from exc
            if reply is None:
                self._stop()
                raise OSError("supervisor fork server ended without answering")
            if isinstance(reply, dict) and isinstance(reply.get("pid"), int):
                return int(reply["pid"])
            raise ServerUnavailable(f"supervisor fork server: {reply!r}")

    def _start(self) -> int:
        import socket
        import subprocess

        self._stop()
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [*self._prefix, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env={},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._fd = ours.detach()
        return self._fd

    def close(self) -> None:
        """End the server (runs it forked go on); the next :meth:`spawn` starts another."""
        import subprocess

        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # at end of file it returns
                self._fd = None
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None

    def _stop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._proc is not None:
            self._proc.kill()  # already gone, or no longer answering
            self._proc.wait()
            self._proc = None
