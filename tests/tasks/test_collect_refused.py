"""What collection refuses: nothing an agent leaves in its home reaches the host by a path
the agent can redirect (the patch and bundle leave by fd), and no result line the agent
forged is believed.

A leftover agent process is played by a hook that runs on the host right after the collect
script and before the host copies the results: it swaps what the script wrote for a
symlink, a dangling symlink, a directory, a FIFO or a hard link to a host file. The session
lives on the test's tmp filesystem, or on /dev/shm with the host target on tmp.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.tasks.conftest import Hook, HostileSandbox, World, git, run_collect

from hal9999.errors import RepoError, UnsafePath


def _symlink_to_secret(w: World) -> Hook:
    return lambda out: _replace(out / "result.patch", lambda p: p.symlink_to(w.host_secret()))


def _dangling_to_host(w: World) -> Hook:
    return lambda out: _replace(out / "result.bundle", lambda p: p.symlink_to(w.host / "planted"))


def _directory(w: World) -> Hook:
    return lambda out: _replace(out / "result.patch", lambda p: p.mkdir())


def _fifo(w: World) -> Hook:
    return lambda out: _replace(out / "result.patch", os.mkfifo)


def _hardlink(w: World) -> Hook:
    def plant(out: Path) -> None:
        secret = w.host_secret()

        def link(p: Path) -> None:
            try:
                os.link(secret, p)
            except OSError:  # across filesystems: a second link to a file of the agent's
                (out / "twin").write_text("agent")
                os.link(out / "twin", p)

        _replace(out / "result.patch", link)

    return plant


def _result_dir_link(w: World) -> Hook:
    """The whole result directory swapped for a link to a host directory."""

    def plant(out: Path) -> None:
        (w.host / "decoy").mkdir(exist_ok=True)
        (w.host / "decoy" / "result.patch").write_text("decoy patch with host data\n")
        os.rename(out, out.with_name("moved"))
        out.symlink_to(w.host / "decoy")

    return plant


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


HOSTILE = {
    "symlink": _symlink_to_secret,
    "dangling-symlink": _dangling_to_host,
    "directory": _directory,
    "fifo": _fifo,
    "hardlink": _hardlink,
    "result-dir-link": _result_dir_link,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE))
async def test_a_swap_after_the_script_never_reaches_the_host(
    world: tuple[World, HostileSandbox], shape: str
) -> None:
    w, sandbox = world
    (w.session.workspace / "a.txt").write_text("two\n")
    sandbox.hook = HOSTILE[shape](w)
    with pytest.raises(UnsafePath) as caught:
        await run_collect(w, sandbox)
    assert caught.value.hint is not None and str(w.session.workspace) in caught.value.hint
    for name in ("result.patch", "result.bundle"):
        path = w.session.root / name
        assert not path.is_symlink()
        if path.exists():
            assert b"host" not in path.read_bytes()
    assert not (w.host / "planted").exists()
    if (w.host / "shadow").exists():
        assert (w.host / "shadow").read_text() == "host-only secret\n"
    assert not list(w.session.home.glob(".hal-result-*"))


async def test_a_planted_old_staging_name_is_ignored(world: tuple[World, HostileSandbox]) -> None:
    """The name the host used to move from means nothing any more."""
    w, sandbox = world
    target = w.host / "target"
    target.mkdir()
    (w.session.home / ".hal-result.bundle").symlink_to(target)
    w.session.bundle.unlink(missing_ok=True)
    (w.session.workspace / "a.txt").write_text("two\n")
    await run_collect(w, sandbox)
    assert list(target.iterdir()) == []
    assert w.session.bundle.is_file() and not w.session.bundle.is_symlink()


class ForgingSandbox(HostileSandbox):
    """The agent took the collect script over (a clean filter of its checkout's config runs
    inside the script's sandbox as the agent's uid, which may ptrace the script): the real
    script runs, then its stdout is the agent's and its exit status 0."""

    forged = b""

    async def exec(self, *args: Any, **kw: Any) -> Any:
        result = await super().exec(*args, **kw)
        return type(result)(exit_code=0, stdout=self.forged, stderr=result.stderr)


@pytest.mark.parametrize(
    "line",
    [
        "{head} 0 \u00b2",  # str.isdigit() but not int()
        "{head} 0 " + "9" * 5000,  # past int()'s digit limit
        "{head} 0 99999999999999999999999",  # past SQLite's INTEGER
        "{head} 1 \u0661",  # an Arabic-Indic one: int() takes it, no script prints it
        "HEAD~1 0 0",
        "{head}\x00 0 0",
        "{head} 2 0",
        "{head} 0 0 unchanged",  # the work committed, yet "unchanged": not the base
        "{head} 0 0 unchanged extra",
        "",
    ],
)
async def test_a_forged_result_line_is_refused_in_one_line(
    world: tuple[World, HostileSandbox], line: str
) -> None:
    w, hostile = world
    sandbox = ForgingSandbox(hostile._inner, w.session.home)
    (w.session.workspace / "a.txt").write_text("two\n")
    git(w.session.workspace, "commit", "-qam", "work")
    head = git(w.session.workspace, "rev-parse", "HEAD")
    sandbox.forged = (line.format(head=head) + "\n").encode()
    with pytest.raises(RepoError) as caught:
        await run_collect(w, sandbox)  # type: ignore[arg-type]
    assert "\n" not in caught.value.message
    assert str(w.session.workspace) in (caught.value.hint or "")


async def test_unchanged_is_believed_only_for_the_base_and_never_for_a_whole_bundle(
    world: tuple[World, HostileSandbox],
) -> None:
    w, hostile = world
    sandbox = ForgingSandbox(hostile._inner, w.session.home)
    sandbox.forged = f"{w.base} 0 0 unchanged\n".encode()
    result = await run_collect(w, sandbox)  # type: ignore[arg-type]
    assert result.head == w.base and result.bundle_bytes is None
    with pytest.raises(RepoError):
        await run_collect(w, sandbox, full=True)  # type: ignore[arg-type]
