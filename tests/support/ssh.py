"""The ssh provider against the tests' own sshd, and ``hal`` runs configured for it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from tests.sshd import Sshd
from tests.support.hal import BUGGY_CALC, commit_repo, private_env

from hal9999.providers.registry import load_provider
from hal9999.providers.ssh.provider import SshProvider


def ssh_provider(server: Sshd, state: Path, **host: Any) -> SshProvider:
    """The ssh provider with ``server`` as its one host, its state in ``state``."""
    provider = load_provider(
        "ssh", state_dir=state, settings={"hosts": [server.host_entry(**host)]}
    )
    assert isinstance(provider, SshProvider)
    return provider


def ssh_config(server: Sshd, **settings: Any) -> str:
    """A config file's ``[providers.ssh]`` table with ``settings`` and ``server`` as its one
    host."""
    table = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    entry = [f"{key} = {json.dumps(value)}" for key, value in server.host_entry().items()]
    return "\n".join(["[providers.ssh]", *table, "", "[[providers.ssh.hosts]]", *entry, ""])


STEPS = "abcdefghijklmnop"


def _add(archive: tarfile.TarFile, name: str, *, kind: bytes = tarfile.REGTYPE,
         link: str = "", data: bytes = b"") -> None:  # fmt: skip
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode = kind, link, 0o755
    member.size = len(data) if kind == tarfile.REGTYPE else 0
    archive.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def realpath_overflow(dest: str, ups: int, *, ended: bool = True) -> bytes:
    """CVE-2025-4517's archive for extraction into ``dest``: links whose expansion outgrows
    ``PATH_MAX`` (where ``os.path.realpath`` gives up resolving), then ``escape``, a link
    ``ups`` levels above ``dest`` that the ``data`` filter of Python < 3.11.13 takes for one
    inside, a file written through it and a hard link made through it. Without ``ended``,
    no end-of-archive blocks: a stream another tar may follow."""
    component = "d" * ((4096 - len(dest) - 1) // (len(STEPS) + 1))
    buffer = io.BytesIO()
    archive = tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT)
    path = ""
    for step in STEPS:
        _add(archive, os.path.join(path, component), kind=tarfile.DIRTYPE)
        _add(archive, os.path.join(path, step), kind=tarfile.SYMTYPE, link=component)
        path = os.path.join(path, component)
    long_link = os.path.join(*STEPS, "l" * 254)
    _add(archive, long_link, kind=tarfile.SYMTYPE, link=os.path.join(*[".."] * len(STEPS)))
    _add(archive, "escape", kind=tarfile.SYMTYPE, link=os.path.join(long_link, *[".."] * ups))
    _add(archive, "escape/pwned", data=b"written through the escape\n")
    _add(archive, "hardlinked", kind=tarfile.LNKTYPE, link="escape/victim")
    _add(archive, "hardlinked", data=b"overwritten through a hard link\n")
    data = buffer.getvalue()[: archive.offset]
    if ended:
        archive.close()
        data = buffer.getvalue()
    return data


AGENT = """#!/bin/sh
export PYTHONDONTWRITEBYTECODE=1
echo "agent: prompt: $(cat "$1")"
echo "agent: token ${API_TOKEN:+is set}"
python3 test_calc.py || echo "agent: test fails, fixing"
sed -i 's/a - b/a + b/' calc.py
python3 test_calc.py
"""


def toml_host(server: Sshd) -> str:
    """A config file's ``[[providers.ssh.hosts]]`` entry for ``server``."""
    entry = server.host_entry()
    lines = [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    return "[[providers.ssh.hosts]]\n" + "\n".join(lines) + "\n"


def hal(repo: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``hal ARGS`` in ``repo``, a private home and config under ``tmp_path``; its stdout."""
    config = tmp_path / "xdg" / "hal9999" / "config.toml"
    environ = private_env(tmp_path / "halhome", config.parents[1])
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", *args], cwd=repo, env=environ | (env or {}),
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout


def calc_repo(tmp_path: Path) -> Path:
    """A repository whose ``calc.py`` has a bug its test finds, with ``AGENT`` as ``agent.sh``."""
    return commit_repo(tmp_path / "repo", {
        "calc.py": BUGGY_CALC,
        "test_calc.py": "import calc\n\nassert calc.add(2, 3) == 5\nprint('test ok')\n",
        "agent.sh": AGENT,
    })  # fmt: skip
