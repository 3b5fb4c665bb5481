"""The digitalocean provider against the fake API (tests/fakes/do_api.py), whose droplets
are real sshds; the contract suite runs against it too (``test_contract.py``, id
``digitalocean``). Faults are injected in the fake: 401, 404, 429 with ``retry-after``,
5xx, slow answers, a droplet stuck in ``new``, a droplet that disappears."""

from __future__ import annotations

import asyncio
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.do_api import TOKEN, FakeDigitalOcean, FakeDroplet
from tests.providers.cloud_helpers import make as make_provider
from tests.providers.cloud_helpers import spec as sandbox_spec
from tests.providers.cloud_helpers import vanish_while_booting

from hal9999.errors import (
    CloudAuthError,
    CloudServerError,
    ConfigError,
    HostKeyRejected,
    ProviderError,
    SpendCapReached,
)
from hal9999.providers.cloud.digitalocean import DigitalOceanProvider
from hal9999.spec import ArgvCommand
from hal9999.store.sqlite import Store

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]


# Call sites name only the settings: the provider class is this module's.
make = partial(make_provider, DigitalOceanProvider)
spec = partial(sandbox_spec, DigitalOceanProvider)


async def test_a_sandbox_is_a_droplet_from_the_snapshot_deleted_with_it(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_do_settings, region="ams3", size="s-1vcpu-2gb",
                    ssh_keys=["3b:16:bf:e4"])  # fmt: skip
    async with await provider.create(spec(workspace)) as sandbox:
        [droplet] = fake_do.live()
        body = droplet.body
        assert body["name"] == f"hal-{sandbox.id}" and body["image"] == 71829930
        assert (body["region"], body["size"], body["ssh_keys"]) == (
            "ams3", "s-1vcpu-2gb", ["3b:16:bf:e4"])  # fmt: skip
        assert body["tags"] == ["hal9999", provider.owner_tag(), f"hal9999-sb-{sandbox.id}"]
        # hal's own host key went in by cloud-init, and is the one verified.
        config = json.loads(body["user_data"].partition("\n")[2])
        record = provider.records.load(sandbox.id)
        assert config["ssh_keys"]["ed25519_public"] == record.host.host_key
        assert record.host.address == droplet.machine.address  # type: ignore[union-attr]
        result = await sandbox.exec(ArgvCommand(argv=("cat", "README")))
        assert result.stdout == b"hello\n"
        with Store.open(hal_home) as store:
            assert store.cloud_usage("digitalocean", now=time.time())[0] == 1
    assert fake_do.live() == []
    assert [s.query["tag_name"] for s in fake_do.seen if s.method == "DELETE"] == [
        [f"hal9999-sb-{sandbox.id}"]]  # fmt: skip
    with Store.open(hal_home) as store:
        assert store.cloud_usage("digitalocean", now=time.time())[0] == 0


async def test_orphan_droplets_of_this_hal_are_deleted_across_pages_others_kept(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_do_settings)
    sandbox = await provider.create(spec(workspace))
    # A crash left 205 droplets of this hal without records (more than one page of 200),
    # and another installation has one of its own in the same account.
    mine = ["hal9999", provider.owner_tag()]
    with fake_do.lock:
        for n in range(205):
            sid = f"{n:012x}"
            fake_do.droplets[9000 + n] = FakeDroplet(9000 + n, {
                "name": f"hal-{sid}", "image": 1, "region": "nyc3", "size": "s-1vcpu-1gb",
                "tags": [*mine, f"hal9999-sb-{sid}"]}, status="active")  # fmt: skip
        fake_do.droplets[99999] = FakeDroplet(99999, {
            "name": "theirs", "image": 1, "region": "nyc3", "size": "s-1vcpu-1gb",
            "tags": ["hal9999", "hal9999-0123456789ab", "hal9999-sb-aaaaaaaaaaaa"]})  # fmt: skip
    infos = await provider.list()
    assert [info.id for info in infos] == [sandbox.id]
    left = {d.id for d in fake_do.live()}
    assert 99999 in left and len(left) == 2
    pages = [s.query.get("page") for s in fake_do.seen if s.method == "GET" and s.query]
    assert ["2"] in pages
    await provider.destroy(sandbox.id)


