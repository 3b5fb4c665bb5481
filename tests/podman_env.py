"""Podman's Docker API service and the hal image the ``podman`` tests run on.

``prepare`` runs once before the first ``podman`` test (from ``pytest_collection_finish``,
outside every test's timeout): it starts ``podman system service`` on ``HAL_PODMAN_SOCKET``
when nothing answers there (a CI job's earlier background processes are gone by the time
the tests run), builds ``hal9999:default`` from the cached debootstrap rootfs the qemu tests
share when the engine lacks it, and exports ``HAL_DOCKER_URL`` for every docker provider.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import warnings
from collections.abc import Iterator
from pathlib import Path

SOCKET = Path(os.environ.get("HAL_PODMAN_SOCKET", "/run/hal-podman/podman.sock"))
URL = f"unix://{SOCKET}"
IMAGE = "hal9999:default"
_state: dict[str, str | None] = {}
_services: list[subprocess.Popen[bytes]] = []


def problem() -> str | None:
    """Why the podman tests cannot run here (None when they can)."""
    prepare()
    return _state["problem"]


def prepare() -> None:
    """Start the service and build the image once per run (per process: xdist's workers
    and runs beside this one take turns by a lock, so one starts or builds, the others
    find it done)."""
    if "problem" not in _state:
        # Probing a service that is still starting leaves the docker SDK's half-made clients
        # behind; they are collected here, so no later test inherits their ResourceWarnings.
        with warnings.catch_warnings(), _prepare_lock():
            warnings.simplefilter("ignore", ResourceWarning)
            _state["problem"] = _prepare()
            gc.collect()


@contextlib.contextmanager
def _prepare_lock() -> Iterator[None]:
    """Held while one process prepares (a lock file beside the qemu test images); without
    a place for it, no lock (a lone run needs none)."""
    from tests.qemu_image import ROOT

    try:
        ROOT.mkdir(parents=True, exist_ok=True)
        fd = os.open(ROOT / ".podman.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _answers() -> bool:
    import docker

    try:
        # The client asks the engine its version already: a dead socket fails here.
        client = docker.DockerClient(base_url=URL, timeout=5)
    except Exception:  # any failure means "not answering"
        return False
    try:
        client.ping()
    except Exception:
        return False
    finally:
        client.close()
    return True


def _prepare() -> str | None:
    if shutil.which("podman") is None:
        return "Podman is not installed (bash scripts/setup-podman.sh)"
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed (uv sync)"
    if not _answers():
        if os.geteuid() != 0:
            return f"no Podman service at {SOCKET} and starting one needs root"
        failed = _start_service()
        if failed:
            return failed
    os.environ["HAL_DOCKER_URL"] = URL
    from hal9999.providers.docker.engine import engine_client

    client = engine_client(URL)
    try:
        client.images.get(IMAGE)
        return _starts_containers()
    except docker.errors.ImageNotFound:
        pass
    except (docker.errors.DockerException, urllib.error.URLError) as exc:
        return f"the Podman service fails: {exc}"
    if os.geteuid() != 0:
        return f"building {IMAGE} needs root (debootstrap)"
    from tests.qemu_image import images_dir

    started = time.monotonic()
    # Built by the real command line, sharing the qemu tests' cached rootfs stage.
    root = images_dir()
    env = {**os.environ, "HAL_QEMU_IMAGES": str(root), "HAL_NO_DAEMON": "1"}
    env["HAL_HOME"] = str(root / ".hal-home")
    build = subprocess.run(
        [sys.executable, "-m", "hal9999", "image", "container", "--name", IMAGE.split(":")[1]],
        env=env, stdout=subprocess.PIPE, stderr=None, text=True, check=False,
    )  # fmt: skip
    if build.returncode != 0 or build.stdout.strip() != IMAGE:
        return f"cannot build {IMAGE}: hal image container exited {build.returncode}"
    print(f"[podman image] built in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return _starts_containers()


def _start_service() -> str | None:
    SOCKET.parent.mkdir(parents=True, exist_ok=True)
    # Kept referenced: the service outlives the run on purpose, and a collected Popen of a
    # live process is a ResourceWarning that pytest turns into some later test's error.
    _services.append(
        subprocess.Popen(
            ["podman", "system", "service", "--time=0", URL],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not _answers():
        if time.monotonic() > deadline:
            return f"podman system service did not answer at {SOCKET}"
        time.sleep(0.2)
    return None


def _start_error() -> str | None:
    """Why the service cannot start a container of the image (None when it can)."""
    import docker

    client = docker.DockerClient(base_url=URL, timeout=60)
    try:
        client.containers.run(IMAGE, ["true"], remove=True, network_mode="none")
    except Exception as exc:  # also the socket gone mid-call (a bare requests error)
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _service_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"podman" in argv[0] and b"service" in argv and URL.encode() in argv:
            pids.append(int(proc.name))
    return pids


def _starts_containers() -> str | None:
    """A service that answers but can no longer start containers is replaced.

    A long-lived ``podman system service`` on a developer machine was seen to answer pings
    while every container start failed with "write child: broken pipe"; a fresh service on
    the same storage starts them. Only the service on this run's socket is restarted.
    """
    error = _start_error()
    if error is None:
        return None
    if os.geteuid() != 0:
        return f"the Podman service at {SOCKET} cannot start containers: {error}"
    print(f"[podman] the service cannot start containers ({error}); restarting it", file=sys.stderr)
    for pid in _service_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _service_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    SOCKET.unlink(missing_ok=True)
    failed = _start_service()
    if failed:
        return failed
    error = _start_error()
    return None if error is None else f"Podman cannot start a container of {IMAGE}: {error}"
