"""The seccomp profile of ``docker`` sandboxes: bwrap's stance, in the engine's JSON format.

Engines differ in their defaults (Podman's profile lets an unprivileged process make a user
namespace; Docker's does not), so hal sends its own: the system calls
:mod:`hal9999.providers.bwrap.seccomp` denies to bwrap sandboxes fail with ``EPERM`` here too,
``clone``/``unshare`` with ``CLONE_NEWUSER`` are refused, ``clone3`` fails with ``ENOSYS``
(its flags sit behind a pointer; C libraries fall back to ``clone``), as do the calls the
engine's own default leaves out (:data:`~hal9999.providers.bwrap.seccomp.ABSENT`), and the
``TIOCSTI`` and ``TIOCLINUX`` ioctls that push keystrokes into a terminal, and ``TIOCSETD``
that picks a terminal's line discipline, are refused, as is an audit socket (``EINVAL``, as
the engine's default answers). ``personality`` is not narrowed here: a deny-list takes one
comparison per argument and a rule, and the five values the engine allows cannot be written
so.
"""

from __future__ import annotations

import errno
import functools
import json

from hal9999.providers.bwrap.seccomp import (
    ABSENT,
    AF_NETLINK,
    AUDIT_ARCH_X86_64,
    CLONE_NEWUSER,
    DENIED,
    NETLINK_AUDIT,
    SYSCALLS,
    TIOCLINUX,
    TIOCSETD,
    TIOCSTI,
)


def _masked(index: int, bits: int) -> dict[str, object]:
    return {"index": index, "value": bits, "valueTwo": bits, "op": "SCMP_CMP_MASKED_EQ"}


def _equal(index: int, value: int) -> dict[str, object]:
    return {"index": index, "value": value, "op": "SCMP_CMP_EQ"}


@functools.cache
def profile() -> str:
    """The profile as JSON, for ``security_opt=["seccomp=<json>"]``."""
    eperm = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    # By x86_64 name: the engine resolves each for every ABI of the profile (i386-only
    # names it cannot: a deny-list profile leaves the legacy i386 calls to the kernel).
    absent = [name for name in ABSENT if name in SYSCALLS[AUDIT_ARCH_X86_64]]
    rules: list[dict[str, object]] = [
        {"names": sorted(DENIED), **eperm},
        {
            "names": ["clone3", *sorted(absent)],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.ENOSYS,
        },
        {"names": ["unshare"], **eperm, "args": [_masked(0, CLONE_NEWUSER)]},
        {"names": ["clone"], **eperm, "args": [_masked(0, CLONE_NEWUSER)]},
        {"names": ["ioctl"], **eperm, "args": [_equal(1, TIOCSTI)]},
        {"names": ["ioctl"], **eperm, "args": [_equal(1, TIOCLINUX)]},
        {"names": ["ioctl"], **eperm, "args": [_equal(1, TIOCSETD)]},
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EINVAL,
            "args": [_equal(0, AF_NETLINK), _equal(2, NETLINK_AUDIT)],
        },
    ]
    return json.dumps(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": rules,
        },
        separators=(",", ":"),
    )
