"""Per-provider settings: HAL_<PROVIDER>_* over HAL_* over [pool.<provider>] over [pool]."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal9999.config import HalConfig
from hal9999.errors import ConfigError
from hal9999.pool.settings import (
    network_of,
    policy_of,
    provider_settings,
    resources_of,
    scheduler_settings,
)
from hal9999.spec import Resources
from hal9999.trust import narrow_project_table


def config(tmp_path: Path, **fields: object) -> HalConfig:
    return HalConfig.model_validate({"home": str(tmp_path), **fields})


def test_precedence(tmp_path: Path) -> None:
    cfg = config(tmp_path, pool={"max_size": 3, "min_warm": 1, "local": {"max_size": 5}})
    assert provider_settings(cfg, {}, "bwrap").max_size == 3
    assert provider_settings(cfg, {}, "local").max_size == 5
    env = {"HAL_MAX_POOL_SIZE": "7"}
    assert provider_settings(cfg, env, "local").max_size == 7, "HAL_* beats config"
    env["HAL_LOCAL_MAX_POOL_SIZE"] = "9"
    assert provider_settings(cfg, env, "local").max_size == 9, "HAL_<P>_* beats HAL_*"
    assert provider_settings(cfg, env, "bwrap").max_size == 7
    assert provider_settings(cfg, {}, "bwrap").min_warm == 1


def test_network_resources_and_policy_per_provider(tmp_path: Path) -> None:
    cfg = config(tmp_path, network="none", resources={"memory_mb": 512})
    env = {"HAL_LOCAL_NETWORK": "host", "HAL_BWRAP_MEMORY_MB": "256", "HAL_NETWORK": "none"}
    local, bwrap = provider_settings(cfg, env, "local"), provider_settings(cfg, env, "bwrap")
    assert network_of(cfg, local) == "host" and network_of(cfg, bwrap) == "none"
    assert resources_of(cfg, bwrap) == Resources(memory_mb=256)
    assert resources_of(cfg, local) == Resources(memory_mb=512)
    assert policy_of("bwrap", bwrap) == "reset" and policy_of("local", local) == "destroy"
    assert policy_of("local", provider_settings(cfg, {"HAL_POOL_POLICY": "reset"}, "local")) == (
        "reset"
    )


def test_a_provider_overrides_the_file_limit_under_the_resources_rule(tmp_path: Path) -> None:
    # [pool.<p>] refused disk_files (extra="forbid") and HAL_<P>_DISK_FILES was
    # never read, so a provider's sandboxes could not get a file limit of their own.
    cfg = config(tmp_path, resources={"disk_files": 5000}, pool={"bwrap": {"disk_files": 300}})
    bwrap = resources_of(cfg, provider_settings(cfg, {}, "bwrap"))
    assert bwrap == Resources(disk_files=300)
    assert resources_of(cfg, provider_settings(cfg, {}, "local")) == Resources(disk_files=5000)
    env = {"HAL_BWRAP_DISK_FILES": "40", "HAL_DISK_FILES": "7"}
    settings = provider_settings(cfg, env, "bwrap")
    assert resources_of(cfg, settings) == Resources(disk_files=40), "HAL_<P>_ beats [pool.<p>]"
    # HAL_DISK_FILES is [resources]' own (the config's load reads it), not a pool setting.
    assert resources_of(cfg, provider_settings(cfg, env, "local")).disk_files == 5000
    refused = ((-1, "a number at least 0"), (1 << 41, "0 .no limit. or a number of files up to"))
    for bad, said in refused:
        with pytest.raises(ConfigError, match=f"disk_files: expected {said}"):
            provider_settings(config(tmp_path, pool={"bwrap": {"disk_files": bad}}), {}, "bwrap")
    # An untrusted hal.toml sets no pool setting at all, so it cannot raise a provider's.
    untrusted = {"pool": {"bwrap": {"disk_files": 0}}}
    assert narrow_project_table(untrusted, {}) == ({}, ["pool"])


def test_bad_values_say_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HAL_BWRAP_"):
        provider_settings(config(tmp_path), {"HAL_BWRAP_MAX_POOL_SIZE": "lots"}, "bwrap")
    assert scheduler_settings(config(tmp_path), {"HAL_MAX_CONCURRENT": "3"}).max_concurrent == 3
    with pytest.raises(ConfigError, match="scheduler"):
        scheduler_settings(config(tmp_path, scheduler={"max_concurrent": 0}), {})


def test_config_file_values_are_strict_variables_are_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        provider_settings(config(tmp_path, pool={"bwrap": {"max_size": "4"}}), {}, "bwrap")
    assert info.value.message == "[pool.bwrap] max_size: expected a whole number"
    with pytest.raises(ConfigError, match=r"^\[scheduler\] max_concurrent: expected a whole"):
        scheduler_settings(config(tmp_path, scheduler={"max_concurrent": True}), {})
    assert provider_settings(config(tmp_path, pool={"idle_timeout_s": 30}), {}, "bwrap") == (
        provider_settings(config(tmp_path), {"HAL_IDLE_TIMEOUT_S": "30"}, "bwrap")
    )
    overridden = config(tmp_path, pool={"max_size": "4"})
    assert provider_settings(overridden, {"HAL_MAX_POOL_SIZE": "3"}, "bwrap").max_size == 3


@pytest.mark.parametrize(
    ("pool", "env", "expected"),
    [({"max_size": 1, "min_warm": 5}, {}, "[pool] min_warm 5 is above max_size 1"),
     ({"bwrap": {"key_max_size": 1, "key_min_warm": 2}}, {},
      "[pool.bwrap] key_min_warm 2 is above key_max_size 1"),
     ({"max_size": 2}, {"HAL_BWRAP_MIN_WARM": "3"},
      "HAL_BWRAP_MIN_WARM: min_warm 3 is above max_size 2")],
)  # fmt: skip
def test_a_warm_floor_above_its_cap_is_refused(
    tmp_path: Path, pool: dict[str, object], env: dict[str, str], expected: str
) -> None:
    # The keeper could never keep it: it tried each tick and kept fewer, without a word.
    with pytest.raises(ConfigError) as info:
        provider_settings(config(tmp_path, pool=pool), env, "bwrap")
    assert info.value.message == expected


def test_a_warm_floor_at_its_cap_is_fine(tmp_path: Path) -> None:
    cfg = config(tmp_path, pool={"max_size": 2, "min_warm": 2, "key_min_warm": 2})
    assert provider_settings(cfg, {}, "bwrap").key_min_warm == 2
