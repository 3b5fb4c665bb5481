"""Test policy shared by the whole suite.

Tests marked ``bwrap``, ``tmux``, ``cgroup``, ``qemu`` or ``ssh`` need that component; when it is
missing they skip locally but fail under ``CI=true``, so CI can never go green by skipping
everything. The ``qemu`` tests share one image, built once per run (see ``qemu_images``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.gateway.upstream import StormUpstream

from hal9999.tasks import gitrepo

if TYPE_CHECKING:
    from tests.sshd import Sshd

# A suite started with SIGINT ignored (a background job of a script) would hand that to every
# hal it starts, and the tests that press Ctrl-C on one would see it ignored: a hal started
# from a shell has SIGINT's default, and so do the ones the tests start.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the Ray cluster, if this process started one: here, before an xdist worker
    reports its end (after this hook), as well as in ``pytest_unconfigure``, which a worker
    ended by the controller (execnet interrupts it 5 s after) did not reach, leaving the
    cluster running. Then remove earlier sessions' tmp dirs before pytest's own clean-up
    does: hostile-agent tests leave directory chains thousands of levels deep, and pytest's
    ``shutil.rmtree`` recurses once a level, so a later session ended in a RecursionError
    after every test passed. ``rm -rf`` walks any depth; the newest dirs pytest keeps are
    left to it."""
    from tests import ray_cluster

    ray_cluster.stop_session_cluster()
    factory = getattr(session.config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)
    if base is None or getattr(factory, "_given_basetemp", None) is not None:
        return
    remove_old_tmp(Path(base))


LIVE_LOCK_S = 3 * 24 * 3600
"""pytest's own rule: a numbered dir whose ``.lock`` is younger is a live session's."""


def remove_old_tmp(base: Path) -> None:
    """``rm -rf`` the numbered tmp dirs beside ``base`` that pytest would remove itself (all
    but the newest three, and its ``garbage-*``), never one a session still running holds
    by its ``.lock``: sessions at once (two terminals, parallel checkouts) must not lose
    each other's files mid-test."""
    root = base.parent
    numbered = sorted(
        (p for p in root.glob("pytest-*") if p.name.split("-", 1)[1].isdigit()),
        key=lambda p: int(p.name.split("-", 1)[1]),
    )
    for path in [*numbered[:-3], *root.glob("garbage-*")]:
        if path == base or path.is_symlink():
            continue
        try:
            if time.time() - (path / ".lock").stat().st_mtime < LIVE_LOCK_S:
                continue
        except FileNotFoundError:
            pass
        except OSError:
            continue
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)


@functools.cache
def _missing_bwrap() -> str | None:
    found = shutil.which("bwrap")
    return None if found else "bubblewrap is not installed (apt-get install bubblewrap)"


@functools.cache
def _missing_tmux() -> str | None:
    return None if shutil.which("tmux") else "tmux is not installed (apt-get install tmux)"


@functools.cache
def _missing_cgroup() -> str | None:
    from hal9999.providers.host import cgroups

    host = cgroups.detect()
    if host is None:
        return "no writable cgroup hierarchy (run as root or in a delegated cgroup)"
    if not {"memory", "pids", "cpu"} <= host.controllers:
        return f"cgroup v{host.version} here lacks memory, pids or cpu controllers"
    return None


def _missing_qemu() -> str | None:
    from tests.qemu_image import image_problem

    return image_problem()


def _missing_sshd() -> str | None:
    from tests.sshd import missing_sshd

    return missing_sshd()


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[Sshd]:
    """A real OpenSSH sshd in its own network namespace (see tests/sshd.py), shared by the
    session's ssh tests; each test uses its own provider state and sandboxes."""
    from tests.sshd import running_sshd

    with running_sshd() as server:
        yield server


@pytest.fixture(scope="session")
def lima_sshd() -> Iterator[Sshd]:
    """The sshd the fake limactl's "VMs" are (its host key changes with each VM)."""
    from tests.sshd import running_sshd

    with running_sshd() as server:
        yield server