async def test_a_droplet_deleted_behind_hals_back_is_forgotten(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_do_settings)
    sandbox = await provider.create(spec(workspace))
    [droplet] = fake_do.live()
    fake_do.vanish(droplet.id)
    record = provider.records.load(sandbox.id)
    provider.records.save(record.model_copy(update={"created_at": time.time() - 60}))
    assert await provider.list() == []
    with Store.open(hal_home) as store:
        assert store.cloud_usage("digitalocean", now=time.time())[0] == 0


async def test_concurrent_creates_never_pass_the_machine_cap(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_do_settings, max_machines=2)
    other = make(hal_home, fake_do_settings, max_machines=2)  # a second hal process's view
    results = await asyncio.gather(
        *(p.create(spec(workspace)) for p in (provider, other, provider, other, provider)),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, SpendCapReached)]
    assert len(made) == 2 and len(refused) == 3, results
    assert len(fake_do.calls("POST")) == 2  # the vendor was never asked for a third machine
    assert "max_machines" in (refused[0].hint or "")
    for sandbox in made:
        await sandbox.__aexit__(None, None, None)
    assert fake_do.live() == []


async def test_machine_hours_a_day_are_capped(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_do_settings, max_machine_hours_per_day=1.5,
                    reserve_hours=1.0)  # fmt: skip
    first = await provider.create(spec(workspace))
    with pytest.raises(SpendCapReached) as info:
        await provider.create(spec(workspace))
    assert "machine-hours" in str(info.value)
    await provider.destroy(first.id)
    # An ended machine counts what it ran (seconds here), so another fits.
    second = await provider.create(spec(workspace))
    await provider.destroy(second.id)
    assert len(fake_do.calls("POST")) == 2


