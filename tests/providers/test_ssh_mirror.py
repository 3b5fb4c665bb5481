"""The host side of a pull (``providers/ssh/mirror.py``): what a forged tar stream gets.

The stream is the agent's: on a host without bwrap (``isolation = "none"`` or
``"disposable"``) it is the ssh user, and ``~/.ssh/rc`` writes ahead of every command's
output, so the tar hal unpacks need not be one ``tar -c`` made
(``test_ssh.py::test_a_bare_agent_forging_the_pull_stream_writes_no_host_file``).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.ssh import _add, realpath_overflow

from hal9999 import agentfs
from hal9999.errors import ExecError
from hal9999.providers.base import StreamEvent
from hal9999.providers.ssh import mirror


def _unpack(data: bytes, target: Path) -> None:
    spool = io.BytesIO(data)
    mirror.unpack_into(spool, target)


def test_a_realpath_overflow_archive_writes_nothing_outside_the_target(tmp_path: Path) -> None:
    home = tmp_path / "home"
    target = home / "sessions" / "t1" / "workspace"
    target.mkdir(parents=True)
    victim = home / "victim"
    victim.write_text("host file\n")
    dest = str(target.parent / f".{target.name}.hal-pull-12345678")
    _unpack(realpath_overflow(dest, ups=3), target)
    assert [p for p in tmp_path.rglob("pwned") if target not in p.parents] == []
    assert victim.read_text() == "host file\n"
    assert victim.stat().st_nlink == 1
    assert not (target / "escape").is_symlink()  # a link out of the tree is left out
    assert (target / "hardlinked").stat().st_nlink == 1  # the later plain file only
    assert sorted(p.name for p in target.parent.iterdir()) == ["workspace"]  # no leftovers


def _tar(*members: tuple[str, bytes, str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, link, data in members:
            _add(archive, name, kind=kind, link=link, data=data)
    return buffer.getvalue()


def test_a_link_an_earlier_member_made_is_never_extracted_through(tmp_path: Path) -> None:
    target = tmp_path / "s" / "workspace"
    target.mkdir(parents=True)
    # "x" a link (to a directory of the tree: were it out of the tree, the data filter's
    # check is what a longer chain fools), then a directory "x" (tarfile keeps the link and
    # chmods "x" through it at the end) and a file below it; "y" a link then a file of that
    # name (written through it); "..", a hard link to a link, a link stepping back from one.
    data = _tar(
        ("keep", tarfile.DIRTYPE, "", b""),
        ("x", tarfile.SYMTYPE, "keep", b""),
        ("x", tarfile.DIRTYPE, "", b""),
        ("x/f", tarfile.REGTYPE, "", b"through x\n"),
        ("y", tarfile.SYMTYPE, "keep/z", b""),
        ("y", tarfile.REGTYPE, "", b"through y\n"),
        ("keep/../keep/w", tarfile.REGTYPE, "", b"dotdot\n"),
        ("h", tarfile.LNKTYPE, "x", b""),
        ("up", tarfile.SYMTYPE, "x/..", b""),
        ("dot", tarfile.SYMTYPE, ".", b""),
        ("up2", tarfile.SYMTYPE, "dot/dot/..", b""),
        ("missing", tarfile.LNKTYPE, "nowhere", b""),
    )
    before = (target.parent / "x").exists()
    _unpack(data, target)
    assert not before
    assert sorted(p.name for p in target.iterdir()) == ["dot", "keep", "x", "y"]
    assert list((target / "keep").iterdir()) == []  # nothing written through x or y
    assert (target / "keep").stat().st_mode & 0o777 == 0o755
    assert os.readlink(target / "x") == "keep" and os.readlink(target / "y") == "keep/z"


def test_what_tar_makes_of_a_checkout_comes_back_whole(tmp_path: Path) -> None:
    # Links inside the tree, a link to a directory, hard links: as `tar -c` writes them.
    target = tmp_path / "s" / "workspace"
    target.mkdir(parents=True)
    data = _tar(
        ("src", tarfile.DIRTYPE, "", b""),
        ("src/a.py", tarfile.REGTYPE, "", b"print(1)\n"),
        ("lib", tarfile.SYMTYPE, "src", b""),
        ("src/b.py", tarfile.LNKTYPE, "src/a.py", b""),
        ("c.py", tarfile.LNKTYPE, "src/a.py", b""),
        ("./d", tarfile.DIRTYPE, "", b""),
        ("./d/e", tarfile.REGTYPE, "", b"e\n"),
    )
    _unpack(data, target)
    assert os.readlink(target / "lib") == "src"
    assert (target / "lib" / "a.py").read_text() == "print(1)\n"
    assert (target / "src" / "b.py").stat().st_ino == (target / "src" / "a.py").stat().st_ino
    assert (target / "c.py").stat().st_ino == (target / "src" / "a.py").stat().st_ino
    assert (target / "d" / "e").read_text() == "e\n"


def test_a_deep_tree_from_an_earlier_pull_is_removed_without_recursion(tmp_path: Path) -> None:
    target = tmp_path / "s" / "workspace"
    target.mkdir(parents=True)
    deep = _tar(*((("a/" * n).rstrip("/"), tarfile.DIRTYPE, "", b"") for n in range(1, 1100)))
    try:
        _unpack(deep, target)
        _unpack(_tar(("f", tarfile.REGTYPE, "", b"next\n")), target)  # the deep tree is old
        assert sorted(p.name for p in target.parent.iterdir()) == ["workspace"]
        assert [p.name for p in target.iterdir()] == ["f"]
    finally:  # whatever is left: not for pytest's recursive cleanup of old temporary dirs
        agentfs.remove_tree(target.parent)


def test_devices_owners_and_high_mode_bits_never_reach_the_host(tmp_path: Path) -> None:
    target = tmp_path / "s" / "workspace"
    target.mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind in (("null", tarfile.CHRTYPE), ("disk", tarfile.BLKTYPE),
                           ("fifo", tarfile.FIFOTYPE)):  # fmt: skip
            member = tarfile.TarInfo(name)
            member.type, member.devmajor, member.devminor = kind, 1, 3
            archive.addfile(member)
        member = tarfile.TarInfo("/abs/suid")
        member.mode, member.uid, member.gid, member.size = 0o6777, 0, 0, 2
        archive.addfile(member, io.BytesIO(b"x\n"))
    _unpack(buffer.getvalue(), target)
    assert sorted(p.name for p in target.iterdir()) == ["abs"]  # the name made relative
    suid = (target / "abs" / "suid").stat()
    assert suid.st_mode & 0o7777 == 0o755 and suid.st_uid == os.getuid()


def test_a_sparse_member_never_makes_a_huge_host_file(tmp_path: Path) -> None:
    # An old GNU sparse header: one 512-byte block of data, a real size of 64 GiB. The next
    # push would read all of it back (tarfile archives no hole), over the ssh connection.
    header = bytearray(tarfile.TarInfo("big").tobuf(tarfile.GNU_FORMAT, "utf-8", "strict"))
    real = 64 << 30

    def number(value: int) -> bytes:
        return b"\x80" + value.to_bytes(11, "big")  # base-256, as GNU tar writes big ones

    header[124:136] = number(512)
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:410] = number(real - 512) + number(512)
    header[483:495] = number(real)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    target = tmp_path / "s" / "workspace"
    target.mkdir(parents=True)
    _unpack(bytes(header[:512]) + b"x" * 512 + b"\0" * 1024, target)
    assert list(target.iterdir()) == []


async def test_a_deep_tree_is_pushed_whole_and_a_failing_push_never_hangs(
    tmp_path: Path,
) -> None:
    # What a pull brought back (here 1,100 levels) goes out again on a resume: tarfile's own
    # recursion ran out of stack in the producer thread, and the push waited for ever.
    import asyncio

    source = tmp_path / "workspace"
    source.mkdir()
    fd = os.open(source, os.O_RDONLY)
    for _ in range(1100):
        os.mkdir("a", dir_fd=fd)
        inner = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)

    async def pushed() -> bytes:
        return b"".join([chunk async for chunk in mirror.pack_stream(source)])

    try:
        data = await asyncio.wait_for(pushed(), 60)
    finally:  # not left to pytest's recursive cleanup of old temporary directories
        agentfs.remove_tree(source)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
    assert len(names) == 1100 and max(names, key=len) == "/".join(["a"] * 1100)


def _socket_at(path: Path) -> int:
    """A unix socket file at ``path`` (bound at a short name, renamed there: a socket's
    path is limited to 107 bytes); its inode."""
    import socket
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(f"{short}/s")
            os.rename(f"{short}/s", path)
        finally:
            server.close()  # dead: nothing answers there any more
    return path.lstat().st_ino


async def test_fifos_devices_and_sockets_never_go_out(tmp_path: Path) -> None:
    source = tmp_path / "workspace"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_text("kept\n")
    os.symlink("sub/file", source / "link")
    os.mkfifo(source / "fifo")
    _socket_at(source / "sock")
    if os.geteuid() == 0:  # a copy of /dev/null; a root ssh user's tar would make it again
        os.mknod(source / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for data in (b"".join([chunk async for chunk in mirror.pack_stream(source)]),
                 mirror.pack(source)):  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            assert sorted(archive.getnames()) == ["link", "sub", "sub/file"]


def test_a_push_keeps_only_the_sockets_hal_forwards(tmp_path: Path) -> None:
    # The remote side of a push, run here: the mirror a pooled sandbox's last task left (its
    # agent's socket at the top) is replaced by the next task's tree; the gateway's socket,
    # forwarded there, stays at its place; the agent's goes with the old tree.
    import subprocess

    host = tmp_path / "host"
    host.mkdir()
    (host / "task.txt").write_text("task two\n")
    _socket_at(host / "llm.sock")
    remote = tmp_path / "remote" / "workspace"
    remote.mkdir(parents=True)
    (remote / "task.txt").write_text("task one\n")
    forwarded = _socket_at(remote / "llm.sock")
    _socket_at(remote / "agent.sock")
    argv = mirror.push_argv(str(remote), host)
    done = subprocess.run(argv, input=mirror.pack(host), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in remote.iterdir()) == ["llm.sock", "task.txt"]
    assert (remote / "llm.sock").lstat().st_ino == forwarded, "the forwarded socket moved"
    assert (remote / "task.txt").read_text() == "task two\n"
    assert sorted(p.name for p in remote.parent.iterdir()) == ["workspace"]


async def _events(data: bytes, code: int = 0) -> AsyncIterator[StreamEvent]:
    for start in range(0, len(data), 65536):
        yield StreamEvent("stdout", data[start : start + 65536])
    yield StreamEvent("exit", exit_code=code)


async def test_a_pull_is_bounded_by_the_sandbox_s_disk_limit(tmp_path: Path) -> None:
    import pytest

    session = tmp_path / "session"
    target = session / "workspace"
    target.mkdir(parents=True)
    (target / "kept").write_text("the last pull's\n")
    limit = mirror.pull_limit(1)
    assert limit < 3 << 20 and mirror.pull_limit(0) == mirror.pull_limit(None) == 4 << 30
    big = _tar(("big", tarfile.REGTYPE, "", os.urandom(3 << 20)))
    # Many members du counts as nothing: empty files under long names (a PAX record each).
    many = _tar(*[(f"{i:06d}" + "n" * 200, tarfile.REGTYPE, "", b"") for i in range(3000)])
    for data in (big, many):
        assert len(data) > limit
        with pytest.raises(ExecError, match="over the sandbox's disk limit of 1 MiB"):
            await mirror.pull_into(_events(data), "/workspace", target, 1)
        assert [p.name for p in target.iterdir()] == ["kept"]
        assert [p.name for p in session.iterdir()] == ["workspace"]  # no spool, no tree
    # The same stream with no disk limit (0) comes back, up to the flat bound.
    await mirror.pull_into(_events(big), "/workspace", target, 0)
    assert [p.name for p in target.iterdir()] == ["big"]
    assert [p.name for p in session.iterdir()] == ["workspace"]


def _pax(records: dict[bytes, bytes], *, then: str = "f") -> bytes:
    """A pax extended header holding ``records`` as written, before a 3-byte file ``then``."""
    body = b""
    for key, value in records.items():
        record = b" " + key + b"=" + value + b"\n"
        length = len(record) + 1
        while len(str(length)) + len(record) != length:
            length += 1
        body += str(length).encode() + record
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo(then)
    member.size = 3
    pad = b"\0" * (-len(body) % tarfile.BLOCKSIZE)
    return (header.tobuf(tarfile.USTAR_FORMAT) + body + pad + member.tobuf(tarfile.USTAR_FORMAT)
            + b"abc".ljust(tarfile.BLOCKSIZE, b"\0") + b"\0" * 1024)  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("records", "why"),
    [
        # CVE-2024-6232: tarfile's `\d+ hdrcharset=` search is quadratic in a run of
        # digits (16 KB: 0.4 s; this one, hours of the daemon's GIL before 3.11.10).
        ({b"comment": b"1" * 500_000}, "runs of digits"),
        ({b"comment": b"1 " * (mirror.MAX_NAME_HEADER // 2)}, "extended header of"),
        # A sparse map tarfile reads to the stream's end, or fails with a ValueError.
        ({b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0"}, "sparse"),
        ({b"GNU.sparse.size": b"x"}, "sparse"),
        # Values tarfile takes and no file can: a traceback, not a refusal, before.
        ({b"mtime": b"1e400"}, "time_t"),
        ({b"mtime": b"nan"}, "NaN"),
        ({b"hdrcharset": b"\xff"}, "decode"),
    ],
)
def test_a_forged_extended_header_fails_the_pull_in_one_line(
    tmp_path: Path, records: dict[bytes, bytes], why: str
) -> None:
    target = tmp_path / "s" / "workspace"
    target.mkdir(parents=True)
    (target / "kept").write_text("the last pull's\n")
    with pytest.raises(ExecError, match=why):
        _unpack(_pax(records), target)
    assert [p.name for p in target.iterdir()] == ["kept"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["workspace"]


def test_pax_headers_of_a_real_tree_come_back_whole(tmp_path: Path) -> None:
    # Names of digits as long as a file system allows, and a path past the ustar fields:
    # what a pax-format tar of a real tree holds, within every bound.
    host = tmp_path / "host"
    deep = host / ("7" * 255) / ("8" * 255)
    deep.mkdir(parents=True)
    for n in range(200):
        (deep / f"{n:0255d}").write_text(f"{n}\n")
    target = tmp_path / "s" / "workspace"
    target.mkdir(parents=True)
    _unpack(mirror.pack(host), target)
    back = target / ("7" * 255) / ("8" * 255)
    assert sorted(p.name for p in back.iterdir()) == [f"{n:0255d}" for n in range(200)]
    assert (back / f"{199:0255d}").read_text() == "199\n"