@pytest.fixture
def fake_lima(lima_sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake limactl first on PATH (tests/fakes/limactl.py), ``$LIMA_HOME`` in tmp."""
    from tests.sshd import fake_lima_env

    for name, value in fake_lima_env(lima_sshd, tmp_path / "fake-lima").items():
        monkeypatch.setenv(name, value)
    return tmp_path / "fake-lima" / "lima"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A private directory (mode 700) of a short path for the test's unix sockets: under
    pytest's tmp_path, as deep as a deep TMPDIR or xdist makes it, a socket's path passed
    ``sun_path``'s 107 bytes and its bind failed. Removed afterwards."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="hal-s-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def ssh_connections_closed() -> AsyncIterator[None]:
    """Close the test's ssh connections in its own event loop before that loop ends."""
    yield
    from hal9999.providers.ssh.connections import close_all

    await close_all()


def _missing_pm2() -> str | None:
    found = shutil.which("pm2")
    return None if found else "PM2 is not installed (bash scripts/install-pm2.sh)"


def _missing_podman() -> str | None:
    from tests.podman_env import problem

    return problem()


def _missing_ray() -> str | None:
    from tests.ray_cluster import missing_ray

    return missing_ray()


REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "bwrap": _missing_bwrap,
    "tmux": _missing_tmux,
    "cgroup": _missing_cgroup,
    "qemu": _missing_qemu,
    "ssh": _missing_sshd,
    "podman": _missing_podman,
    "pm2": _missing_pm2,
    "ray": _missing_ray,
}
"""Marker name -> why the component is unusable here (None when it is fine)."""


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under ``-n 2 --dist loadgroup`` (a developer's choice), the Ray tests on one worker
    (tests/xdist_groups.py); first, before xdist's own (the first answer is taken)."""
    from tests.xdist_groups import make_scheduler

    return make_scheduler(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every Ray test is in its xdist group (a cheap check, in every run)."""
    from tests.xdist_groups import check

    check(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the qemu test image before any test runs (outside every test's timeout)."""
    if any(item.get_closest_marker("qemu") for item in session.items):
        from tests.qemu_image import prepare

        prepare()
    if any(item.get_closest_marker("podman") for item in session.items):
        from tests.podman_env import prepare as prepare_podman

        prepare_podman()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """Start the run's Ray cluster before the first Ray test, and the nodes a Ray test's
    ``ray_node`` marks ask for before that test, outside its timeout (this wrapper runs
    before pytest-timeout's starts the clock). Not at collection: under xdist
    every worker collects every test, and only the one given the ``ray`` group needs it."""
    ray = item.get_closest_marker("ray") is not None and not _missing_ray()
    if ray:
        from tests.ray_cluster import session_cluster

        # A failure here is reported by each Ray test (through the fixture), not as an
        # internal error of the run.
        with contextlib.suppress(pytest.fail.Exception):
            session_cluster()
    try:
        if ray:
            from tests.ray_cluster import start_marked_nodes

            start_marked_nodes(item)  # outside the timeout too
        return (yield)
    finally:
        if ray:
            from tests.ray_cluster import stop_marked_nodes, stop_when_idle

            stop_marked_nodes()
            stop_when_idle(item)


CRASH_LOGS_SHOWN = 5
"""At most this many of a failed test's crash logs go into its report."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the traceback of every ``hal`` crash it caused: the
    crash log lives under the test's temporary directory, which is gone when CI prints the
    failure, and the one line hal prints names only the file."""
    report: pytest.TestReport = yield
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and isinstance(tmp, Path):
        for log in sorted(tmp.rglob("hal-crash-*.log"))[:CRASH_LOGS_SHOWN]:
            with contextlib.suppress(OSError):
                report.sections.append((f"hal crash log {log}", log.read_text(errors="replace")))
    return report  # type: ignore[no-any-return]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the Ray cluster, if this run started one; kill the keepers (providers/bwrap/keeper.py)
    of sandboxes whose temporary HAL_HOME is gone without a destroy; end the direct process
    manager's supervisor fork server (process/forkserver.py), which a daemon keeps for its
    life, rather than leave it to the interpreter's exit."""
    from tests import ray_cluster

    from hal9999.process import direct
    from hal9999.providers.bwrap import keeper

    ray_cluster.stop_session_cluster()
    keeper.sweep(now=float("inf"))
    direct._STARTS.server.close()


@pytest.fixture(autouse=True)
def _require_components(request: pytest.FixtureRequest) -> None:
    ci = os.environ.get("CI", "").lower() == "true"
    for marker, missing in REQUIREMENTS.items():
        if request.node.get_closest_marker(marker) is None:
            continue
        reason = missing()
        if reason is None:
            continue
        if ci:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _host_totals() -> Iterator[None]:
    """Each test starts from the host's totals: a config a test loads sets its own for the
    process (``hostlimits.use_totals``), which would size the next test's defaults."""
    yield
    from hal9999 import hostlimits

    hostlimits.use_totals(None)


@pytest.fixture
def hal_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty HAL_HOME for the test."""
    home = tmp_path / "halhome"
    home.mkdir()
    monkeypatch.setenv("HAL_HOME", str(home))
    return home


LeftNothing = Callable[[Path, Mapping[str, str]], None]
"""``left_nothing(home, env)``: register a test's HAL_HOME and its hal's environment."""


@pytest.fixture
def left_nothing() -> Iterator[LeftNothing]:
    """For tests that kill a daemon (or any hal) with SIGKILL: what it left running under a
    registered home (its pool keepers, ``hal-launch --keep`` -> bwrap -> ``sleep infinity``,
    re-parented to init; its agents in tmux) is stopped at the end, by the home's own
    records and pids, and the test fails if any process still points into the home."""
    from tests.processes import pointing_into, stop_everything_of

    homes: list[tuple[Path, Mapping[str, str]]] = []
    yield lambda home, env: homes.append((home, env))
    for home, env in homes:
        stop_everything_of(home, env)
        assert pointing_into(home) == {}, f"processes left running in {home}"


@pytest.fixture
def ray_cluster() -> object:
    """A real two-node Ray cluster on loopback (tests/ray_cluster.py), started before the
    first Ray test, outside its timeout, and shared by the Ray tests that follow (per xdist
    worker running Ray tests: their group keeps that to one); in a one-process run it is
    stopped after the last Ray test (``stop_when_idle``), else at the end."""
    from tests.ray_cluster import session_cluster

    return session_cluster()


@pytest.fixture(scope="session")
def do_machines() -> Iterator[list[Sshd]]:
    """Two sshds the fake DigitalOcean API's droplets boot on (host keys change per droplet)."""
    from tests.sshd import running_sshd

    with running_sshd() as first, running_sshd() as second:
        yield [first, second]


@pytest.fixture
def fake_do(do_machines: list[Sshd], monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The fake DigitalOcean API (tests/fakes/do_api.py), its token in HAL_DO_TOKEN."""
    from tests.fakes.do_api import TOKEN, FakeDigitalOcean

    monkeypatch.setenv("HAL_DO_TOKEN", TOKEN)
    monkeypatch.delenv("HAL_DO_SNAPSHOT_ID", raising=False)
    with FakeDigitalOcean(do_machines) as fake:
        # What every hal process of the test reads (a second provider instance too).
        monkeypatch.setenv("HAL_DO_API_URL", fake.url)
        yield fake


@pytest.fixture
def fake_do_settings(fake_do: object, do_machines: list[Sshd]) -> dict[str, object]:
    """``[providers.digitalocean]`` settings pointing at the fake, polling fast."""
    from tests.sshd import USER

    key = str(do_machines[0].key_file)
    return {"snapshot_id": "71829930", "user": USER, "key_file": key, "poll_s": 0.05,
            "boot_timeout_s": 30}  # fmt: skip


@pytest.fixture
def fake_morph(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The fake Morph Cloud API (tests/fakes/morph_api.py), its key in MORPH_API_KEY."""
    from tests.fakes.morph_api import TOKEN, FakeMorph

    monkeypatch.setenv("MORPH_API_KEY", TOKEN)
    monkeypatch.delenv("HAL_MORPH_SNAPSHOT_ID", raising=False)
    with FakeMorph() as fake:
        monkeypatch.setenv("HAL_MORPH_API_URL", fake.url)
        yield fake


@pytest.fixture
def fake_morph_settings(fake_morph: object, sshd_server: Sshd) -> dict[str, object]:
    """``[providers.morph]`` settings: the fake API, the test sshd as Morph's SSH gateway."""
    from tests.sshd import USER

    return {"snapshot_id": "snapshot_golden", "ssh_host": sshd_server.address,
            "ssh_host_key": sshd_server.host_key, "ssh_user": USER,
            "key_file": str(sshd_server.key_file), "poll_s": 0.05,
            "boot_timeout_s": 30}  # fmt: skip


@pytest.fixture(scope="session")
def k8s_server() -> Iterator[object]:
    """The fake Kubernetes API server (tests/fakes/k8s_api.py), shared by the session."""
    from tests.fakes.k8s_api import FakeKube

    with FakeKube() as fake:
        yield fake


@pytest.fixture
def fake_k8s(
    k8s_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """The fake Kubernetes API, reset, reached through a kubeconfig in HAL_K8S_KUBECONFIG
    (what every hal process of the test reads), with the host's root as the pods' image."""
    from tests.fakes.k8s_api import FakeKube

    from hal9999.providers.k8s.config import ENV

    fake = k8s_server
    assert isinstance(fake, FakeKube)
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HAL_K8S_KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.setenv("HAL_K8S_IMAGE", "debian:bookworm")
    monkeypatch.setenv("HAL_K8S_NAMESPACE", f"hal-t{secrets.token_hex(4)}")
    fake.faults.clear()
    fake.stuck_pending, fake.offer, fake.canary, fake.canary_seen = False, None, None, 0
    yield fake
    fake.faults.clear()
    fake.stuck_pending, fake.offer, fake.canary = False, None, None


@pytest.fixture
def fake_k8s_settings(fake_k8s: object) -> dict[str, object]:
    """``[providers.kubernetes]`` settings for the fake, polling fast."""
    return {"poll_s": 0.02, "ready_timeout_s": 20}


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream() as server:
        yield server


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = gitrepo.git

    async def counted(args: Sequence[str], **kwargs: Any) -> str:
        calls.append(next(a for a in args if a != "-c" and "=" not in a))
        return await original(args, **kwargs)

    monkeypatch.setattr(gitrepo, "git", counted)
    return calls