async def test_a_wrong_token_is_one_line_without_the_token(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HAL_DO_TOKEN", "dop_v1_wrong_secret_value")
    provider = make(hal_home, fake_do_settings)
    with pytest.raises(CloudAuthError) as info:
        await provider.create(spec(workspace))
    line = info.value.one_line()
    assert "401" in line and "token" in line and "wrong_secret" not in line
    assert info.value.code == "cloud_auth"
    with Store.open(hal_home) as store:  # the reservation was given back
        assert store.cloud_usage("digitalocean", now=time.time())[0] == 0


async def test_a_missing_token_or_snapshot_names_the_setting(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("HAL_DO_TOKEN")
    with pytest.raises(ConfigError) as info:
        await make(hal_home, fake_do_settings).create(spec(workspace))
    assert "HAL_DO_TOKEN" in (info.value.hint or "")
    monkeypatch.setenv("HAL_DO_TOKEN", TOKEN)
    with pytest.raises(ConfigError) as info:
        await make(hal_home, fake_do_settings, snapshot_id=None).create(spec(workspace))
    assert "HAL_DO_SNAPSHOT_ID" in (info.value.hint or "")
    assert fake_do.calls("POST") == []


async def test_429_with_retry_after_is_waited_for_and_retried(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    fake_do.fail(429, method="POST", retry_after=1)
    provider = make(hal_home, fake_do_settings)
    sandbox = await provider.create(spec(workspace))
    first, second = fake_do.calls("POST")
    assert first.status == 429 and second.status == 202
    assert second.at - first.at >= 0.95
    await provider.destroy(sandbox.id)


async def test_a_spent_rate_limit_window_is_waited_out_before_calling(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_do_settings)
    sandbox = await provider.create(spec(workspace))
    fake_do.exhaust_window(reset_in_s=1.0)
    reset_at = fake_do.reset_at
    fake_do.remaining = 1  # one call left: its answer says 0 remain, the next must wait
    before = len(fake_do.seen)
    await provider.list()
    await provider.destroy(sandbox.id)
    calls = fake_do.seen[before:]
    assert [c.status for c in calls] == [200, 204]  # no 429 earned
    assert calls[1].at >= reset_at


async def test_5xx_is_retried_for_reads_and_deletes_not_for_create(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_do_settings)
    fake_do.fail(500, method="GET", times=2)
    fake_do.fail(503, method="DELETE", times=1)
    sandbox = await provider.create(spec(workspace))
    await provider.destroy(sandbox.id)
    assert fake_do.live() == []
    # A failed create is not sent twice (it may have made a machine): hal cleans up by tag.
    fake_do.fail(500, method="POST")
    with pytest.raises(CloudServerError):
        await provider.create(spec(workspace))
    assert len(fake_do.calls("POST")) == 2
    assert fake_do.live() == [] and await provider.list() == []


async def test_slow_answers_time_out_as_one_clear_error(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    fake_do.slow_s = 1.0
    provider = make(hal_home, fake_do_settings, api_timeout_s=0.3, api_attempts=1)
    with pytest.raises(CloudServerError) as info:
        await provider.create(spec(workspace))
    assert "Timeout" in str(info.value)
    fake_do.slow_s = 0
    await asyncio.sleep(1.2)  # the slow create landed after hal gave up: reconcile takes it
    await provider.list()
    assert fake_do.live() == []


async def test_a_droplet_stuck_in_new_is_deleted_after_the_boot_timeout(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    fake_do.stuck = True
    provider = make(hal_home, fake_do_settings, boot_timeout_s=0.5)
    with pytest.raises(ProviderError) as info:
        await provider.create(spec(workspace))
    assert "still 'new'" in str(info.value)
    assert fake_do.live() == [] and await provider.list() == []
    with Store.open(hal_home) as store:
        assert store.cloud_usage("digitalocean", now=time.time())[0] == 0


async def test_a_droplet_that_disappears_while_booting_is_reported(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    fake_do.stuck = True
    provider = make(hal_home, fake_do_settings)
    task = asyncio.create_task(vanish_while_booting(fake_do))
    with pytest.raises(ProviderError) as info:
        await provider.create(spec(workspace))
    await task
    assert "disappeared" in str(info.value)


async def test_a_droplet_presenting_another_host_key_is_refused_and_deleted(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path,
    workspace: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # As if the image ignored cloud-init's keys (or someone sits in the middle).
    monkeypatch.setattr("tests.fakes.do_api._apply_cloud_init", lambda data, machine: None)
    provider = make(hal_home, fake_do_settings)
    with pytest.raises(HostKeyRejected):
        await provider.create(spec(workspace))
    assert fake_do.live() == [] and await provider.list() == []


@pytest.mark.skipif(
    not os.environ.get("HAL_DO_SMOKE_TOKEN") or os.environ.get("CI") == "true",
    reason="opt-in smoke test against the real DigitalOcean API (HAL_DO_SMOKE_TOKEN, "
    "HAL_DO_SNAPSHOT_ID, HAL_DO_KEY_FILE; never in CI)",
)
async def test_smoke_against_real_digitalocean(
    hal_home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAL_DO_TOKEN", os.environ["HAL_DO_SMOKE_TOKEN"])
    monkeypatch.delenv("HAL_DO_API_URL", raising=False)
    provider = make(hal_home, {"max_machines": 1})
    async with await provider.create(spec(workspace)) as sandbox:
        assert (await sandbox.exec(ArgvCommand(argv=("cat", "README")))).stdout == b"hello\n"
    assert await provider.list() == []


def test_the_golden_snapshot_script_parses_and_forgets_the_machines_host_keys() -> None:
    import subprocess

    script = Path(__file__).parents[2] / "scripts" / "golden-snapshot.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    # The snapshot must boot into hal's user data and take hal's host key, never keep one.
    assert "cloud-init clean" in text and "rm -f /etc/ssh/ssh_host_*" in text
