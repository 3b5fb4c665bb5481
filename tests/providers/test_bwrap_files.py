"""A bwrap sandbox's own files on the host: the curated /etc view its commands bind, the
read-only files every sandbox shares, and the inodes a create, a start and a reset make
(each dear on some hosts), with what a create cut short leaves."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from tests import inodes

from hal9999.providers.bwrap import etc as hostetc
from hal9999.providers.bwrap.provider import BwrapProvider, BwrapSandbox
from hal9999.providers.host import user as sandboxuser
from hal9999.spec import ArgvCommand, Bind, SandboxSpec, ShellCommand


def test_the_view_follows_the_host_and_copies_only_the_curated_entries(tmp_path: Path) -> None:
    host = tmp_path / "etc"
    host.mkdir()
    (host / "hosts").write_text("127.0.0.1 one\n")
    (host / "shadow").write_text("root:secret\n")
    (host / "ssl").mkdir()
    (host / "ssl" / "cert.pem").write_text("cert")
    (host / "localtime").symlink_to(host / "hosts")
    os.mkfifo(host / "services")
    view = hostetc.EtcView(tmp_path / "state", source=host)
    first, dirs = view.current()
    assert dirs == ["ssl"]
    assert sorted(p.name for p in first.iterdir()) == ["hosts", "localtime", "ssl"]
    assert (first / "hosts").read_text() == "127.0.0.1 one\n"
    assert not (first / "localtime").is_symlink()  # followed, as a bind mount does
    assert list((first / "ssl").iterdir()) == []  # a mount point: bound live from the host
    assert view.current()[0] == first  # unchanged host: the same copy, not a new one
    (host / "hosts").write_text("127.0.0.1 two\n")
    second, _ = view.current()
    assert second != first and (second / "hosts").read_text() == "127.0.0.1 two\n"
    (host / "gitconfig").write_text("[user]\n")
    third, _ = view.current()
    assert (third / "gitconfig").read_text() == "[user]\n"


def test_an_unchanged_host_costs_the_view_its_stats_and_one_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = tmp_path / "etc"
    (host / "ssl").mkdir(parents=True)
    (host / "hosts").write_text("one\n")
    view = hostetc.EtcView(tmp_path / "state", source=host)
    first = view.current()
    hashes: list[object] = []
    real = hostetc.hashlib.sha256
    monkeypatch.setattr(hostetc.hashlib, "sha256", lambda *a: hashes.append(a) or real(*a))
    marks: list[object] = []
    monkeypatch.setattr(hostetc.os, "utime", lambda *a: marks.append(a))
    for _ in range(5):
        assert view.current() == first
    # Every command stats the curated entries and marks its copy in use; the name is hashed
    # again only once they change (it was hashed on every command).
    assert hashes == [] and len(marks) == 5
    assert view.current(accounts=True)[0] != first[0] and len(hashes) == 1
    (host / "hosts").write_text("two\n")
    monkeypatch.undo()
    changed = view.current()
    assert changed[0] != first[0] and (changed[0] / "hosts").read_text() == "two\n"


def test_copies_unused_for_a_while_are_removed_and_the_one_in_use_kept(tmp_path: Path) -> None:
    host = tmp_path / "etc"
    host.mkdir()
    (host / "hosts").write_text("one\n")
    view = hostetc.EtcView(tmp_path / "state", source=host)
    old, _ = view.current()
    recent = view.root / "recent-other-process"
    recent.mkdir()
    stale = time.time() - hostetc.KEEP - 60
    os.utime(old, (stale, stale))
    (host / "hosts").write_text("two\n")
    new, _ = view.current()
    assert new.is_dir() and not old.exists()  # unused for longer than KEEP
    assert recent.is_dir()  # marked in use lately (by another process): kept


def test_the_copies_live_outside_the_providers_state(tmp_path: Path) -> None:
    # `sandboxes/<name>/` holds only sandboxes and `sandboxes/` only providers (recovery and
    # `hal sandbox list` take each entry for one).
    home = tmp_path / "home"
    assert hostetc.root_for(home / "sandboxes" / "bwrap") == home / "cache" / "bwrap-etc"
    assert hostetc.root_for(tmp_path / "state") == tmp_path / "state" / hostetc.DIR
    assert hostetc.shared_for(home / "sandboxes" / "bwrap") == home / "cache" / "bwrap-shared"
    assert hostetc.shared_for(tmp_path / "state") == tmp_path / "state" / hostetc.SHARED_DIR


async def test_the_files_sandboxes_share_live_outside_the_providers_state(
    tmp_path: Path,
) -> None:
    # The filter and the uid switch every sandbox uses are not entries of `sandboxes/bwrap/`,
    # during or after; a sandbox has no copy or link of its own.
    state = tmp_path / "home" / "sandboxes" / "bwrap"
    provider = BwrapProvider(state_dir=state)
    if provider._program is None:
        pytest.skip("no seccomp filter on this host")
    box = await provider.create(SandboxSpec(provider="bwrap"))
    try:
        assert sorted(p.name for p in state.iterdir()) == [box.id]
        shared = tmp_path / "home" / "cache" / "bwrap-shared"
        assert provider.seccomp_file is not None and provider.seccomp_file.parent == shared
        assert provider.seccomp_file.read_bytes() == provider._program
        launch = box.launch(ArgvCommand(argv=("true",)))
        assert str(provider.seccomp_file) in launch.argv  # what the launcher opens
        if sandboxuser.privileged() and provider.drop_helper is not None:
            assert provider.drop_file.parent == shared
            assert provider.drop_file.name.startswith("hal-drop-")  # one name a version
            assert os.path.samestat(
                os.stat(provider.drop_file), os.stat(provider.drop_helper)
            )  # a link to the built one (a copy across filesystems)
        assert sorted(p.name for p in provider.store.dir(box.id).iterdir()) == [
            "home", "sandbox.json", "tmp", "workspace",
        ]  # fmt: skip
    finally:
        await provider.destroy(box.id)
    assert list(state.iterdir()) == []


@pytest.mark.bwrap
async def test_a_start_leaves_the_shared_files_alone_and_mends_a_changed_one(
    hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    (tmp_path / "ws").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "ws"))
    try:
        shared = provider.shared
        before = {p.name: p.stat().st_ino for p in shared.iterdir()}
        replaced: list[object] = []
        real = os.replace
        monkeypatch.setattr(os, "replace", lambda a, b: replaced.append(b) or real(a, b))
        monkeypatch.setattr(BwrapSandbox, "__init__", lambda *a: pytest.fail("a handle"))
        # Every pool reset starts the sandbox again: its filter and uid switch were each
        # rewritten (and a whole handle made for its mount list).
        provider.prepare_dirs(provider.store.load(box.id))
        assert replaced == []
        assert {p.name: p.stat().st_ino for p in shared.iterdir()} == before
        monkeypatch.undo()
        if provider.seccomp_file is not None:
            # Replaced, never written in place: a command opening it meanwhile reads either.
            old = provider.seccomp_file.stat().st_ino
            provider.seccomp_file.chmod(0o644)
            provider.seccomp_file.write_bytes(b"changed")
            provider.prepare_dirs(provider.store.load(box.id))
            assert provider.seccomp_file.read_bytes() == provider._program
            assert provider.seccomp_file.stat().st_ino != old
            assert oct(provider.seccomp_file.stat().st_mode & 0o777) == oct(0o444)
        assert (await box.exec(ArgvCommand(argv=("true",)))).ok
    finally:
        await provider.destroy(box.id)


@pytest.mark.bwrap
async def test_a_create_makes_only_the_inodes_it_needs(hal_home: Path, tmp_path: Path) -> None:
    # Each inode made is dear on some hosts. One save of the record (its
    # uid and cgroup named before either is made), the filter and the uid switch the
    # provider's shared files, the account files bwrap's own (through the launcher's pipes),
    # and no own home where a bind is the home (a task's): its directory, record and tmp.
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    home = Bind(source=tmp_path / "home", target="/home/hal", read_only=False)
    spec = SandboxSpec(workspace=tmp_path / "ws", binds=(home,))
    first = await provider.create(spec)  # makes the state dir's shared files
    try:
        with inodes.created(hal_home) as made:
            box = await provider.create(spec)
        try:
            # Nothing anywhere else in the HAL_HOME either (the shared files were made).
            own = [box.id, *(os.path.join(box.id, n) for n in (".sandbox.json.<tmp>", "tmp"))]
            state = os.path.relpath(provider.state_dir, hal_home)
            assert inodes.steady(made) == sorted(os.path.join(state, n) for n in own)
            assert (await box.exec(ArgvCommand(argv=("true",)))).ok
        finally:
            await provider.destroy(box.id)
    finally:
        await provider.destroy(first.id)


@pytest.mark.bwrap
async def test_a_create_cut_short_after_its_one_save_leaves_what_destroy_undoes(
    hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one save comes before the cgroup is made: a hal killed after making it (no
    # cleanup of its own ran) leaves a record that names it, and its uid.
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    if provider.cgroup_host() is None:
        pytest.skip("no writable cgroup hierarchy")
    (tmp_path / "ws").mkdir()
    destroy = provider.destroy
    monkeypatch.setattr(provider, "destroy", lambda sandbox_id: asyncio.sleep(0))

    class Killed(BaseException):
        pass

    def killed(record: object) -> None:
        raise Killed

    monkeypatch.setattr(provider, "prepare_dirs", killed)
    with pytest.raises(Killed):
        await provider.create(SandboxSpec(workspace=tmp_path / "ws"))
    (sandbox_id,) = [p.name for p in provider.state_dir.iterdir() if not p.name.startswith(".")]
    record = provider.store.load(sandbox_id)
    cgroup = provider.cgroup(record)
    assert cgroup is not None and cgroup.exists()
    await destroy(sandbox_id)
    assert not cgroup.exists()
    assert not provider.store.dir(sandbox_id).exists()
    if record.uid is not None:
        assert not (sandboxuser.LOCK_DIR / str(record.uid)).exists()


@pytest.mark.bwrap
async def test_a_stop_and_reset_make_one_record_file_and_a_fresh_tmp_if_used(
    hal_home: Path, tmp_path: Path
) -> None:
    # The pool stops a sandbox, then resets it (a start): the start takes back the
    # running record the stop kept, by a rename, rather than writing a new file; a tmp no
    # command changed is kept, one a command wrote to is made anew.
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    (tmp_path / "ws").mkdir()
    (tmp_path / "home").mkdir()
    home = Bind(source=tmp_path / "home", target="/home/hal", read_only=False)
    box = await provider.create(SandboxSpec(workspace=tmp_path / "ws", binds=(home,)))
    try:
        running = provider.store.path(box.id).read_bytes()
        with inodes.created(provider.state_dir) as made:
            await provider.stop(box.id)
            assert provider.store.load(box.id).state == "stopped"
            await provider.reset(box.id)
        assert inodes.steady(made) == [os.path.join(box.id, ".sandbox.json.<tmp>")]
        assert provider.store.path(box.id).read_bytes() == running
        assert not (provider.store.dir(box.id) / ".previous.json").exists()
        assert (await box.exec(ArgvCommand(argv=("touch", "/tmp/used")))).ok
        with inodes.created(provider.state_dir) as made:
            await provider.stop(box.id)
            await provider.reset(box.id)
        expect = (".sandbox.json.<tmp>", "tmp")
        assert inodes.steady(made) == sorted(os.path.join(box.id, n) for n in expect)
        assert not os.listdir(provider.store.dir(box.id) / "tmp")
        await provider.stop(box.id)  # a start with a changed record writes it anew
        record = provider.store.load(box.id).model_copy(update={"state": "running"})
        provider.store.save(record.model_copy(update={"created_at": 1.0}))
        assert provider.store.load(box.id).created_at == 1.0
    finally:
        await provider.destroy(box.id)


@pytest.mark.bwrap
async def test_a_command_makes_the_shared_files_again_when_the_cache_was_emptied(
    hal_home: Path, tmp_path: Path
) -> None:
    # The filter and the uid switch are the provider's files, not the sandbox's: a cache
    # removed by hand under a live sandbox costs its next command a rewrite, not a failure.
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    (tmp_path / "ws").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "ws"))
    try:
        made = sorted(p.name for p in provider.shared.iterdir())
        shutil.rmtree(provider.shared)
        result = await box.exec(ShellCommand(script="id -un"))
        assert result.ok, result.text()
        assert sorted(p.name for p in provider.shared.iterdir()) == made
    finally:
        await provider.destroy(box.id)
