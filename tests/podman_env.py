"""Podman's Docker API service and the hal image the ``podman`` tests run on.

``prepare`` runs once before the first ``podman`` test (from ``pytest_collection_finish``,
outside every test's timeout): it starts ``podman system service`` on ``HAL_PODMAN_SOCKET``
when nothing answers there (a CI job's earlier background processes are gone by the time
the tests run), builds ``hal9999:default`` from the cached debootstrap rootfs the qemu tests
share when the engine lacks it, and exports ``HAL_DOCKER_URL`` for every docker provider.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

SOCKET = Path(os.environ.get("HAL_PODMAN_SOCKET", "/run/hal-podman/podman.sock"))
URL = f"unix://{SOCKET}"
IMAGE = "hal9999:default"
_state: dict[str, str | None] = {}


def problem() -> str | None:
    """Why the podman tests cannot run here (None when they can)."""
    prepare()
    return _state["problem"]


def prepare() -> None:
    """Start the service and build the image once per run."""
    if "problem" not in _state:
        _state["problem"] = _prepare()


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
        SOCKET.parent.mkdir(parents=True, exist_ok=True)
        subprocess.Popen(
            ["podman", "system", "service", "--time=0", URL],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not _answers():
            if time.monotonic() > deadline:
                return f"podman system service did not answer at {SOCKET}"
            time.sleep(0.2)
    os.environ["HAL_DOCKER_URL"] = URL
    from hal9999.providers.dockerexec import engine_client

    client = engine_client(URL)
    try:
        client.images.get(IMAGE)
        return None
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
    return None
