"""agentfs: the host never follows, blocks on, or writes through what an agent plants.

Each hostile shape (symlink, dangling symlink, directory, FIFO, hard link to a host file, a
swap between check and use) is planted under the name the host is about to use, with the
agent directory and the host target on one filesystem and on two (``/dev/shm``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.second_filesystem import second_filesystem

from hal9999 import agentfs
from hal9999.agentfs import AgentDir
from hal9999.errors import UnsafePath
from hal9999.providers.host import scratch


@pytest.fixture(params=["same-fs", "other-fs"])
def places(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(agent dir, host dir): on one filesystem, or the agent's on /dev/shm."""
    host = tmp_path / "host"
    host.mkdir()
    if request.param == "same-fs":
        agent = tmp_path / "agent"
        agent.mkdir()
        yield agent, host
        return
    with second_filesystem(tmp_path) as other:
        yield other, host


def _secret(host: Path) -> Path:
    secret = host / "secret"
    secret.write_text("host secret\n")
    return secret


Plant = Callable[[Path, Path], None]


def _symlink(at: Path, host: Path) -> None:
    at.symlink_to(_secret(host))


def _dangling(at: Path, host: Path) -> None:
    at.symlink_to(host / "not-yet")


def _directory(at: Path, host: Path) -> None:
    at.mkdir()


def _fifo(at: Path, host: Path) -> None:
    os.mkfifo(at)


def _hardlink(at: Path, host: Path) -> None:
    secret = _secret(host)
    try:
        os.link(secret, at)
    except OSError:  # across filesystems: the closest the agent gets is a link in its tree
        os.link(_planted_file(at.parent), at)


def _planted_file(agent: Path) -> Path:
    other = agent / "other-name"
    other.write_text("agent file\n")
    return other


HOSTILE: dict[str, Plant] = {
    "symlink": _symlink,
    "dangling-symlink": _dangling,
    "directory": _directory,
    "fifo": _fifo,
    "hardlink": _hardlink,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_reading_refuses_every_hostile_shape(places: tuple[Path, Path], shape: str) -> None:
    agent, host = places
    HOSTILE[shape](agent / "result", host)
    with AgentDir.open(agent) as adir, pytest.raises(UnsafePath) as caught:
        adir.read_bytes("result", limit=1 << 20)
    assert "result" in str(caught.value)


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_copy_out_never_writes_through_or_copies_host_data(
    places: tuple[Path, Path], shape: str
) -> None:
    agent, host = places
    HOSTILE[shape](agent / "result", host)
    dest = host / "copy"
    with AgentDir.open(agent) as adir, pytest.raises(UnsafePath):
        adir.copy_out("result", dest, limit=1 << 20)
    assert not dest.exists()
    assert not (host / "not-yet").exists()
    assert [p.name for p in host.iterdir() if p.name.endswith(".hal-tmp")] == []


@pytest.mark.parametrize("shape", ["symlink", "dangling-symlink", "hardlink"])
def test_write_atomic_replaces_a_planted_name_instead_of_writing_through(
    places: tuple[Path, Path], shape: str
) -> None:
    agent, host = places
    HOSTILE[shape](agent / "cred", host)
    with AgentDir.open(agent) as adir:
        adir.write_atomic("cred", b"token", mode=0o600)
    assert (agent / "cred").read_bytes() == b"token"
    assert not (agent / "cred").is_symlink()
    assert (agent / "cred").stat().st_mode & 0o777 == 0o600
    if (host / "secret").exists():
        assert (host / "secret").read_text() == "host secret\n"
    assert not (host / "not-yet").exists()


def test_write_atomic_refuses_a_directory_in_the_way(places: tuple[Path, Path]) -> None:
    agent, _ = places
    (agent / "cred").mkdir()
    with AgentDir.open(agent) as adir, pytest.raises(UnsafePath, match="cred"):
        adir.write_atomic("cred", b"token")


@pytest.mark.parametrize("shape", ["symlink", "dangling-symlink", "fifo"])
def test_walking_never_follows_a_planted_parent(places: tuple[Path, Path], shape: str) -> None:
    agent, host = places
    (host / "dir").mkdir()
    if shape == "symlink":
        (agent / "sub").symlink_to(host / "dir")
    else:
        HOSTILE[shape](agent / "sub", host)
    with AgentDir.open(agent) as adir:
        with pytest.raises(UnsafePath):
            adir.write_atomic("sub/cred", b"token", parents=True)
        with pytest.raises(UnsafePath):
            adir.read_bytes("sub/cred", limit=10)
        assert adir.kind("sub/cred") is None
    assert list((host / "dir").iterdir()) == []


def test_the_trusted_root_itself_must_not_be_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "home").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath, match="symlink"):
        AgentDir.open(tmp_path / "home")


