"""The seccomp filter every bwrap sandbox runs under: system calls an agent never needs fail.

bwrap's ``--seccomp FD`` takes a compiled classic-BPF program. It is small and fixed, so it
is assembled here rather than through libseccomp (whose Python binding only loads in the
system Python): a deny-list over an allow-by-default policy, per ABI. The x86_64 and i386
ABIs get the same list under their own numbers; the x32 ABI (x86_64 numbers with bit 30
set), which no agent tool uses and which would otherwise dodge an x86_64 list, is refused
whole. Denied calls fail with ``EPERM``, so tools see an ordinary error, not a crash;
``clone3`` fails with ``ENOSYS`` because its flags sit behind a pointer a filter cannot read,
and C libraries then fall back to ``clone``, whose flags the filter does check.
"""

import errno
import functools
import platform
import struct
from collections.abc import Iterable
from typing import NamedTuple

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
TIOCSTI = 0x5412
"""Pushes a byte into the terminal's input: keystrokes typed into the user's shell."""
TIOCLINUX = 0x541C
"""Can do the same on a Linux console (selection paste)."""

TIOCSETD = 0x5423
"""Sets a terminal's line discipline: on a pty the agent opens (or the pane's), the kernel
loads on demand (``CONFIG_LDISC_AUTOLOAD``) and runs n_hdlc, n_gsm, hci_uart, slip and
the like, a surface with a history of local-root bugs; no agent tool sets one."""

PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008)
"""``personality`` values the engine's default allows (``PER_LINUX``, ``PER_LINUX32``,
``UNAME26`` and both), plus the query ``0xffffffff``; any other (``ADDR_NO_RANDOMIZE``,
``READ_IMPLIES_EXEC``...) fails with ENOSYS, as there."""
PERSONALITY_QUERY = 0xFFFFFFFF
AF_NETLINK = 16
NETLINK_AUDIT = 9
"""``socket(AF_NETLINK, *, NETLINK_AUDIT)`` fails with EINVAL, as the engine's default
answers a process without ``CAP_AUDIT_WRITE``."""

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

DENIED = (
    # Kernel keyrings are per uid, not per namespace: another task's (or root's) keys.
    "keyctl", "add_key", "request_key",
    # Kernel attack surface an agent never needs.
    "bpf", "perf_event_open", "userfaultfd",
    # io_uring: a large kernel surface, and its operations (socket, connect, openat...) run
    # past any filter, so a call denied here could be made through a ring instead.
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    # Mounting: the sandbox's view of the filesystem is fixed by bwrap.
    "mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # Host-wide switches and the classic file-handle escape.
    "open_by_handle_at", "swapon", "swapoff", "reboot", "acct", "iopl", "ioperm", "quotactl",
    # What the engine's default profile (Podman's) refuses a process without capabilities:
    # the page-gifting pipe call, NUMA page moves, process comparison and remote madvise,
    # fanotify, the old AIO wait, and calls a capability gates (chroot, the clock, names).
    "vmsplice", "migrate_pages", "move_pages", "kcmp", "process_madvise", "fanotify_init",
    "io_pgetevents", "lookup_dcookie", "nfsservctl", "query_module", "sysfs", "uselib", "ustat",
    "chroot", "clock_settime", "settimeofday", "sethostname", "setdomainname", "vhangup",
)  # fmt: skip
"""System calls that fail with EPERM whatever their arguments."""

DENIED_I386 = (
    "arch_prctl", "bdflush", "clock_settime64", "nice", "oldfstat", "oldlstat", "oldolduname",
    "oldstat", "olduname", "sgetmask", "ssetmask", "stime", "vm86", "vm86old",
)  # fmt: skip
"""Legacy i386 calls the engine's default refuses too (``arch_prctl`` only there: x86_64's
C library sets up thread storage with it)."""

ABSENT = (
    "futex_waitv", "set_mempolicy_home_node", "quotactl_fd", "_sysctl", "create_module",
    "get_kernel_syms", "afs_syscall", "tuxcall", "security", "vserver", "getpmsg", "putpmsg",
    "io_pgetevents_time64", "break", "ftime", "gtty", "stty", "idle", "lock", "mpx", "prof",
    "profil", "ulimit",
)  # fmt: skip
"""System calls the engine's default does not name and so refuses with ENOSYS: they fail
as on a kernel without them, and a caller falls back as it would there."""

