"""The ``ray`` provider's settings and ``hal serve --ray``, without a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hal9999.errors import ConfigError, UsageError
from hal9999.providers.ray.address import check_address
from hal9999.providers.ray.provider import RayProvider
from hal9999.providers.registry import load_provider


@pytest.mark.parametrize("good", ["127.0.0.1:6379", "head.internal:6379", "[fd00::1]:6379"])
def test_addresses_accepted(good: str) -> None:
    assert check_address(f" {good} ") == good


@pytest.mark.parametrize("bad", ["", "6379", "host:", "host:0", "host:99999", "a b:1",
                                 "host:1;rm -rf /", "http://host:1/x"])  # fmt: skip
def test_bad_addresses_are_one_clear_line(bad: str) -> None:
    with pytest.raises(UsageError, match="not a Ray cluster address") as info:
        check_address(bad)
    assert info.value.hint and "HOST:PORT" in info.value.hint


def test_address_from_settings_env_and_refused_when_bad(
    hal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAL_RAY_ADDRESS", "10.0.0.5:6379")
    provider = load_provider("ray", state_dir=hal_home / "ray")
    assert isinstance(provider, RayProvider) and provider.address == "10.0.0.5:6379"
    assert provider.capabilities.network_modes == frozenset({"none"})
    settings = {"address": "10.0.0.6:6379", "host_network": True}
    configured = load_provider("ray", state_dir=hal_home / "ray", settings=settings)
    assert isinstance(configured, RayProvider) and configured.address == "10.0.0.6:6379"
    assert "host" in configured.capabilities.network_modes
    with pytest.raises(ConfigError, match="address"):
        load_provider("ray", state_dir=hal_home / "ray", settings={"address": "nonsense"})


def test_serve_refuses_a_bad_ray_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env |= {"HAL_HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    done = subprocess.run([sys.executable, "-m", "hal9999", "serve", "--ray", "no-port"],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "not a Ray cluster address: 'no-port'" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("var", ["HAL_RAY_ADDRESS", "RAY_ADDRESS"])
def test_a_bad_address_variable_is_named(
    hal_home: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    # The line said "e.g. --ray 10.0.0.5:6379" and nothing of the variable that was wrong.
    for name in ("HAL_RAY_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, "head-without-port")
    with pytest.raises(ConfigError) as info:
        load_provider("ray", state_dir=hal_home / "ray")
    assert info.value.message == f"{var}: not a Ray cluster address: 'head-without-port'"
    assert info.value.hint == f"fix or unset {var}"