def test_remove_takes_the_link_and_never_its_target(places: tuple[Path, Path]) -> None:
    agent, host = places
    keep = host / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    (agent / "tree").mkdir()
    (agent / "tree" / "escape").symlink_to(keep)
    (agent / "link").symlink_to(keep)
    with AgentDir.open(agent) as adir:
        assert adir.remove("link")
        assert adir.remove("tree", recursive=True)
        assert not adir.remove("gone")
        assert not adir.remove("gone/deeper")
    assert (keep / "precious").read_text() == "x"
    assert list(agent.iterdir()) == []


def test_remove_refuses_a_directory_without_recursive(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    with AgentDir.open(tmp_path) as adir, pytest.raises(UnsafePath):
        adir.remove("d")


def test_a_swap_between_check_and_use_is_caught(
    places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent swaps the checked file for a link right after hal looked at it."""
    agent, host = places
    secret = _secret(host)
    (agent / "result").write_text("harmless")
    with AgentDir.open(agent) as adir:
        assert adir.kind("result") == "file"
        # The swap, between the check above and the use below.
        (agent / "result").unlink()
        (agent / "result").symlink_to(secret)
        with pytest.raises(UnsafePath, match="symlink"):
            adir.copy_out("result", host / "copy", limit=100)
    assert not (host / "copy").exists()


def test_a_swapped_parent_after_open_keeps_the_original_directory(
    places: tuple[Path, Path],
) -> None:
    """Once open, the directory fd is the directory: renaming it and planting a link at its
    old name redirects nothing."""
    agent, host = places
    (agent / "home").mkdir()
    with AgentDir.open(agent / "home") as adir:
        (agent / "home").rename(agent / "moved")
        (agent / "home").symlink_to(host)
        adir.write_atomic("cred", b"token")
    assert (agent / "moved" / "cred").read_bytes() == b"token"
    assert not (host / "cred").exists()


def test_reads_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 101)
    with AgentDir.open(tmp_path) as adir:
        with pytest.raises(UnsafePath, match="limit"):
            adir.read_bytes("big", limit=100)
        with pytest.raises(UnsafePath, match="limit"):
            adir.copy_out("big", tmp_path / "copy", limit=100)
        assert adir.read_bytes("big", limit=101) == b"x" * 101


def test_a_file_that_grows_after_the_check_is_refused(tmp_path: Path) -> None:
    (tmp_path / "grow").write_bytes(b"x" * 10)
    with AgentDir.open(tmp_path) as adir, adir.reader("grow", limit=10) as handle:
        (tmp_path / "grow").write_bytes(b"x" * 50)  # same inode, more bytes
        with pytest.raises(UnsafePath, match="grew"):
            agentfs.write_host_file(tmp_path / "copy", agentfs._chunks(handle, 10, "grow"))
    assert not (tmp_path / "copy").exists()


def test_copy_out_copies_a_regular_file_across_filesystems(places: tuple[Path, Path]) -> None:
    agent, host = places
    (agent / "sub").mkdir()
    (agent / "sub" / "result").write_bytes(b"bundle" * 1000)
    dest = host / "result.bundle"
    dest.symlink_to(host / "elsewhere")  # a stale link at the destination is replaced
    with AgentDir.open(agent) as adir:
        assert adir.copy_out("sub/result", dest, limit=1 << 20, mode=0o600) == 6000
    assert not dest.is_symlink()
    assert dest.read_bytes() == b"bundle" * 1000
    assert dest.stat().st_mode & 0o777 == 0o600
    assert not (host / "elsewhere").exists()


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", "", "."])
def test_only_plain_relative_paths(tmp_path: Path, bad: str) -> None:
    with AgentDir.open(tmp_path) as adir, pytest.raises(UnsafePath, match="relative"):
        adir.read_bytes(bad, limit=10)


def test_kind_names_what_is_there_without_following(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "p")
    with AgentDir.open(tmp_path) as adir:
        assert [adir.kind(n) for n in ("f", "d", "l", "p", "none")] == [
            "file",
            "dir",
            "symlink",
            "other",
            None,
        ]


def test_mkdir_and_rename_stay_below(tmp_path: Path) -> None:
    with AgentDir.open(tmp_path) as adir:
        adir.mkdir("a/b/c", mode=0o700)
        adir.rename("a/b", "moved")
        assert adir.kind("moved/c") == "dir"
        (tmp_path / "link").symlink_to(tmp_path / "moved")
        with pytest.raises(UnsafePath):
            adir.mkdir("link/d")


PLANT_AND_REMOVE = """
import os, sys
from pathlib import Path
from hal9999 import agentfs
root, host = Path(sys.argv[1]), Path(sys.argv[2])
(root / "ws" / "closed" / "deeper").mkdir(parents=True)
(root / "ws" / "closed" / "deeper" / "f").write_text("x")
(root / "ws" / "readonly").mkdir()
(root / "ws" / "readonly" / "g").write_text("y")
(root / "ws" / "to-host").symlink_to(host)
(root / "ws" / "dangling").symlink_to(host / "missing")
(root / "ws" / "to-file").symlink_to(host / "precious")
os.mkfifo(root / "ws" / "pipe")
os.chmod(root / "ws" / "closed" / "deeper", 0o000)
os.chmod(root / "ws" / "closed", 0o000)
os.chmod(root / "ws" / "readonly", 0o555)
# Past the depth a removal walks, where what is deeper moves up: dirs 555 (and 000) there.
deep = [os.open(root / "ws", os.O_RDONLY)]
for level in range(1, 3 * agentfs.REMOVE_DEPTH):
    os.mkdir("d", dir_fd=deep[-1])
    deep.append(os.open("d", os.O_RDONLY, dir_fd=deep[-1]))
    os.mkfifo("p", dir_fd=deep[-1])
for level in reversed(range(len(deep))):
    if level > agentfs.REMOVE_DEPTH:
        os.chmod(f"/proc/self/fd/{deep[level]}", 0o555 if level % 20 else 0)
    os.close(deep[level])
print(agentfs.remove_tree(root / "ws"), agentfs.remove_tree(root / "ws"))
"""


def test_remove_tree_opens_closed_dirs_and_never_follows(tmp_path: Path) -> None:
    """A session the agent filled with mode-000/555 dirs, links and FIFOs goes away whole
    (as an ordinary user too, which a plain rmtree with ignore_errors left behind), and
    nothing the links point at is touched."""
    import shutil
    import subprocess
    import sys

    src = Path(agentfs.__file__).parents[1]
    with tempfile.TemporaryDirectory() as scratch:
        root, host = Path(scratch) / "root", Path(scratch) / "host"
        root.mkdir()
        host.mkdir()
        (host / "precious").write_text("keep")
        (host / "inner").mkdir()
        argv = [sys.executable, "-c", PLANT_AND_REMOVE, str(root), str(host)]
        if os.geteuid() == 0:  # run as an ordinary user, the case that needs opening up
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("setpriv is needed to run as an ordinary user")
            os.chmod(scratch, 0o755)
            os.chown(root, 65534, 65534)
            argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        env = {"PYTHONPATH": str(src), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["True", "False"]
        assert list(root.iterdir()) == []
        assert (host / "precious").read_text() == "keep"
        assert (host / "inner").is_dir()


def test_remove_tree_refuses_a_link_as_the_tree(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "session").symlink_to(tmp_path / "real")
    assert agentfs.remove_tree(tmp_path / "session")  # the link goes, not what it names
    assert (tmp_path / "real" / "f").read_text() == "x"
    assert not (tmp_path / "session").exists()


def test_a_tree_deeper_than_the_descriptor_limit_goes_too(tmp_path: Path) -> None:
    """An agent's 1,500-level tree is removed with a process's descriptors nearly all in use:
    the walk kept one open per level, so `hal task rm` of a session failed ("Too many open
    files") past the limit (1,024 by default), and a daemon's walk took every descriptor
    its other tasks and clients needed meanwhile."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 100, hard))
    try:
        _deep_tree_goes(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if (tmp_path / "deep").exists():  # never left for pytest's rmtree, which recurses
            scratch.remove_tree(tmp_path / "deep")


def _deep_tree_goes(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    fd = os.open(tmp_path / "deep", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    assert agentfs.remove_tree(tmp_path / "deep")
    assert not (tmp_path / "deep").exists()
    with AgentDir.open(tmp_path) as adir:
        adir.mkdir("again/a/b")
        assert adir.remove("again", recursive=True)
