"""The morph provider and its API client against the fake Morph API
(tests/fakes/morph_api.py), with the test sshd as Morph's SSH gateway; the contract suite
runs against it too (``test_contract.py``, id ``morph``)."""

from __future__ import annotations

import asyncio
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.morph_api import TOKEN, FakeMorph
from tests.providers.cloud_helpers import make as make_provider
from tests.providers.cloud_helpers import spec as sandbox_spec
from tests.providers.cloud_helpers import vanish_while_booting

from hal9999.errors import (
    CloudApiError,
    CloudAuthError,
    CloudNotFound,
    CloudRateLimited,
    CloudServerError,
    CloudValidationError,
    ProviderError,
    SpendCapReached,
)
from hal9999.providers.cloud.api import RateWindow, RetryPolicy
from hal9999.providers.cloud.morph import MorphProvider
from hal9999.providers.cloud.morph_api import STATUS, Instance, MorphApi
from hal9999.spec import ArgvCommand

pytestmark = [pytest.mark.ssh, pytest.mark.bwrap,
              pytest.mark.usefixtures("ssh_connections_closed")]  # fmt: skip


# Call sites name only the settings: the provider class is this module's.
make = partial(make_provider, MorphProvider)
spec = partial(sandbox_spec, MorphProvider)


def api(fake: FakeMorph, attempts: int = 2, timeout_s: float = 5.0) -> MorphApi:
    policy = RetryPolicy(attempts=attempts, backoff_s=0.01, timeout_s=timeout_s)
    return MorphApi(token=TOKEN, base_url=fake.url, policy=policy, window=RateWindow())


def test_status_mapping_is_the_documented_table() -> None:
    assert STATUS == {"pending": "booting", "ready": "ready", "paused": "stopped",
                      "saving": "stopping", "error": "error"}  # fmt: skip
    shape = {"id": "morphvm_1", "created": 1, "spec": {"vcpus": 1, "memory": 1, "disk_size": 1},
             "refs": {"snapshot_id": "s", "image_id": "i"}}  # fmt: skip
    for morph, hal in STATUS.items():
        assert Instance.model_validate(shape | {"status": morph}).hal_status() == hal


@pytest.mark.parametrize(("status", "error"), [
    (400, CloudValidationError), (422, CloudValidationError), (401, CloudAuthError),
    (404, CloudNotFound), (429, CloudRateLimited), (500, CloudServerError),
    (503, CloudServerError),
])  # fmt: skip
async def test_http_errors_map_to_hal_errors(
    fake_morph: FakeMorph, status: int, error: type[CloudApiError]
) -> None:
    fake_morph.fail(status, times=5)
    client = api(fake_morph)
    try:
        with pytest.raises(error) as info:
            await client.list({})
    finally:
        await client.aclose()
    assert info.value.code == error.code and str(status) in str(info.value)
    assert TOKEN not in info.value.one_line()


async def test_429_and_5xx_are_retried_with_backoff(fake_morph: FakeMorph) -> None:
    fake_morph.fail(429, retry_after=1)
    fake_morph.fail(502, times=2)
    client = api(fake_morph, attempts=4)
    started = time.monotonic()
    try:
        assert await client.list({}) == []
    finally:
        await client.aclose()
    assert time.monotonic() - started >= 0.95
    assert [c.status for c in fake_morph.seen] == [429, 502, 502, 200]


async def test_a_slow_api_times_out_and_a_bad_body_is_refused(fake_morph: FakeMorph) -> None:
    fake_morph.slow_s = 0.5
    client = api(fake_morph, attempts=1, timeout_s=0.2)
    try:
        with pytest.raises(CloudServerError, match="Timeout"):
            await client.list({})
        fake_morph.slow_s = 0
        fake_morph.fail(200, path_prefix="/instance")  # a 200 whose body is no instance list
        with pytest.raises(CloudApiError, match="unexpected body"):
            await client.list({})
    finally:
        await client.aclose()


async def test_an_instance_boots_is_probed_paused_resumed_and_deleted(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_morph_settings, ttl_s=600)
    sandbox = await provider.create(spec(workspace))
    [inst] = fake_morph.live()
    assert inst.snapshot_id == "snapshot_golden" and inst.ttl_action == "pause"
    assert inst.ttl_seconds == 600 and inst.metadata["hal9999_sandbox"] == sandbox.id
    assert ["true"] in fake_morph.execs  # readiness is hal's: a probe through /exec
    assert (await sandbox.exec(ArgvCommand(argv=("cat", "README")))).stdout == b"hello\n"
    assert await provider.status(sandbox.id) == "ready"
    await provider.stop(sandbox.id)
    assert await provider.status(sandbox.id) == "stopped"
    again = await provider.start(sandbox.id)
    assert await provider.status(sandbox.id) == "ready"
    assert (await again.exec(ArgvCommand(argv=("true",)))).ok
    await provider.destroy(sandbox.id)
    assert fake_morph.live() == []


async def test_the_ttl_pauses_an_idle_instance_and_start_resumes_it(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_morph_settings)
    sandbox = await provider.create(spec(workspace))
    [inst] = fake_morph.live()
    inst.ttl_seconds = 1  # as if an hour had passed idle
    await asyncio.sleep(1.2)
    assert await provider.status(sandbox.id) == "stopped"
    await provider.start(sandbox.id)
    assert await provider.status(sandbox.id) == "ready" and inst.ttl_seconds == 3600
    await provider.destroy(sandbox.id)


