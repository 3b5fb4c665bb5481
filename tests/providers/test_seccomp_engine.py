"""hal's filters refuse every system call the container engine's default profile refuses a
process without capabilities: the bwrap filter (run here through a classic-BPF interpreter,
for each syscall number of the kernel's headers) and the docker provider's profile."""

from __future__ import annotations

import errno
import itertools
import json
import re
import struct
from pathlib import Path

import pytest

from hal9999.providers.bwrap import seccomp
from hal9999.providers.docker import seccomp as dockerseccomp

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


def _run(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """What a classic-BPF seccomp program returns for a call with these arguments (0 after)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args, *[0] * (6 - len(args)))
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
    audit = [
        {(a["index"], a["value"]) for a in rule["args"]}
        for rule in json.loads(dockerseccomp.profile())["syscalls"]
        if rule["names"] == ["socket"] and rule.get("errnoRet") == errno.EINVAL
    ]
    assert audit == [{(0, seccomp.AF_NETLINK), (2, seccomp.NETLINK_AUDIT)}]


_OPS = {"SCMP_CMP_EQ": int.__eq__, "SCMP_CMP_NE": int.__ne__}


def _argument_rules(name: str) -> list[dict]:
    """The default's rules for ``name`` that hold for a process without capabilities."""
    return [
        rule
        for rule in json.loads(ENGINE_DEFAULT.read_text())["syscalls"]
        if name in rule["names"]
        and not (rule.get("includes") or {}).get("caps")
        and not (rule.get("includes") or {}).get("arches")
    ]


def _engine_verdict(rules: list[dict], args: tuple[int, ...]) -> int:
    """What the default answers (a matching refusal wins over an allow; else ENOSYS)."""
    matched = [
        rule
        for rule in rules
        if all(_OPS[a["op"]](args[a["index"]], a["value"]) for a in rule["args"])
    ]
    for rule in matched:
        if rule["action"] == "SCMP_ACT_ERRNO":
            return seccomp.RET_ERRNO | rule["errnoRet"]
    if matched:
        return seccomp.RET_ALLOW
    return seccomp.RET_ERRNO | errno.ENOSYS


def _probes(rules: list[dict], wide: bool) -> list[tuple[int, ...]]:
    """Argument vectors around every value the rules name: the value, a bit off, 0 and,
    on a 64-bit ABI, the value with an upper half set."""
    around: dict[int, set[int]] = {}
    for rule in rules:
        for a in rule["args"]:
            v = a["value"]
            around.setdefault(a["index"], {0}).update({v, v ^ 1, v ^ 2, v | 0x1000})
            if wide:
                around[a["index"]].add(v | 1 << 32)
    width = max(around) + 1
    choices = [sorted(around.get(index, {0})) for index in range(width)]
    return list(itertools.product(*choices))


@pytest.mark.parametrize("abi", sorted(ABIS))
@pytest.mark.parametrize("name", sorted(CONDITIONAL))
def test_the_bwrap_filter_answers_argument_rules_as_the_engines_default(
    abi: str, name: str
) -> None:
    """``personality`` and ``socket``, which the default allows for some arguments only:
    what it refuses, the filter refuses with its errno; what it allows still runs (the
    one place stricter: a socket's ints with a set upper half, which the kernel ignores)."""
    audit, _, header = ABIS[abi]
    nr = _numbers(header)[name]
    rules = _argument_rules(name)
    program = seccomp.build()
    wrong = []
    for args in _probes(rules, wide=abi == "x86_64"):
        want = _engine_verdict(rules, args)
        if want == seccomp.RET_ALLOW and name == "socket" and max(args) >> 32:
            want = _engine_verdict(rules, tuple(a & 0xFFFFFFFF for a in args))
        got = _run(program, audit, nr, args)
        if got != want:
            wrong.append((args, hex(want), hex(got)))
    assert wrong == []
