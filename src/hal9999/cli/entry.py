"""The ``hal`` entry point: ``hal --version`` answers before click is imported, and so does a
``hal run`` the daemon takes in the common forms.

Everything else goes to :func:`hal9999.cli.main.main`. Click alone is most of what a bare
``hal --version`` would import (its target is in docs/benchmarks.md); the line printed is
exactly click's ``version_option`` line
(``tests/cli/test_startup.py`` compares them). ``hal --help`` and ``hal -h`` are printed
without click too (:mod:`hal9999.cli.root_help`, the page click prints), and so is
``hal task list`` (bare, or with ``--json``, ``--status``, ``--limit``) and ``hal task show
ID`` and ``hal task logs ID`` when they can read the store alone
(:mod:`hal9999.cli.task_rows`, :mod:`hal9999.cli.task_show`, :mod:`hal9999.cli.task_logs`).
``hal run`` through a running ``hal serve`` is parsed by :mod:`hal9999.cli.run_argv` when its
options are ones that parser reads exactly as click would; any other
form, and any run the daemon does not take thinly, goes to click as before.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # `typing` itself is a visible share of `hal --version`'s start
if TYPE_CHECKING:
    from collections.abc import Callable
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import NoReturn

HELP_OPTIONS = ("-h", "--help")
"""``hal --help`` and ``hal -h``: printed by :mod:`hal9999.cli.root_help`, without click
(``tests/cli/test_root_help.py`` checks these are ``command_table.HELP_OPTIONS``)."""
VERSION_LINE = "hal, version {version}\n"
"""What click's ``version_option(prog_name="hal")`` prints."""


def main() -> None:
    """Run ``hal``. Ctrl-C at any point of its start (an import, a click-free answer) ends
    it with ``hal: interrupted`` and status 130, as one during a command does, not with a
    traceback of whichever import it landed in."""
    try:
        _main()
    except KeyboardInterrupt:
        interrupted()


def fill_closed_descriptors() -> None:
    """Put ``/dev/null`` on standard descriptors hal was started without (``>&-``, ``<&-``;
    Python then makes that ``sys`` stream None). Left free, the first file hal opens takes
    the number (``hal.db`` as descriptor 1), and whatever writes to it, hal's own lines or
    a child's output, lands in that file; and ``sys.stdout.isatty()`` (``hal run >&-``),
    ``sys.stdin.buffer`` (every ``hal run <&-``) and ``sys.stdin.isatty()`` (``hal auth
    claude login <&-``) were internal errors. A closed stdin reads as empty."""
    import os

    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
            continue  # taken since the start by a file of the interpreter's: leave it
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        mode = "w" if fd else "r"
        setattr(sys, name, open(fd, mode, encoding="utf-8", errors="replace", closefd=False))


def interrupted() -> NoReturn:
    """Say ``hal: interrupted`` and exit 130 at once: no teardown, no flush at exit (of a
    stream the interrupt may have left mid-write) where a second Ctrl-C could print a
    traceback. (``os`` is imported already: ``site`` imports it.)"""
    import os

    try:
        os.write(2, b"hal: interrupted\n")
    except OSError:
        pass
    os._exit(130)


def _main() -> None:
    if sys.stdout is None or sys.stderr is None or sys.stdin is None:
        fill_closed_descriptors()
    if not sys.platform.startswith("linux") and sys.argv[1:] != ["--version"]:
        off_linux()
    if sys.argv[1:] == ["--version"]:
        from hal9999 import __version__

        exit_after(lambda: sys.stdout.write(VERSION_LINE.format(version=__version__)))
    if len(sys.argv) == 2 and sys.argv[1] in HELP_OPTIONS:
        from hal9999.cli.root_help import print_help

        print_help()
    if sys.argv[1:3] == ["task", "list"]:
        from hal9999.cli.task_rows import list_without_click

        list_without_click(sys.argv[3:])  # exits when it printed the list
    if sys.argv[1:3] == ["task", "show"]:
        from hal9999.cli.task_show import show_without_click

        show_without_click(sys.argv[3:])  # exits when it printed the task
    if sys.argv[1:3] == ["task", "logs"]:
        from hal9999.cli.task_logs import logs_without_click

        logs_without_click(sys.argv[3:])  # exits when it printed the log
    if PYDANTIC_PLUGIN_LOADER not in sys.modules and NoPydanticPlugins not in sys.meta_path:
        sys.meta_path.insert(0, NoPydanticPlugins)
    if sys.argv[1:2] == ["run"]:
        from hal9999.cli.run_argv import run_without_click

        try:
            run_without_click(sys.argv[2:])  # exits when it ran the command
        except SystemExit as done:
            exit_at_once(done)
        except BaseException:
            exit_lightly()
            raise
    from hal9999.cli.main import main as full

    full()


PYDANTIC_PLUGIN_LOADER = "pydantic.plugin._loader"


