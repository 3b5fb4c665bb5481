"""The paths hal hands the system ssh client (a QEMU VM's ssh_config, ``hal task attach`` on
an ssh host) are the files ssh opens, whatever the path holds: a space, a quote, a backslash
or a ``%`` (which ssh expands as its own tokens). Checked with the real ``ssh`` client."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.providers.qemu import ssh as qemussh
from hal9999.providers.qemu.vm import RunDir
from hal9999.providers.ssh.config import SshHost
from hal9999.providers.ssh.session import attach_argv

ODD = 'h%d "q\\'
"""In every directory name below: a token ssh expands, a space, a quote, a backslash."""


@pytest.fixture
def odd_dir() -> Iterator[Path]:
    """A short directory (unix socket paths are limited to 107 bytes) named :data:`ODD`."""
    if shutil.which("ssh") is None:
        if os.environ.get("CI"):
            pytest.fail("the ssh client is missing in CI")
        pytest.skip("needs the OpenSSH client")
    root = Path(tempfile.mkdtemp(prefix=ODD, dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _resolved(argv: list[str]) -> dict[str, str]:
    """``ssh -G``: the configuration ssh resolves for ``argv`` (keys lower-case)."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def test_a_vms_ssh_config_names_its_own_files(
    odd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAL_QEMU_RUN_DIR", str(odd_dir / f"run{ODD}"))
    run = RunDir("abc")
    run.path.mkdir(parents=True)
    key, known = odd_dir / f"key{ODD}", odd_dir / f"known{ODD}"
    config = qemussh.write_config(run, key=key, known_hosts=known)
    resolved = _resolved(["ssh", "-G", "-F", str(config), "hal"])
    assert resolved["userknownhostsfile"] == str(known)
    assert resolved["controlpath"] == str(run.control)
    # The identity file and the proxy are expanded when used: a connection shows both (the
    # proxy reaches the VM's socket, ssh names the key it tries).
    with socket.socket(socket.AF_UNIX) as channel:
        channel.bind(str(run.channel))
        channel.listen(1)
        channel.settimeout(20)
        ssh = subprocess.Popen(["ssh", "-v", "-F", str(config), "hal", "true"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            conn, _ = channel.accept()
            conn.close()
            _, err = ssh.communicate(timeout=20)
        finally:
            ssh.kill()
            ssh.wait()
    shown = str(key).replace("\\", "\\\\")  # ssh's log doubles a backslash
    assert f"identity file {shown} type -1" in err, err


def test_attach_on_an_ssh_host_checks_the_key_file_hal_wrote(odd_dir: Path) -> None:
    host = SshHost(name="box", address="192.0.2.1", user="u", key_file=odd_dir / f"id{ODD}",
                   host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHal")  # fmt: skip
    argv = attach_argv(host, "/root", odd_dir / f"state{ODD}")
    known = odd_dir / f"state{ODD}" / "known_hosts" / "box"
    assert known.is_file()
    host.key_file.write_text("")
    resolved = _resolved([argv[0], "-G", *argv[1:]])
    assert resolved["userknownhostsfile"] == str(known)
    # Listed as given (expanded when used, as the VM's identity file above): `%%` is `%`.
    out = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True)
    keys = [line[len("identityfile "):] for line in out.stdout.splitlines()
            if line.startswith("identityfile ")]  # fmt: skip
    assert str(host.key_file).replace("%", "%%") in keys
