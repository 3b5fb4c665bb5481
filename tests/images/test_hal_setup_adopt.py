"""hal-setup's ``adopt UID DIR`` step (a root hal's qemu sandbox: the guest's files on its
disk handed to the sandbox's uid), run on the host: the walk is compiled from the guest's
own source with a ``main`` that runs only that step (the real one also sets the clock)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hal9999.providers.qemu.image.build import guest_file

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed"),
]

UID, OLD, OTHER = 4242, 1000, 2000
HARNESS = """#define main hal_setup_main
#include "hal-setup.c"
#undef main
int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) adopt(argv[i], argv[i + 1]);
    return 0;
}
"""


@pytest.fixture(name="adopt")
def adopt_fixture(tmp_path: Path) -> Path:
    (tmp_path / "hal-setup.c").write_bytes(guest_file("hal-setup.c"))
    (tmp_path / "harness.c").write_text(HARNESS)
    binary = tmp_path / "adopt"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", binary, tmp_path / "harness.c"],
                   check=True)  # fmt: skip
    return binary


def make(path: Path, uid: int, *, directory: bool = False) -> Path:
    if directory:
        path.mkdir()
    else:
        path.write_text("x")
    os.chown(path, uid, uid)
    return path


def owners(*paths: Path) -> list[int]:
    return [p.lstat().st_uid for p in paths]


def test_adopt_hands_over_what_neither_root_nor_the_uid_owns_links_unfollowed_one_filesystem(
    adopt: Path, tmp_path: Path
) -> None:
    home = make(tmp_path / "home", OLD, directory=True)
    sub = make(home / "sub", OLD, directory=True)
    files = [make(home / "f", OLD), make(sub / "g", OTHER), make(home / "mine", UID)]
    rooted = make(home / "rooted", 0)
    outside = make(tmp_path / "outside", OTHER, directory=True)
    beyond = make(outside / "file", OTHER)
    links = [home / "to-file", home / "to-dir"]
    links[0].symlink_to(beyond)
    links[1].symlink_to(outside)
    for link in links:
        os.chown(link, OLD, OLD, follow_symlinks=False)
    make(home / "mnt", 0, directory=True)
    # A filesystem mounted inside (as a 9p share or bind in the guest) is left whole.
    script = (
        f'mount -t tmpfs none "$1/mnt" && echo x > "$1/mnt/m" && chown {OTHER} "$1/mnt/m" '
        f'"$1/mnt" && "$2" {UID} "$1" && stat -c %u "$1/mnt" "$1/mnt/m"'
    )
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                           "sh", home, adopt], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(OTHER), str(OTHER)], "it never left home's filesystem"
    assert owners(home, sub, *files, *links) == [UID] * 7
    assert (home.stat().st_gid, files[0].stat().st_gid) == (UID, UID)
    assert owners(rooted, outside, beyond) == [0, OTHER, OTHER], "links were not followed"


def test_adopt_fails_as_hal_setup_does_on_a_bad_uid_or_a_missing_directory(
    adopt: Path, tmp_path: Path
) -> None:
    for args, said in (
        (["0", str(tmp_path)], "hal-setup: bad UID 0: Invalid argument"),
        (["12x", str(tmp_path)], "hal-setup: bad UID 12x: Invalid argument"),
        ([str(UID), str(tmp_path / "no")], f"hal-setup: cannot walk {tmp_path / 'no'}: No such"),
    ):
        done = subprocess.run([adopt, *args], capture_output=True, text=True)
        assert done.returncode == 1 and done.stderr.startswith(said)
