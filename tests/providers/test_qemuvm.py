"""How the qemu provider tells its own QEMU processes from everything else, and the command
line it gives QEMU (no QEMU needed but for the parse of its options)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from hal9999.providers.qemu import vm as qemuvm


def spawn(*args: str) -> subprocess.Popen[bytes]:
    """A process with ``args`` on its command line, once its exec is done: mid-exec its
    command line reads empty, which ``alive`` counts as alive for any VM id."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while args and args[-1].encode() not in cmdline.read_bytes():
        assert time.monotonic() < deadline, "the process never showed its command line"
        time.sleep(0.001)
    return proc


def test_a_process_naming_the_vm_is_alive_and_others_are_not() -> None:
    proc = spawn("-name", "hal-abc123")
    try:
        assert qemuvm.alive(proc.pid, "abc123")
        assert not qemuvm.alive(proc.pid, "abc12")  # a recycled pid of another VM
        assert not qemuvm.alive(os.getpid(), "abc123")
        assert not qemuvm.alive(None, "abc123")
    finally:
        proc.kill()
        proc.wait()
    assert not qemuvm.alive(proc.pid, "abc123")


def test_a_zombie_and_a_kernel_thread_are_not_alive() -> None:
    proc = spawn("hal-zzz")
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    stat = Path(f"/proc/{proc.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert not qemuvm.alive(proc.pid, "zzz")  # exited, not yet reaped: no files held
    finally:
        proc.wait()
    assert not qemuvm.alive(2, "zzz")  # kthreadd: an empty command line, never a VM


async def test_kill_ends_the_vm_process_and_spares_a_pid_that_is_not_it() -> None:
    other = spawn("hal-other")
    mine = spawn("-name", "hal-mine")
    try:
        await qemuvm.kill(other.pid, "mine")  # not this VM's process: left alone
        assert other.poll() is None
        await qemuvm.kill(mine.pid, "mine")
        assert mine.wait(timeout=5) == -signal.SIGKILL
    finally:
        other.kill()
        other.wait()


def _kwargs(tmp_path: Path, incoming: int | None) -> dict[str, Any]:
    return dict(
        qemu="qemu-system-x86_64", vm_id="abc", boot=qemuvm.Boot(tmp_path / "k", tmp_path / "i"),
        shape=qemuvm.Shape("tcg", 1, 512, "none"), disk=tmp_path / "d.qcow2", shares=[],
        empty=tmp_path, run=qemuvm.RunDir("abc"), console=tmp_path / "c", pidfile=tmp_path / "p",
        incoming=incoming,
    )  # fmt: skip


def _argv(tmp_path: Path, incoming: int | None) -> list[str]:
    return qemuvm.argv(**_kwargs(tmp_path, incoming))


def test_a_restore_reads_the_saved_state_from_an_inherited_descriptor(tmp_path: Path) -> None:
    """No shell, no cat and no pipe copy of the whole state per restore."""
    args = _argv(tmp_path, 17)
    assert args[args.index("-incoming") + 1] == "fd:17"
    assert not any(arg.startswith("exec:") for arg in args)
    assert "-incoming" not in _argv(tmp_path, None)


def test_a_state_with_a_ram_file_is_restored_from_a_private_mapping_of_it(
    tmp_path: Path,
) -> None:
    """The guest's memory is mapped from the saved state's RAM file, copy-on-write
    (``share=off``: nothing a restored guest writes reaches the file), and the state's load
    waits for QMP, which sets the capability it was saved with; the VM that makes the state
    maps the file shared (its memory is what the state keeps)."""
    ram = tmp_path / "st,ate" / "ram"

    def backend(args: list[str]) -> str:
        assert args[args.index("-machine") + 1] == f"memory-backend={qemuvm.RAM_ID}"
        return args[args.index("-object") + 1]

    restore = qemuvm.argv(**{**_kwargs(tmp_path, 17), "ram": ram})
    assert restore[restore.index("-incoming") + 1] == "defer"
    assert backend(restore) == (
        f"memory-backend-file,id=microvm.ram,size=512M,mem-path={tmp_path}/st,,ate/ram,share=off"
    )
    made = qemuvm.argv(**{**_kwargs(tmp_path, None), "ram": ram})
    assert "-incoming" not in made
    assert backend(made).endswith(",share=on")
    assert "-object" not in _argv(tmp_path, 17)  # a state without one: plain memory
    # A snapshot's state moved into a RAM file of its own: loaded into a shared mapping.
    moved = qemuvm.argv(**{**_kwargs(tmp_path, 17), "ram": ram, "write_ram": True})
    assert moved[moved.index("-incoming") + 1] == "defer"
    assert backend(moved).endswith(",share=on")


async def test_only_descriptors_the_starting_shell_leaves_alone_reach_qemu(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="10 or above"):
        await qemuvm.spawn(["/bin/true"], tmp_path / "log", pass_fds=[3])


async def test_a_started_qemu_holds_none_of_its_starters_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warm VM outlives the run that started it (and serves later ones): it used to hold
    # that run's --secret values, forwarded keys and shell tokens in /proc/PID/environ.
    planted = {"LEAK_SECRET": "qemu-env-secret-4be1a9", "MY_API_KEY": "qemu-env-key-07cd35"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    pid = await qemuvm.spawn(["/bin/sleep", "60"], tmp_path / "log")
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        os.kill(pid, signal.SIGKILL)
    assert not [value for value in planted.values() if value.encode() in environ]
    assert b"PATH=" in environ


@pytest.mark.parametrize(
    ("value", "forced"), [("", None), ("kvm", "kvm"), ("TCG", "tcg"), ("KVM ", "bad"), ("x", "bad")]
)
def test_hal_qemu_accel_is_kvm_tcg_or_refused(value: str, forced: str | None) -> None:
    # A value that was neither (a typo, a trailing space) was probed as if unset.
    from hal9999.errors import ConfigError
    from hal9999.providers.qemu.state import forced_accel

    if forced != "bad":
        assert forced_accel({"HAL_QEMU_ACCEL": value}) == forced
        return
    with pytest.raises(ConfigError, match=r"^HAL_QEMU_ACCEL: expected kvm or tcg, got "):
        forced_accel({"HAL_QEMU_ACCEL": value})


def test_the_qemu_provider_refuses_a_bad_hal_qemu_accel_before_any_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal9999.errors import ConfigError
    from hal9999.providers.qemu.provider import QemuProvider

    monkeypatch.setattr(qemuvm, "qemu_binary", lambda: "qemu-system-x86_64")
    monkeypatch.setenv("HAL_QEMU_ACCEL", "kvm,tcg")
    with pytest.raises(ConfigError, match="HAL_QEMU_ACCEL"):
        QemuProvider(state_dir=tmp_path / "home" / "sandboxes" / "qemu")


def test_a_relative_hal_qemu_run_dir_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from hal9999.errors import ConfigError

    monkeypatch.setenv("HAL_QEMU_RUN_DIR", "run")
    with pytest.raises(ConfigError, match="HAL_QEMU_RUN_DIR: expected an absolute directory"):
        qemuvm.run_root()


def test_paths_with_commas_reach_qemu_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU splits an option list at each comma: every path in one is escaped (``,,``), so a
    ``HAL_HOME`` or run directory holding one starts QEMU instead of failing its parse."""
    missing = [tool for tool in ("qemu-system-x86_64", "qemu-img") if not shutil.which(tool)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing in CI")
        pytest.skip(f"needs {missing}")
    # Short (unix socket paths are limited to 107 bytes), with a comma at every level.
    root = Path(tempfile.mkdtemp(prefix="hal-q,", dir="/tmp"))
    try:
        monkeypatch.setenv("HAL_QEMU_RUN_DIR", str(root / "r,un"))
        disk = root / "d,isk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
        (root / "k,ernel").write_bytes(b"")  # QEMU stops at it: every option parsed by then
        (root / "sh,are").mkdir()
        run = qemuvm.RunDir("abc")
        run.path.mkdir(parents=True)
        args = qemuvm.argv(
            qemu="qemu-system-x86_64", vm_id="abc",
            boot=qemuvm.Boot(root / "k,ernel", root / "k,ernel"),
            shape=qemuvm.Shape("tcg", 1, 256, "none"), disk=disk,
            shares=[qemuvm.Share(root / "sh,are", True)], empty=root, run=run,
            console=root / "con,sole", pidfile=root / "p,id", exec_ports=1,
        )  # fmt: skip
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert "could not load kernel" in out.stderr, out.stderr
        assert "Invalid parameter" not in out.stderr
        assert (root / "con,sole").exists()  # the console chardev opened its whole path
    finally:
        shutil.rmtree(root, ignore_errors=True)
