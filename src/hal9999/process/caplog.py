"""A log file of bounded size: the first part of a run's output and its tail, with a line
saying how much was dropped between them.

An agent can print without end (a loop, a 300 MB file sent to stdout), and every byte of it
would otherwise land on the host's disk, twice (the log and the ``output`` events). The
supervisor writes each run's output through a :class:`CappedLog`: the first half of the cap
goes to the log as it arrives (so ``hal task logs -f`` shows a live run), then output goes to
two rotating tail segments next to the log holding the latest quarter-to-half of the cap;
when the run ends the log gets a marker line and the kept tail.
"""

from __future__ import annotations

# `posix`, not `os`: the supervisor imports this module on every task's path, and `os` (with
# `posixpath` and `_collections_abc`) would be a fifth of its interpreter's start-up.
import posix

TYPE_CHECKING = False
if TYPE_CHECKING:  # no pathlib either
    import os
    from collections.abc import Mapping

DEFAULT_LOG_CAP = 256 * 1024 * 1024
"""Bytes of one run's output kept in ``agent.log`` by default (128 MiB head + up to 128 MiB
of tail); ``HAL_LOG_CAP_MB`` overrides it."""

LOG_CAP_VAR = "HAL_LOG_CAP_MB"
"""Host environment variable overriding :data:`DEFAULT_LOG_CAP`, in MiB."""

_MIN_CAP = 4096


def log_cap_from(environ: Mapping[str, str]) -> int:
    """The log cap in bytes from ``HAL_LOG_CAP_MB`` (a positive number), else the default; any
    other value is a ConfigError naming the variable (it was the default without a word)."""
    raw = environ.get(LOG_CAP_VAR, "")
    if not raw:
        return DEFAULT_LOG_CAP
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        from hal9999.errors import ConfigError

        raise ConfigError(
            f"{LOG_CAP_VAR}: expected a number of MiB above 0, got {raw!r}",
            hint=f"fix or unset {LOG_CAP_VAR} (default {DEFAULT_LOG_CAP >> 20})",
        )
    return max(_MIN_CAP, int(value * 1024 * 1024))


def dropped_marker(dropped: int) -> bytes:
    """The line written where output was left out."""
    return f"\n[hal: {dropped} bytes of output dropped here (log cap); the tail follows]\n".encode()


class CappedLog:
    """Appends a run's output to ``path``, keeping the head and the tail within ``cap`` bytes."""

    def __init__(self, path: str | os.PathLike[str], cap: int | None) -> None:
        path = posix.fspath(path)
        flags = posix.O_WRONLY | posix.O_CREAT | posix.O_APPEND | posix.O_CLOEXEC
        self._fd = posix.open(path, flags, 0o600)
        self.size = posix.fstat(self._fd).st_size
        """Bytes in the log file now (what the reader can see)."""
        self._head_left = cap // 2 if cap is not None else None
        self._segment_cap = max(1, cap // 4) if cap is not None else 0
        name = path.rpartition("/")[2]
        self._segments = [beside(path, f".{name}.tail-{n}") for n in (0, 1)]
        for segment in self._segments:
            _unlink(segment)
        self._current = 0
        self._current_size = 0
        self._tail_fd: int | None = None
        self._tail_total = 0

    def write(self, data: bytes) -> None:
        """Append ``data``: to the log while the head lasts, then to the tail segments."""
        if self._head_left is None or len(data) <= self._head_left:
            self._write_log(data)
            if self._head_left is not None:
                self._head_left -= len(data)
            return
        head, rest = data[: self._head_left], data[self._head_left :]
        if head:
            self._write_log(head)
        self._head_left = 0
        while rest:
            if self._tail_fd is None or self._current_size >= self._segment_cap:
                self._rotate()
            assert self._tail_fd is not None
            room = self._segment_cap - self._current_size
            part, rest = rest[:room], rest[room:]
            _write_all(self._tail_fd, part)
            self._current_size += len(part)
            self._tail_total += len(part)

    def close(self) -> int:
        """Write the marker and the kept tail into the log; return the bytes dropped."""
        dropped = 0
        if self._tail_fd is not None:
            posix.close(self._tail_fd)
            self._tail_fd = None
            older = self._segments[1 - self._current]
            newer = self._segments[self._current]
            sizes = {p: size for p in (older, newer) if (size := _size(p)) is not None}
            kept = list(sizes)
            dropped = self._tail_total - sum(sizes.values())
            if dropped > 0:
                self._write_log(dropped_marker(dropped))
            for part in kept:
                fd = posix.open(part, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
                try:
                    while chunk := posix.read(fd, 1 << 20):
                        self._write_log(chunk)
                finally:
                    posix.close(fd)
                posix.unlink(part)
        posix.close(self._fd)
        return dropped

    def _rotate(self) -> None:
        if self._tail_fd is not None:
            posix.close(self._tail_fd)
            self._current = 1 - self._current
        path = self._segments[self._current]
        flags = posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC
        self._tail_fd = posix.open(path, flags, 0o600)
        self._current_size = 0

    def _write_log(self, data: bytes) -> None:
        _write_all(self._fd, data)
        self.size += len(data)


def beside(path: str, name: str) -> str:
    """``name`` in the folder of ``path`` (``os.path.join(os.path.dirname(path), name)``)."""
    folder, slash, _ = path.rpartition("/")
    return f"{folder}{slash}{name}"


def _size(path: str) -> int | None:
    try:
        return posix.stat(path).st_size
    except FileNotFoundError:
        return None


def _unlink(path: str) -> None:
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view) :]
