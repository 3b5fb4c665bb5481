"""hal's filters refuse every system call the container engine's default profile refuses a
process without capabilities: the bwrap filter (run here through a classic-BPF interpreter,
for each syscall number of the kernel's headers) and the docker provider's profile."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from hal9999.providers import dockerseccomp, seccomp

ENGINE_DEFAULT = Path("/usr/share/containers/seccomp.json")
HEADERS = Path("/usr/include/x86_64-linux-gnu/asm")
ABIS = {
    # audit arch, the engine's arch name, the kernel's header
    "x86_64": (seccomp.AUDIT_ARCH_X86_64, "amd64", "unistd_64.h"),
    "i386": (seccomp.AUDIT_ARCH_I386, "x86", "unistd_32.h"),
}
CONDITIONAL = {"personality", "socket"}
"""Allowed by the default for some arguments only (see docs/security.md, section 1)."""

pytestmark = pytest.mark.skipif(
    not ENGINE_DEFAULT.exists() or not (HEADERS / "unistd_64.h").exists(),
    reason="needs containers-common's default profile and the kernel's headers",
)


def _numbers(header: str) -> dict[str, int]:
    text = (HEADERS / header).read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+) (\d+)", text)}


def _refused_by_default(arch: str) -> set[str]:
    """Names the default lets no capability-less process call, whatever the arguments."""
    allowed: set[str] = set()
    for rule in json.loads(ENGINE_DEFAULT.read_text())["syscalls"]:
        includes = rule.get("includes") or {}
        if rule["action"] != "SCMP_ACT_ALLOW" or includes.get("caps"):
            continue
        if includes.get("arches") and arch not in includes["arches"]:
            continue
        allowed |= set(rule["names"])
    return allowed


def _run(program: bytes, arch: int, nr: int) -> int:
    """What a classic-BPF seccomp program returns for a call with every argument 0."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *[0] * 6)
    insns = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:  # ret k
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        pc += 1


@pytest.mark.parametrize("abi", sorted(ABIS))
def test_the_bwrap_filter_refuses_what_the_engines_default_refuses(abi: str) -> None:
    audit, arch, header = ABIS[abi]
    numbers = _numbers(header)
    allowed = _refused_by_default(arch)
    program = seccomp.build()
    let_through = sorted(
        name
        for name, nr in numbers.items()
        if name not in allowed | CONDITIONAL and _run(program, audit, nr) == seccomp.RET_ALLOW
    )
    assert let_through == []
    # And the filter still lets through what the default allows (thread storage, files).
    for name in ("arch_prctl" if abi == "x86_64" else "set_thread_area", "openat", "read"):
        assert _run(program, audit, numbers[name]) == seccomp.RET_ALLOW, name


def test_the_docker_profile_refuses_what_the_engines_default_refuses() -> None:
    numbers = _numbers("unistd_64.h")
    allowed = _refused_by_default("amd64")
    refused = {
        name
        for rule in json.loads(dockerseccomp.profile())["syscalls"]
        if not rule.get("args")
        for name in rule["names"]
    }
    assert sorted(set(numbers) - allowed - CONDITIONAL - refused) == []