class NoPydanticPlugins:
    """Finds pydantic's plugin loader as a stand-in whose ``get_plugins()`` finds none: hal
    supports no pydantic plugins.

    pydantic imports its plugin loader at the first model it builds; the loader imports
    :mod:`importlib.metadata` and scans every installed package's entry points for the
    ``pydantic`` group, on every in-process ``hal run``. Not
    ``PYDANTIC_DISABLE_PLUGINS``: the loader honours it but still imports
    :mod:`importlib.metadata`, and the variable would reach the agents' and the daemon's
    children. A finder rather than the stand-in itself, so that a command that never
    imports pydantic has nothing of it. ``tests/cli/test_run_imports.py`` checks that a run
    imports neither."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        """The stand-in's spec for pydantic's plugin loader; None for any other module."""
        if name != PYDANTIC_PLUGIN_LOADER:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, NoPydanticPlugins)  # type: ignore[arg-type]  # a Loader

    @staticmethod
    def create_module(spec: ModuleSpec) -> None:
        """The default module."""

    @staticmethod
    def exec_module(module: ModuleType) -> None:
        """The stand-in: no plugins."""
        module.get_plugins = tuple  # type: ignore[attr-defined]  # tuple() is ()


def off_linux() -> NoReturn:
    """Refuse to run anywhere but Linux, in one line: sandboxes are Linux namespaces, cgroups
    and ``/proc``, and a run elsewhere would fail later and less clearly."""
    from hal9999.cli.app import report_failure
    from hal9999.errors import ConfigError

    error = ConfigError(
        f"hal runs on Linux only, not on {sys.platform}",
        hint="run hal on a Linux host, or in a Linux VM (lima, WSL 2) with hal installed there",
    )
    sys.exit(report_failure(error, as_json="--json" in sys.argv[1:]))


def exit_after(write: Callable[[], object]) -> NoReturn:
    """Run ``write`` (a click-free answer's output to standard output), flush, and exit 0.
    Nobody reading it (`hal --version | true`, `hal task list | head`) ends it quietly with
    status 141, as killed by SIGPIPE, as hal's ``report_failure`` ends the click path: no
    traceback, and no second one when Python flushes the stream at exit."""
    try:
        write()
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + 13)
    except OSError as exc:  # /dev/full, a full disk: one line, as the click path says it
        failed(exc)
    sys.exit(0)


def failed(exc: OSError) -> NoReturn:
    """Report a click-free answer's failed write as every command reports a failure."""
    from hal9999.cli.app import report_failure

    sys.exit(report_failure(exc))


def exit_at_once(done: SystemExit) -> NoReturn:
    """End with ``done``'s status, skipping the interpreter's teardown when it has nothing
    left to do: a status that is a number, no atexit handler but :mod:`logging`'s own (run
    here instead), no other thread but an idle event flusher, no regular file open once the
    stores are closed, and both standard streams flushed. The thin ``hal run`` is such a
    process, and so is an in-process one; the teardown (every module's objects freed one by
    one) would stand between the run's last line and its exit, which the caller waits
    for. Anything else exits as
    usual."""
    import atexit

    code = done.code if type(done.code) is int else 0 if done.code is None else None
    # Registrations so far (an unregistered one still counts in CPython 3.11): one, with
    # logging imported, is logging's own (`logging.shutdown`, registered at its import).
    handlers = getattr(atexit, "_ncallbacks", lambda: 1)()
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    only_logging = handlers == 1 and "logging" in sys.modules and run_handlers is not None
    if code is not None and (handlers == 0 or only_logging) and _alone():
        try:
            _close_stores()
            if run_handlers is not None:
                run_handlers()  # logging's handlers flushed and closed, as at exit
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            files_open = _regular_files_open()
        except BaseException:
            files_open = True  # the usual exit meets it again and reports it (status 120)
        if not files_open:
            import os

            os._exit(code)
    exit_lightly()
    raise done


def _alone() -> bool:
    """No thread left but this one, or the event flusher asleep with nothing to write (a
    daemon thread the usual exit would not wait for either)."""
    threading = sys.modules.get("threading")
    if threading is None:
        return True
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    if not others:
        return True
    flusher = sys.modules.get("hal9999.events.flusher")
    if flusher is None:
        return False
    return all(t is flusher.FLUSHER.thread for t in others) and flusher.FLUSHER.idle()


def _regular_files_open() -> bool:
    """Whether this process still has a regular file open beside its standard streams
    (flushed by the caller): a file object left unclosed may hold buffered writes the
    teardown would flush, so such a process exits as usual."""
    import os
    import stat

    limit = os.sysconf("SC_OPEN_MAX")  # above it: a tool's own (valgrind's), not this program's
    for name in os.listdir("/proc/self/fd"):
        if name in ("0", "1", "2") or int(name) >= limit:
            continue
        try:
            if stat.S_ISREG(os.fstat(int(name)).st_mode):
                return True
        except OSError:  # the listing's own descriptor, closed since
            continue
    return False


def _close_stores() -> None:
    store = sys.modules.get("hal9999.store.sqlite")
    if store is not None:
        store.close_open_stores()


def exit_lightly() -> None:
    """Spare the exit a last garbage collection of every object the command made.

    At exit the interpreter clears each module and then collects every cycle it can find:
    for a foreground ``hal run`` (pydantic's models, the task service, the event loop) that
    would otherwise stand between the summary and the process's end. Objects frozen here
    are left to the operating system instead; everything else about the exit is unchanged:
    atexit handlers (logging's flush), the joining of worker threads, and every object
    freed by its reference count (open files are flushed and closed). Python never
    promised ``__del__`` for objects alive at exit, and nothing hal keeps needs one: what
    must be on disk is written and synced when it is recorded, not at exit. The stores
    still open are closed first (a connection left open would leave the database's pages
    in its WAL, never checkpointed into ``hal.db``)."""
    import gc

    _close_stores()
    gc.freeze()
