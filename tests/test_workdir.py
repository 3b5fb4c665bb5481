"""The thin ``hal run``'s paths as strings (``hal9999.workdir``, ``hal9999.home``'s name
check, ``hal9999.server.runtime.find_running``) are pathlib's and ``re``'s own results
(the thin client imports neither)."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import pytest

from hal9999.errors import HomeError
from hal9999.home import _safe_name
from hal9999.server.runtime import DaemonFiles, DaemonInfo, _exists, find_running
from hal9999.workdir import current_dir, current_path, pure_path, working_dir, working_path

PARTS = [
    ("",), (".",), ("/",), ("//",), ("///",), ("////x",), ("//x/y",), ("/a/b/",), ("a//b/./c",),
    ("/a/../b",), ("./a", "b/"), ("/a", "/b", "c"), ("/a", "//b"), ("/a", ""), ("", "hal.toml"),
    ("/", "hal.toml"), ("/root//x/.", ".local/share"), ("rel", ".config", "hal9999"),
    ("~x", ".local/share"), ("/a", "b/../c", "./", "d"), ("..",), ("/..", ".."),
]  # fmt: skip


@pytest.mark.parametrize("parts", PARTS)
def test_pure_path_is_purepathlibs(parts: tuple[str, ...]) -> None:
    assert pure_path(*parts) == str(PurePosixPath(*parts))


def test_the_working_directory_as_pathlib_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert current_path() == str(Path.cwd()) and current_dir() == Path.cwd()
    assert working_path(None) == str(working_dir(None)) == str(tmp_path)


NAMES = [
    "a", "A9", "9", "bwrap", "a.b_c-d", "a.", "a-", ".a", "_a", "-a", "", " a", "a ", "a\n",
    "a/b", "..", ".", "é", "aé", "a\u0660", "\u0660", "a:b", "a b", "a\x00",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_a_safe_name_is_what_the_pattern_matched(name: str) -> None:
    assert _safe_name(name) == bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name))


def test_find_running_finds_what_daemon_files_find(tmp_path: Path) -> None:
    import fcntl

    home = tmp_path / "h"
    files = DaemonFiles(home)
    assert find_running(str(home)) is None  # nothing there at all
    token = files.ensure_token()
    sock = home / "run" / "hal.sock"
    files.write_info(DaemonInfo(os.getpid(), str(sock), 1, 2.0))
    assert find_running(str(home)) is None  # no socket yet
    sock.touch()
    assert find_running(str(home)) is None and files.running() is None  # the lock is free
    with files.lock():
        assert find_running(str(home) + "/") == (files.running(), token)
        assert files.running() == DaemonInfo(os.getpid(), str(sock), 1, 2.0)
    with (home / "run" / "serve.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (home / "token").write_text("\n")
        # A live daemon without its token is no "not running": a caller would run beside it.
        assert files.read_token() is None
        with pytest.raises(HomeError, match=r"its token file .* is missing or empty"):
            find_running(str(home))


def test_exists_is_pathlibs(tmp_path: Path) -> None:
    (tmp_path / "f").touch()
    for name in ("f", "missing", "f/below", "a\x00b"):
        assert _exists(str(tmp_path / name)) == (tmp_path / name).exists(), name