SYSCALLS: dict[int, dict[str, int]] = {
    AUDIT_ARCH_X86_64: {
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "mount": 165, "umount2": 166,
        "pivot_root": 155, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "open_by_handle_at": 304,
        "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "iopl": 172, "ioperm": 173,
        "quotactl": 179, "unshare": 272, "clone": 56, "clone3": 435, "ioctl": 16,
        "vmsplice": 278, "migrate_pages": 256, "move_pages": 279, "kcmp": 312,
        "process_madvise": 440, "fanotify_init": 300, "io_pgetevents": 333,
        "lookup_dcookie": 212, "nfsservctl": 180, "query_module": 178, "sysfs": 139,
        "uselib": 134, "ustat": 136, "chroot": 161, "clock_settime": 227, "settimeofday": 164,
        "sethostname": 170, "setdomainname": 171, "vhangup": 153, "futex_waitv": 449,
        "set_mempolicy_home_node": 450, "quotactl_fd": 443, "_sysctl": 156,
        "create_module": 174, "get_kernel_syms": 177, "afs_syscall": 183, "tuxcall": 184,
        "security": 185, "vserver": 236, "getpmsg": 181, "putpmsg": 182,
        "personality": 135, "socket": 41,
    },
    AUDIT_ARCH_I386: {
        "keyctl": 288, "add_key": 286, "request_key": 287, "bpf": 357, "perf_event_open": 336,
        "userfaultfd": 374, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "kexec_load": 283, "init_module": 128, "finit_module": 350,
        "delete_module": 129, "mount": 21, "umount": 22, "umount2": 52, "pivot_root": 217,
        "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "open_by_handle_at": 342, "swapon": 87,
        "swapoff": 115, "reboot": 88, "acct": 51, "iopl": 110, "ioperm": 101, "quotactl": 131,
        "unshare": 310, "clone": 120, "clone3": 435, "ioctl": 54,
        "vmsplice": 316, "migrate_pages": 294, "move_pages": 317, "kcmp": 349,
        "process_madvise": 440, "fanotify_init": 338, "io_pgetevents": 385,
        "lookup_dcookie": 253, "nfsservctl": 169, "query_module": 167, "sysfs": 135,
        "uselib": 86, "ustat": 62, "chroot": 61, "clock_settime": 264, "settimeofday": 79,
        "sethostname": 74, "setdomainname": 121, "vhangup": 111, "arch_prctl": 384,
        "bdflush": 134, "clock_settime64": 404, "nice": 34, "oldfstat": 28, "oldlstat": 84,
        "oldolduname": 59, "oldstat": 18, "olduname": 109, "sgetmask": 68, "ssetmask": 69,
        "stime": 25, "vm86": 166, "vm86old": 113, "futex_waitv": 449,
        "set_mempolicy_home_node": 450, "quotactl_fd": 443, "_sysctl": 149,
        "create_module": 127, "get_kernel_syms": 130, "afs_syscall": 137, "vserver": 273,
        "getpmsg": 188, "putpmsg": 189, "io_pgetevents_time64": 416, "break": 17, "ftime": 35,
        "gtty": 32, "stty": 31, "idle": 112, "lock": 53, "mpx": 56, "prof": 44, "profil": 98,
        "ulimit": 58, "personality": 136, "socket": 359,
    },
}  # fmt: skip
"""Syscall numbers per ABI (from the kernel's unistd_64.h / unistd_32.h; they never change)."""

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_NR, _ARCH = 0, 4


def _arg_low(index: int) -> int:
    # seccomp_data.args[i] is 64-bit at offset 16 + 8i; the low half comes first (little endian).
    return 16 + 8 * index


def _arg_high(index: int) -> int:
    return _arg_low(index) + 4


class _Insn(NamedTuple):
    code: int
    k: int
    jt: int | str = 0
    jf: int | str = 0