async def test_snapshot_and_fork_boot_copies_from_it(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_morph_settings)
    assert provider.capabilities.snapshot
    first = await provider.create(spec(workspace))
    image = await provider.snapshot(first.id, "base")
    copies = await provider.fork(image, 2, spec(workspace))
    assert len({c.id for c in copies}) == 2
    assert sorted(i.snapshot_id for i in fake_morph.live()) == sorted(
        ["snapshot_golden", image, image])  # fmt: skip
    for sandbox in [first, *copies]:
        assert (await sandbox.exec(ArgvCommand(argv=("true",)))).ok
        await provider.destroy(sandbox.id)
    assert fake_morph.live() == []
    client = api(fake_morph)
    try:  # the API's own branch: a snapshot and N instances in one call
        one = await provider.create(spec(workspace))
        [inst] = fake_morph.live()
        snap, made = await client.branch(inst.id, 3)
        assert len(made) == 3 and all(i.refs.snapshot_id == snap.id for i in made)
        for extra in made:
            await client.delete(extra.id)
        await provider.destroy(one.id)
    finally:
        await client.aclose()


@pytest.mark.parametrize("fault", ["stuck", "boot_error", "vanish"])
async def test_an_instance_that_never_gets_ready_is_deleted(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path, fault: str,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_morph_settings, boot_timeout_s=0.5)
    fake_morph.stuck = fault in ("stuck", "vanish")
    fake_morph.boot_error = fault == "boot_error"
    watcher = None
    if fault == "vanish":
        watcher = asyncio.create_task(vanish_while_booting(fake_morph))
    with pytest.raises(ProviderError) as info:
        await provider.create(spec(workspace))
    if watcher is not None:
        await watcher
    expected = {"stuck": "still booting", "boot_error": "failed to boot",
                "vanish": "disappeared"}[fault]  # fmt: skip
    assert expected in str(info.value)
    assert fake_morph.live() == [] and await provider.list() == []


async def test_orphans_are_deleted_and_other_owners_kept(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_morph_settings)
    sandbox = await provider.create(spec(workspace))
    with fake_morph.lock:
        fake_morph._boot(
            "snapshot_golden",
            {"hal9999": provider.owner_id(), "hal9999_sandbox": "0123456789ab"},
            None,
            "pause",
        )
        theirs = fake_morph._boot("snapshot_golden", {"hal9999": "someone-else",
                                                      "hal9999_sandbox": "aaaaaaaaaaaa"},
                                  None, "pause")  # fmt: skip
    assert [info.id for info in await provider.list()] == [sandbox.id]
    assert len(fake_morph.live()) == 2 and theirs.id in {i.id for i in fake_morph.live()}
    await provider.destroy(sandbox.id)


async def test_a_listing_during_a_create_spares_the_booting_instance(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    # The record is written only once the instance answers; reconcile (any listing, from
    # this or another hal process) must not take the booting instance for an orphan.
    fake_morph.boot_s = 1.0
    provider = make(hal_home, fake_morph_settings)
    other = make(hal_home, fake_morph_settings)  # as another hal process would see it
    creating = asyncio.create_task(provider.create(spec(workspace)))
    while not fake_morph.live():
        await asyncio.sleep(0.02)
    assert await other.list() == []
    sandbox = await creating
    assert [info.id for info in await other.list()] == [sandbox.id]
    await provider.destroy(sandbox.id)


async def test_a_spend_record_without_instance_or_sandbox_is_ended(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    # A crash between reserving and starting leaves a reservation nothing answers to; it
    # must not hold a place under the cap for ever.
    provider = make(hal_home, fake_morph_settings, max_machines=1)
    # The same state dir, configured so that a whole create may take only 1.4 s.
    quick = make(hal_home, fake_morph_settings, max_machines=1, boot_timeout_s=0.2,
                 api_timeout_s=1.0, api_attempts=1)  # fmt: skip
    await provider.ledger.reserve("0123456789ab")
    await quick.list()
    assert await provider.ledger.open_machines() == ["0123456789ab"], "may still be booting"
    await asyncio.sleep(1.5)
    await quick.list()
    assert await provider.ledger.open_machines() == []
    sandbox = await provider.create(spec(workspace))
    await provider.destroy(sandbox.id)


async def test_concurrent_creates_respect_the_spend_cap(
    fake_morph: FakeMorph, fake_morph_settings: dict[str, Any], hal_home: Path,
    workspace: Path,
) -> None:  # fmt: skip
    provider = make(hal_home, fake_morph_settings, max_machines=1)
    results = await asyncio.gather(*(provider.create(spec(workspace)) for _ in range(3)),
                                   return_exceptions=True)  # fmt: skip
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1 and sum(isinstance(r, SpendCapReached) for r in results) == 2
    assert len(fake_morph.calls("POST", "/instance")) == 1
    await provider.destroy(made[0].id)


@pytest.mark.skipif(
    not os.environ.get("HAL_MORPH_SMOKE_KEY") or os.environ.get("CI") == "true",
    reason="opt-in smoke test against the real Morph Cloud (HAL_MORPH_SMOKE_KEY, "
    "HAL_MORPH_SNAPSHOT_ID, HAL_MORPH_KEY_FILE, HAL_MORPH_HOST_KEY; never in CI)",
)
async def test_smoke_against_real_morph(
    hal_home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MORPH_API_KEY", os.environ["HAL_MORPH_SMOKE_KEY"])
    monkeypatch.delenv("HAL_MORPH_API_URL", raising=False)
    provider = make(hal_home, {"ssh_host_key": os.environ["HAL_MORPH_HOST_KEY"],
                               "max_machines": 1})  # fmt: skip
    async with await provider.create(spec(workspace)) as sandbox:
        assert (await sandbox.exec(ArgvCommand(argv=("cat", "README")))).stdout == b"hello\n"
    assert await provider.list() == []
