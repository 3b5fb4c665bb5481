"""The cost of one bwrap command, counted (mounts, processes), the curated /etc it sees, and
the cost of finding a sandbox's processes by their marker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hal9999.errors import ExecError
from hal9999.providers.bwrap import args as bwrapargs
from hal9999.providers.bwrap import etc as hostetc
from hal9999.providers.bwrap import seccomp
from hal9999.providers.bwrap.args import PROC_READ_ONLY
from hal9999.providers.bwrap.provider import BwrapProvider, BwrapSandbox
from hal9999.providers.host import cgroups
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host import user as sandboxuser
from hal9999.providers.host.sandbox import RecordStore
from hal9999.spec import ArgvCommand, Resources, SandboxSpec, ShellCommand


@pytest.fixture
async def sandbox(hal_home: Path, tmp_path: Path) -> AsyncIterator[BwrapSandbox]:
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    created = await provider.create(
        SandboxSpec(workspace=workspace, resources=Resources(disk_mb=1))
    )
    assert isinstance(created, BwrapSandbox)
    yield created
    await provider.destroy(created.id)


def test_the_launcher_caps_file_size_itself(tmp_path: Path) -> None:
    argv = hostexec.launcher_argv(
        "abc", [], ["prog"], seccomp="", max_file_bytes=(1 << 20) + 1, helper=None
    )
    assert argv[:3] == ["/bin/sh", "-c", hostexec.LAUNCHER_SCRIPT]
    assert argv[3:] == ["hal-launch", "abc", "", "2049", "--", "prog"]  # rounded up
    unlimited = hostexec.launcher_argv("abc", [], ["prog"], helper=None)
    assert unlimited[3:] == ["hal-launch", "abc", "", "", "--", "prog"]
    static = hostexec.launcher_argv("abc", ["j"], ["prog"], helper="/x/hal-launch")
    assert static == ["/x/hal-launch", "abc", "", "", "j", "--", "prog"]  # same arguments


def _launcher_or_skip() -> str:
    helper = hostexec.launch_helper()
    if helper is None:
        reason = "build/hal-launch is not built (scripts/setup.sh builds it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return helper


@pytest.mark.parametrize("static", [True, False], ids=["hal-launch", "sh"])
def test_both_launchers_do_the_same_and_fail_closed(tmp_path: Path, static: bool) -> None:
    helper = _launcher_or_skip() if static else None
    joins = [tmp_path / "a", tmp_path / "b"]
    for join in joins:
        join.write_text("")
    seccomp = tmp_path / "filter"
    seccomp.write_bytes(b"program")
    probe = (
        'echo "$HAL_SANDBOX"; cat <&9; echo; ulimit -f; ulimit -H -f; cat <&4 >"$1"; '
        'cat <&8 >>"$1"; ls /proc/$$/fd'
    )
    # What bwrap's --file reads (a sandbox's passwd and group): the text exactly, whatever
    # it holds (a here-document's delimiter, expansions, backslashes).
    tricky = "a:x:1:\nHAL_DATA\n$HOME `id` \\ $(id)\n"
    data = tmp_path / "data"
    argv = hostexec.launcher_argv(
        "box1", [str(j) for j in joins], ["sh", "-c", probe, "probe", str(data)],
        seccomp=str(seccomp), max_file_bytes=4096, data=[(4, tricky), (8, "b:x:2:\n")],
        helper=helper,
    )  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HAL_SANDBOX": "other"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[:4] == ["box1", "program", "8", "8"], done.stdout  # 512-byte blocks
    # The filter's fd and the data's, nothing else.
    assert sorted(lines[4:], key=int) == ["0", "1", "2", "4", "8", "9"]
    assert data.read_text() == tricky + "b:x:2:\n"
    # "0" is the writer itself: one process, one thread (see Cgroup.join_files).
    assert [j.read_text().strip() for j in joins] == ["0", "0"]

    ran = tmp_path / "ran"
    for bad_join, bad_seccomp in (("/nonexistent/tasks", ""), (str(joins[0]), "/nonexistent")):
        failed = subprocess.run(
            hostexec.launcher_argv(
                "box1", [bad_join], ["touch", str(ran)], seccomp=bad_seccomp, helper=helper
            ),
            env=env, capture_output=True,
        )  # fmt: skip
        # (sh exits 2, not 125, when the redirection of its `exec` fails: nothing runs.)
        assert failed.returncode in ((125,) if static else (2, 125)), failed.stderr
        assert not ran.exists()
    missing = hostexec.launcher_argv("box1", [], ["/nonexistent/prog"], helper=helper)
    assert subprocess.run(missing, env=env, capture_output=True).returncode == 127
    launcher = [str(helper)] if static else ["/bin/sh", "-c", hostexec.LAUNCHER_SCRIPT, "l"]
    for fd in ("9", "0", "2", "10", "4x", "", "4;touch /x"):
        # A data fd outside 3-8 (the filter's 9, stdio, two digits) runs nothing.
        bad_fd = [*launcher, "--data", fd, "x", "box1", "", "", "--", "touch", str(ran)]
        assert subprocess.run(bad_fd, env=env, capture_output=True).returncode == 125, fd
        assert not ran.exists()
    if static:
        # Usage errors: no `--`, a bad size; neither runs anything.
        for args in (["box1", "", "", str(ran)], ["box1", "", "-1", "--", "touch", str(ran)]):
            bad = subprocess.run([str(helper), *args], capture_output=True)
            assert bad.returncode == 125 and not ran.exists(), (args, bad.stderr)


def test_the_launcher_takes_only_data_a_pipe_can_hold_at_fds_a_shell_can_name() -> None:
    assert hostexec.data_args([(4, "a\nb\n"), (8, "c\n")]) == [
        "--data", "4", "a\nb", "--data", "8", "c",
    ]  # fmt: skip
    for fd, text in ((9, "x\n"), (2, "x\n"), (10, "x\n"), (4, "no newline"), (4, "x" * 4096)):
        with pytest.raises(ValueError):
            hostexec.data_args([(fd, text)])


def test_an_untrusted_or_older_launcher_is_not_used(tmp_path: Path) -> None:
    prog = tmp_path / "hal-launch"
    prog.write_text("#!/bin/sh\n# hal-launch abi: enter\n")
    prog.chmod(0o755)
    # A build from before --data would take the option for a sandbox name.
    assert hostexec.launch_helper.__wrapped__(prog) is None
    prog.write_text("#!/bin/sh\n# hal-launch abi: enter hal-launch abi: data\n")
    # A build from before --parent would take it for a sandbox name, and ran a command for a
    # hal that died while it was in flight: the script launcher checks.
    assert hostexec.launch_helper.__wrapped__(prog) is None
    prog.write_text(
        "#!/bin/sh\n# hal-launch abi: enter hal-launch abi: data hal-launch abi: parent\n"
    )
    assert hostexec.launch_helper.__wrapped__(prog) == str(prog)
    # A build from before --else would take it for a sandbox name: its sandboxes get no keeper.
    assert not hostexec._takes_enter.__wrapped__(str(prog))
    prog.write_text(
        "#!/bin/sh\n# hal-launch abi: enter-else hal-launch abi: data hal-launch abi: parent\n"
    )
    assert hostexec._takes_enter.__wrapped__(str(prog))
    prog.chmod(0o775)  # group-writable
    assert hostexec.launch_helper.__wrapped__(prog) is None
    assert hostexec.launch_helper.__wrapped__(tmp_path / "missing") is None


@pytest.mark.bwrap
async def test_a_command_is_the_launcher_then_bwrap_and_no_other_host_program(
    sandbox: BwrapSandbox,
) -> None:
    argv = sandbox.launch(ArgvCommand(argv=("true",))).argv
    # The static launcher when built (no shell), then bwrap: no prlimit (or any other) exec
    # between them, as the launcher caps the file size itself.
    helper = hostexec.launch_helper()
    assert argv[0] == (helper or "/bin/sh")
    assert os.path.basename(argv[argv.index("--") + 1]) == "bwrap"
    assert not any(os.path.basename(a) == "prlimit" for a in argv)
    limits = await sandbox.exec(ShellCommand(script="grep 'Max file size' /proc/self/limits"))
    assert limits.ok, limits.text()
    assert limits.stdout.split()[3:5] == [b"1048576", b"1048576"]  # soft and hard


@pytest.mark.bwrap
async def test_etc_takes_a_handful_of_mounts_and_shows_the_hosts_curated_entries(
    sandbox: BwrapSandbox,
) -> None:
    mounts = await sandbox.exec(ArgvCommand(argv=("cat", "/proc/self/mountinfo")))
    assert mounts.ok, mounts.text()
    under_etc = [
        line.split()[4] for line in mounts.stdout.decode().splitlines()
        if line.split()[4] == "/etc" or line.split()[4].startswith("/etc/")
    ]  # fmt: skip
    host_dirs = [n for n in hostetc.ETC if os.path.isdir(f"/etc/{n}")]
    # The view and the curated host directories: 18 entries used to be 18 mounts (and a
    # root hal's passwd and group two more; they are now links into /.hal).
    assert len(under_etc) <= 1 + len(host_dirs), under_etc
    listing = await sandbox.exec(ShellCommand(script="ls -A /etc"))
    assert listing.ok, listing.text()
    present = {n for n in hostetc.ETC if os.path.exists(f"/etc/{n}")}
    assert set(listing.stdout.decode().split()) == present
    for name in ("hosts", "nsswitch.conf", "ld.so.cache"):
        inside = await sandbox.exec(ArgvCommand(argv=("cat", f"/etc/{name}")))
        assert inside.ok and inside.stdout == Path("/etc", name).read_bytes(), name
    if os.path.isdir("/etc/ssl/certs"):
        certs = await sandbox.exec(ArgvCommand(argv=("ls", "-A", "/etc/ssl/certs")))
        assert sorted(certs.stdout.decode().split()) == sorted(os.listdir("/etc/ssl/certs"))
    write = await sandbox.exec(ShellCommand(script="echo x >> /etc/hosts"))
    assert not write.ok


@pytest.mark.bwrap
async def test_each_proc_writer_is_one_read_only_mount(sandbox: BwrapSandbox) -> None:
    mounts = await sandbox.exec(ArgvCommand(argv=("cat", "/proc/self/mountinfo")))
    assert mounts.ok, mounts.text()
    rows = [line.split() for line in mounts.stdout.decode().splitlines()]
    for name in PROC_READ_ONLY:
        if not os.path.exists(f"/proc/{name}"):
            continue
        found = [row[5] for row in rows if row[4] == f"/proc/{name}"]
        # As root bwrap covers sysrq-trigger, irq and bus itself: ours made a second mount
        # (and a second read of the mount table) on each.
        assert len(found) == 1, (name, found)
        assert found[0].split(",")[0] == "ro", (name, found)


def _helper_or_skip() -> str:
    helper = sandboxuser.drop_helper()
    if helper is None:
        reason = "build/hal-drop is not built (scripts/setup.sh builds it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return helper


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_hal_drop_runs_nothing_on_a_bad_uid_and_leaves_no_privilege(tmp_path: Path) -> None:
    helper = _helper_or_skip()
    marker = tmp_path / "ran"
    for bad in (["0"], ["-1"], ["12x"], [""], ["4294967295"], ["2000000001", "x"]):
        done = subprocess.run(
            [helper, *bad, "--", "touch", str(marker)], capture_output=True, text=True
        )
        assert done.returncode == 125 and not marker.exists(), (bad, done.stderr)
    status = subprocess.run(
        [helper, "2000000001", "--", "cat", "/proc/self/status"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for line in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{line}:\t0000000000000000" in status
    ids = [line.split() for line in status.splitlines() if line.startswith(("Uid", "Gid"))]
    assert all(field == "2000000001" for row in ids for field in row[1:]), ids
    groups = [line for line in status.splitlines() if line.startswith("Groups:")]
    assert groups == ["Groups:\t "] or groups[0].split() == ["Groups:"], groups  # none
    missing = subprocess.run([helper, "2000000001", "--", "/nonexistent"], capture_output=True)
    assert missing.returncode == 127


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_hal_drop_execs_as_execvp_does() -> None:
    # Its own PATH search (musl's execvp runs no script without #!): a script without #!
    # runs with /bin/sh, an unreadable or missing program is 126 or 127, as with setpriv.
    helper = _helper_or_skip()
    bin_dir = Path(tempfile.mkdtemp(prefix="hal-drop-"))
    try:
        bin_dir.chmod(0o755)
        script = bin_dir / "plain"
        script.write_text('echo ran "$@"\n')
        script.chmod(0o755)
        env = {"PATH": f"/nonexistent:{bin_dir}:/usr/bin:/bin"}
        for argv in (["plain", "a"], [str(script), "a"]):
            done = subprocess.run(
                [helper, "2000000001", "--", *argv], env=env, capture_output=True, text=True
            )
            assert (done.returncode, done.stdout) == (0, "ran a\n"), (argv, done.stderr)
        assert subprocess.run([helper, "2000000001", "--", "id", "-u"], env=env,
                              capture_output=True, text=True).stdout == "2000000001\n"  # fmt: skip
        script.chmod(0o644)
        for argv, code in ((["plain"], 126), (["no-such-program"], 127), ([""], 127)):
            done = subprocess.run([helper, "2000000001", "--", *argv], env=env, capture_output=True)
            assert done.returncode == code, (argv, done.stderr)
    finally:
        shutil.rmtree(bin_dir)


@pytest.mark.bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="only a root hal switches uid")
@pytest.mark.parametrize("use_helper", [True, False], ids=["hal-drop", "setpriv"])
async def test_commands_run_as_the_sandbox_uid_with_nothing_else(
    hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_helper: bool
) -> None:
    helper = _helper_or_skip() if use_helper else None
    monkeypatch.setattr(sandboxuser, "drop_helper", lambda: helper)
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    (tmp_path / "ws").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "ws"))
    try:
        argv = box.launch(ArgvCommand(argv=("true",))).argv
        first = argv[argv.index("--chdir") + 3]
        assert first == (sandboxuser.DROP_HELPER if use_helper else sandboxuser.SETPRIV)
        status = (await box.exec(ArgvCommand(argv=("cat", "/proc/self/status")))).text()
        for line in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert f"{line}:\t0000000000000000" in status
        uid = str(box.uid)
        ids = [line.split() for line in status.splitlines() if line.startswith(("Uid", "Gid"))]
        assert all(field == uid for row in ids for field in row[1:]), ids
        assert "NoNewPrivs:\t1" in status
        groups = [line for line in status.splitlines() if line.startswith("Groups:")]
        assert groups[0].split() == ["Groups:"], groups  # no supplementary group
    finally:
        await provider.destroy(box.id)


def test_the_marker_finds_exactly_the_processes_that_carry_it() -> None:
    envs = {
        "own": {"HAL_SANDBOX": "abc123"},
        "last": {"A": "1", "HAL_SANDBOX": "abc123"},
        "longer": {"HAL_SANDBOX": "abc1234"},
        "inside-a-value": {"X": "HAL_SANDBOX=abc123"},
    }
    procs = {name: subprocess.Popen(["sleep", "30"], env=env) for name, env in envs.items()}
    try:
        found = hostexec.marked_pids("abc123")
        assert found == {procs["own"].pid, procs["last"].pid}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_finding_marked_processes_costs_three_calls_per_process(tmp_path: Path) -> None:
    # Every reset and destroy scans every host process's environment (a boundary guarantee:
    # a process that left the cgroup is still found).
    code = (
        "import os; from hal9999.providers.host import exec as hostexec; os.write(1, b'BEGIN');"
        "hostexec.marked_pids('none'); os.write(1, b'END')"
    )
    log = tmp_path / "trace"
    subprocess.run(
        ["strace", "-qq", "-o", str(log), sys.executable, "-c", code],
        check=True, capture_output=True,
    )  # fmt: skip
    lines = log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "BEGIN" in line)
    end = next(i for i, line in enumerate(lines) if "END" in line)
    calls = lines[start + 1 : end]
    opened = sum("/environ" in line for line in calls)
    assert opened > 1
    # open, read, close per process (a buffered file object made seven), and the listing.
    assert len(calls) <= 3 * opened + 10, (opened, len(calls))


@pytest.mark.bwrap
async def test_a_claims_fresh_handle_redoes_no_work_and_a_command_reads_no_full_record(
    hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    (tmp_path / "ws").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "ws"))
    try:
        record = provider.store.load(box.id)
        resolved: list[str] = []
        realpath = os.path.realpath
        monkeypatch.setattr(hostfs.os.path, "realpath", lambda p: resolved.append(p) or realpath(p))
        before = bwrapargs._with_parents.cache_info().hits
        again = await provider.get(box.id)
        # The pool makes a handle on every claim: its argv is the one worked out before, and
        # mount sources are resolved when a file operation first needs them, not up front.
        assert bwrapargs._with_parents.cache_info().hits == before + 1
        assert resolved == []
        assert (
            again.launch(ArgvCommand(argv=("true",))).argv
            == box.launch(ArgvCommand(argv=("true",))).argv
        )
        await again.write_file_atomic("/workspace/f", b"x")
        assert await again.read_file("/workspace/f") == b"x"
        assert {str(p) for p in resolved} == {str(tmp_path / "ws")}  # when first needed
        # Every command checks the state in the record, not the whole record with pydantic.
        monkeypatch.setattr(RecordStore, "load", lambda *a: pytest.fail("full record load"))
        assert (await again.exec(ArgvCommand(argv=("true",)))).ok
        monkeypatch.undo()
        await provider.stop(box.id)
        with pytest.raises(ExecError, match="is stopped"):
            await again.exec(ArgvCommand(argv=("true",)))
        assert record.state == "running"
    finally:
        await provider.destroy(box.id)


@pytest.mark.cgroup
@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup v1 here needs root")
async def test_the_oom_counter_is_looked_up_once_and_read_in_one_call(
    hal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    box = await provider.create(SandboxSpec(resources=Resources(memory_mb=64)))
    try:
        assert isinstance(box, BwrapSandbox) and box.cgroup is not None
        looked: list[str] = []
        if isinstance(box.cgroup, cgroups.CgroupV1):
            real = cgroups.CgroupV1._dir
            monkeypatch.setattr(
                cgroups.CgroupV1, "_dir", lambda self, c: looked.append(c) or real(self, c)
            )
        for _ in range(3):
            assert (await box.exec(ArgvCommand(argv=("true",)))).ok
        assert looked in ([], ["memory"])  # not once per command
        assert box.oom_kills() == 0
    finally:
        await provider.destroy(box.id)


def test_the_seccomp_filter_is_assembled_once_a_process() -> None:
    # Every bwrap provider object assembled it again (two a task in the daemon).

    assert seccomp.build() is seccomp.build()
    assert seccomp.build(deny_userns=False) != seccomp.build()


async def test_what_a_command_writes_to_stderr_is_kept_within_a_bound(
    sandbox: BwrapSandbox,
) -> None:
    # A git clean filter of the agent's, run by collection's `git add`, can write to stderr
    # until the command's time limit: all of it used to be held in the daemon's memory.
    from hal9999.providers.handle import STDERR_LIMIT

    script = "echo first >&2; head -c 50000000 /dev/zero >&2; echo last >&2; echo out"
    result = await sandbox.exec(ShellCommand(script=script), timeout=60)
    assert result.ok and result.stdout == b"out\n"
    assert len(result.stderr) <= STDERR_LIMIT + 100
    assert result.stderr.startswith(b"first\n") and result.stderr.endswith(b"\x00last\n")
    assert b"bytes ...]" in result.stderr
    small = await sandbox.exec(ShellCommand(script="echo whole >&2"), timeout=60)
    assert small.stderr == b"whole\n"


async def test_what_a_command_writes_to_stdout_is_held_within_a_bound(
    sandbox: BwrapSandbox,
) -> None:
    # A git clean filter of the agent's, run by collection's `git add`, or any command whose
    # output hal reads, can write to stdout without end: all of it was held in the daemon.
    from hal9999.providers.base import STDOUT_LIMIT

    script = f"echo why >&2; head -c {STDOUT_LIMIT * 4} /dev/zero; echo after > /tmp/after"
    tracemalloc.start()
    try:
        with pytest.raises(ExecError) as raised:
            await sandbox.exec(ShellCommand(script=script), timeout=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * STDOUT_LIMIT  # what was held: the bound and a chunk, not 4 times it
    said = f"wrote more than {STDOUT_LIMIT} bytes to stdout and was killed"
    assert raised.value.message.endswith(said)
    assert raised.value.details["stdout_limit"] == STDOUT_LIMIT
    assert raised.value.details["stderr"] == b"why\n" and "stdout" not in raised.value.details
    assert not (await sandbox.exec(ShellCommand(script="test -e /tmp/after"))).ok  # killed
    # A caller that needs more says so; less, too.
    big = await sandbox.exec(ShellCommand(script="head -c 5000 /dev/zero"), stdout_limit=5000)
    assert big.ok and len(big.stdout) == 5000
    with pytest.raises(ExecError, match="more than 4999 bytes"):
        await sandbox.exec(ShellCommand(script="head -c 5000 /dev/zero"), stdout_limit=4999)


async def test_a_file_read_inside_takes_what_a_host_read_takes(
    sandbox: BwrapSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /usr is not one of the sandbox's host directories: read by `cat` inside, under the
    # host read's bound (hostfs.READ_LIMIT), not exec's default.
    size = int((await sandbox.exec(ShellCommand(script="wc -c < /usr/bin/env"))).stdout)
    monkeypatch.setattr(hostfs, "READ_LIMIT", size)
    assert len(await sandbox.read_file("/usr/bin/env")) == size
    monkeypatch.setattr(hostfs, "READ_LIMIT", size - 1)
    with pytest.raises(ExecError) as raised:
        await sandbox.read_file("/usr/bin/env")
    assert raised.value.message == f"cannot read /usr/bin/env: it is over {size - 1} bytes"