class _Program:
    """A tiny assembler: instructions with symbolic jump targets, resolved at the end."""

    def __init__(self) -> None:
        self.insns: list[_Insn] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def add(self, code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.insns.append(_Insn(code, k, jt, jf))

    def assemble(self) -> bytes:
        out = bytearray()
        for at, insn in enumerate(self.insns):
            jumps = []
            for target in (insn.jt, insn.jf):
                offset = target if isinstance(target, int) else self.labels[target] - at - 1
                if not 0 <= offset <= 255:
                    raise ValueError(f"seccomp jump out of range at {at}: {offset}")
                jumps.append(offset)
            out += struct.pack("=HBBI", insn.code, jumps[0], jumps[1], insn.k)
        return bytes(out)


def _arch_section(prog: _Program, arch: int, denied: Iterable[str]) -> None:
    numbers = SYSCALLS[arch]
    tag = f"{arch:x}"
    prog.label(f"arch_{tag}")
    prog.add(_LD_W_ABS, _NR)
    if arch == AUDIT_ARCH_X86_64:
        prog.add(_JGE_K, X32_BIT, "enosys", 0)
    else:
        denied = (*denied, *DENIED_I386)
    for name in denied:
        if name in numbers:
            prog.add(_JEQ_K, numbers[name], "eperm", 0)
    for name in ABSENT:
        if name in numbers:
            prog.add(_JEQ_K, numbers[name], "enosys", 0)
    prog.add(_JEQ_K, numbers["clone3"], "enosys", 0)
    # Nested user namespaces: clone(2) and unshare(2) both take the flags as argument 0.
    prog.add(_JEQ_K, numbers["clone"], "flags0", 0)
    prog.add(_JEQ_K, numbers["unshare"], "flags0", 0)
    prog.add(_JEQ_K, numbers["personality"], "personality", 0)
    prog.add(_JEQ_K, numbers["socket"], "socket", 0)
    prog.add(_JEQ_K, numbers["ioctl"], "ioctl", "allow")


@functools.cache
def build(*, deny_userns: bool = True) -> bytes:
    """The filter as bwrap's ``--seccomp`` wants it: an array of ``struct sock_filter``
    (assembled once a process: every bwrap provider object, two a task in the daemon, would
    assemble the same bytes again)."""
    prog = _Program()
    prog.add(_LD_W_ABS, _ARCH)
    prog.add(_JEQ_K, AUDIT_ARCH_X86_64, f"arch_{AUDIT_ARCH_X86_64:x}", 0)
    prog.add(_JEQ_K, AUDIT_ARCH_I386, f"arch_{AUDIT_ARCH_I386:x}", "allow")
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386):
        _arch_section(prog, arch, DENIED)
    prog.label("flags0")
    prog.add(_LD_W_ABS, _arg_low(0))
    prog.add(_JSET_K, CLONE_NEWUSER if deny_userns else 0, "eperm", "allow")
    # personality(2): the engine's five values, compared on all 64 bits as it does (the
    # kernel reads 32; an i386 caller's upper half is always 0).
    prog.label("personality")
    prog.add(_LD_W_ABS, _arg_high(0))
    prog.add(_JEQ_K, 0, 0, "enosys")
    prog.add(_LD_W_ABS, _arg_low(0))
    prog.add(_JEQ_K, PERSONALITY_QUERY, "allow", 0)
    flags = functools.reduce(int.__or__, PERSONALITIES)
    prog.add(_JSET_K, ~flags & 0xFFFFFFFF, "enosys", "allow")
    # socket(2): domain and protocol are ints, so only their low halves count (the engine
    # compares all 64 bits and lets a set upper half through; this does not).
    prog.label("socket")
    prog.add(_LD_W_ABS, _arg_low(0))
    prog.add(_JEQ_K, AF_NETLINK, 0, "allow")
    prog.add(_LD_W_ABS, _arg_low(2))
    prog.add(_JEQ_K, NETLINK_AUDIT, "einval", "allow")
    prog.label("ioctl")
    prog.add(_LD_W_ABS, _arg_low(1))
    prog.add(_JEQ_K, TIOCSTI, "eperm", 0)
    prog.add(_JEQ_K, TIOCLINUX, "eperm", 0)
    prog.add(_JEQ_K, TIOCSETD, "eperm", "allow")
    prog.label("allow")
    prog.add(_RET_K, RET_ALLOW)
    prog.label("eperm")
    prog.add(_RET_K, RET_ERRNO | errno.EPERM)
    prog.label("enosys")
    prog.add(_RET_K, RET_ERRNO | errno.ENOSYS)
    prog.label("einval")
    prog.add(_RET_K, RET_ERRNO | errno.EINVAL)
    return prog.assemble()


def supported() -> bool:
    """Whether the filter covers this host's ABI (x86_64; elsewhere bwrap runs without it)."""
    return platform.machine() == "x86_64"
