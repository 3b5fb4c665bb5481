"""The ``docker`` provider's set-up errors, which need no engine: a clear line, never a
traceback."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from hal9999.errors import CapabilityError, ConfigError, ProviderUnavailable
from hal9999.providers.docker import engine as dockerexec
from hal9999.providers.registry import load_provider
from hal9999.spec import SandboxSpec


async def test_a_missing_sdk_names_the_install(
    hal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)  # import docker -> ImportError
    monkeypatch.setattr(dockerexec, "_CLIENTS", {})
    provider = load_provider("docker", state_dir=hal_home / "docker", settings={"url": "unix:///x"})
    with pytest.raises(ProviderUnavailable) as info:
        await provider.list()
    assert info.value.hint is not None and "pip install 'hal9999[docker]'" in info.value.hint


async def test_an_engine_that_does_not_answer_is_named(
    hal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dockerexec, "_CLIENTS", {})
    # A closed loopback port (the SDK's unix-socket adapter leaks its socket when connect
    # fails, which this suite's warnings-as-errors would report as hal's).
    url = "tcp://127.0.0.1:1"
    provider = load_provider("docker", state_dir=hal_home / "docker", settings={"url": url})
    with pytest.raises(ProviderUnavailable, match=r"127\.0\.0\.1:1") as info:
        await provider.list()
    hint = info.value.hint
    assert hint is not None and "setup-podman.sh" in hint
    with pytest.raises(CapabilityError):
        await provider.create(SandboxSpec(provider="docker", network="host"))


@pytest.mark.parametrize(("settings", "env", "source"), [
    ({"url": "abc"}, {}, "[providers.docker] url"),
    ({}, {"HAL_DOCKER_URL": "abc"}, "HAL_DOCKER_URL"),
    ({}, {"DOCKER_HOST": "abc"}, "DOCKER_HOST"),
])  # fmt: skip
async def test_an_address_the_sdk_cannot_parse_names_what_set_it(
    hal_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
    env: dict[str, str],
    source: str,
) -> None:
    # It was an internal error (the SDK's DockerException) in hal run and hal doctor.
    monkeypatch.setattr(dockerexec, "_CLIENTS", {})
    for var in ("HAL_DOCKER_URL", "DOCKER_HOST"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    provider = load_provider("docker", state_dir=hal_home / "docker", settings=settings)
    with pytest.raises(ConfigError, match=rf"^{re.escape(source)}: 'abc' is not a Docker engine"):
        await provider.list()


def test_the_cli_does_not_import_the_sdk() -> None:
    import subprocess

    code = (
        "import sys, hal9999.cli.main, hal9999.providers.docker.provider;"
        " print('docker' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
