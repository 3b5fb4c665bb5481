"""fs: atomic writes (exclusive temp name, fsync, rename) and the one rename, with real files
and real processes: concurrent writers never tear a file or share a temp, and a writer that
fails or dies between its write and its rename leaves the old content."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hal9999 import fs
from hal9999.pool.slots import SlotDir

WRITER = """
import sys
from hal9999 import fs
path, byte, rounds = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
for _ in range(rounds):
    fs.write_bytes(path, byte * 200_000, durable=False)
"""


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_concurrent_writers_never_tear_the_file_nor_share_a_temp(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"a" * 200_000)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(target), byte, "150"])
        for byte in ("b", "c", "d")
    ]
    seen: set[bytes] = set()
    while any(w.poll() is None for w in writers):
        data = target.read_bytes()
        assert len(data) == 200_000 and data == data[:1] * 200_000, "a torn file"
        seen.add(data[:1])
    assert [w.wait() for w in writers] == [0, 0, 0]
    assert target.read_bytes()[:1] in b"bcd"
    assert _entries(tmp_path) == ["file"]  # no temp left behind


SLOT_WRITER = """
import sys
from pathlib import Path
from hal9999.pool.slots import SlotDir
slots, name = SlotDir(Path(sys.argv[1])), sys.argv[2]
for i in range(300):
    slots.set_own_warm({name, f"{name}{i % 7}"})
"""


def test_two_processes_recording_the_same_file_both_succeed(tmp_path: Path) -> None:
    # A fixed temp name was shared: one writer renamed it away under the other, whose
    # rename then failed (FileNotFoundError) after writing into the file in place.
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", SLOT_WRITER, str(tmp_path), name], stderr=subprocess.PIPE
        )
        for name in ("bwrap", "docker")
    ]
    said = [w.communicate()[1].decode() for w in writers]
    assert [w.returncode for w in writers] == [0, 0], said
    warm = SlotDir(tmp_path).own_warm()
    assert len(warm) == 2 and ({"bwrap", "docker"} & warm), warm
    assert [n for n in _entries(tmp_path) if n != "own-warm"] == [], _entries(tmp_path)


def test_a_failure_between_write_and_rename_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    fs.write_text(target, "old\n")
    with pytest.raises(RuntimeError), fs.atomic(target) as out:
        out.write(b"new, half")
        raise RuntimeError("the writer fails before it is done")
    assert target.read_text() == "old\n"
    assert _entries(tmp_path) == ["secret"]
    # A rename that fails (the target is a directory) removes the temp too.
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").touch()
    with pytest.raises(OSError):
        fs.write_text(tmp_path / "dir", "over a directory")
    assert _entries(tmp_path) == ["dir", "secret"]


DYING = """
import os, sys, time
from hal9999 import fs
with fs.atomic(sys.argv[1]) as out:
    out.write(b"new " * 1000)
    os.write(1, b"written\\n")
    time.sleep(600)
"""


def test_a_writer_killed_before_its_rename_leaves_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "state"
    fs.write_text(target, "old")
    child = subprocess.Popen([sys.executable, "-c", DYING, str(target)], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"written\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert target.read_text() == "old"
    # What a kill -9 leaves is hidden and named as a temp, for sweeps to find.
    left = [n for n in _entries(tmp_path) if n != "state"]
    assert all(n.startswith(".state.") and n.endswith(fs.TEMP_SUFFIX) for n in left), left


def test_modes_are_exact_or_the_umask_s(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fs.write_text(tmp_path / "private", "k")
        fs.write_text(tmp_path / "shared", "k", mode=0o444)
        fs.write_text(tmp_path / "plain", "k", mode=None)
        os.umask(0o077)
        fs.write_text(tmp_path / "plain2", "k", mode=None)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"private": 0o600, "shared": 0o444, "plain": 0o644, "plain2": 0o600}


def test_a_link_at_the_target_is_replaced_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").symlink_to(outside)
    fs.write_json(tmp_path / "d" / "f", {"a": 1}, indent=2)
    assert outside.read_text() == "keep"
    assert not (tmp_path / "d" / "f").is_symlink()
    assert (tmp_path / "d" / "f").read_text() == '{\n  "a": 1\n}'


def test_links_are_swapped_atomically(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fs.symlink(tmp_path / "a", tmp_path / "cur")
    fs.symlink(tmp_path / "b", tmp_path / "cur")
    assert os.readlink(tmp_path / "cur") == str(tmp_path / "b")
    fs.hardlink(tmp_path / "cur", tmp_path / "also")  # the symlink itself
    assert (tmp_path / "also").lstat().st_ino == (tmp_path / "cur").lstat().st_ino
    assert _entries(tmp_path) == ["a", "also", "b", "cur"]


def test_writes_relative_to_a_directory_fd(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fs.write_chunks("f", iter([b"ab", b"cd"]), dir_fd=fd) == 4
        fs.replace("f", "g", durable=True, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    assert _entries(tmp_path) == ["g"] and (tmp_path / "g").read_bytes() == b"abcd"


def test_the_supervisor_can_import_it_without_os() -> None:
    # The per-task supervisor runs as `python -I -S` and imports no `os`.
    src = str(Path(fs.__file__).parent.parent)
    code = f"import sys; sys.path.insert(0, {src!r}); import hal9999.fs; print('os' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True)
    assert (out.returncode, out.stdout) == (0, b"False\n"), out.stderr
