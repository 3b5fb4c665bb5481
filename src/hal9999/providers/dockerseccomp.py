"""The seccomp profile of ``docker`` sandboxes: bwrap's stance, in the engine's JSON format.

Engines differ in their defaults (Podman's profile lets an unprivileged process make a user
namespace; Docker's does not), so hal sends its own: the system calls
:mod:`hal9999.providers.seccomp` denies to bwrap sandboxes fail with ``EPERM`` here too,
``clone``/``unshare`` with ``CLONE_NEWUSER`` are refused, ``clone3`` fails with ``ENOSYS``
(its flags sit behind a pointer; C libraries fall back to ``clone``), and the ``TIOCSTI`` and
``TIOCLINUX`` ioctls that push keystrokes into a terminal, and ``TIOCSETD`` that picks a
terminal's line discipline, are refused.
"""

from __future__ import annotations

import errno
import functools
import json

from hal9999.providers.seccomp import CLONE_NEWUSER, DENIED, TIOCLINUX, TIOCSETD, TIOCSTI


def _masked(index: int, bits: int) -> dict[str, object]:
    return {"index": index, "value": bits, "valueTwo": bits, "op": "SCMP_CMP_MASKED_EQ"}


def _equal(index: int, value: int) -> dict[str, object]:
    return {"index": index, "value": value, "op": "SCMP_CMP_EQ"}


@functools.cache
def profile() -> str:
    """The profile as JSON, for ``security_opt=["seccomp=<json>"]``."""
    eperm = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    rules: list[dict[str, object]] = [
        {"names": sorted(DENIED), **eperm},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        {"names": ["unshare"], **eperm, "args": [_masked(0, CLONE_NEWUSER)]},
        {"names": ["clone"], **eperm, "args": [_masked(0, CLONE_NEWUSER)]},
        {"names": ["ioctl"], **eperm, "args": [_equal(1, TIOCSTI)]},
        {"names": ["ioctl"], **eperm, "args": [_equal(1, TIOCLINUX)]},
        {"names": ["ioctl"], **eperm, "args": [_equal(1, TIOCSETD)]},
    ]
    return json.dumps(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": rules,
        },
        separators=(",", ":"),
    )
