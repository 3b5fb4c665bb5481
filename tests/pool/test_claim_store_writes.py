"""A claim never waits for the store's write of a sandbox row (under load a row's
write can wait long for the write lock and a thread, and a reset wrote its sandbox's row
while it held the pool's lock, so every claim waited that long too); the rows still end
with each sandbox's latest state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.support.pool import make, spec_of

from hal9999.store import Store
from hal9999.store.sandboxrow import SandboxRow


class HeldWrites(Store):
    """A store whose sandbox writes wait for :attr:`go` once :attr:`hold` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold = threading.Event()
        self.held = threading.Event()
        self.go = threading.Event()
        self.writes: list[list[tuple[str, str]]] = []
        """The (id, state) of the rows of each write, in order."""

    def put_sandboxes(self, rows: Sequence[SandboxRow]) -> None:
        self.writes.append([(row.id, row.state) for row in rows])
        if self.hold.is_set():
            self.held.set()
            assert self.go.wait(30), "the test never let the write go"
        super().put_sandboxes(rows)


async def test_a_claim_waits_for_no_row_write_and_the_rows_end_current(tmp_path: Path) -> None:
    store = HeldWrites(tmp_path / "hal.db")
    provider, pool = make(tmp_path, store, max_size=2)
    provider.gate.set()
    assert await pool.warm(spec_of(tmp_path, 0), 2) == 2
    first = await pool.claim(spec_of(tmp_path, 1), task_id="t1")
    store.hold.set()
    # The first sandbox comes back; its reset ends and its idle row's write is held.
    await pool.release(first, wait=False)
    assert await asyncio.to_thread(store.held.wait, 10)
    try:
        second = await asyncio.wait_for(pool.claim(spec_of(tmp_path, 2), task_id="t2"), 5)
    finally:
        store.go.set()
    assert second.warm and second.sandbox.id != first.sandbox.id
    await pool.close()  # the writes left behind land
    rows = {row.id: (row.state, row.task_id) for row in store.list_sandboxes()}
    assert rows == {first.sandbox.id: ("idle", None), second.sandbox.id: ("leased", "t2")}
    store.close()


async def test_rows_owed_while_a_write_runs_go_in_one_write(tmp_path: Path) -> None:
    # Each sandbox row (two a task) as a write of its own, a thread hop and a
    # transaction each, would queue one behind the other at 16 tasks at once.
    store = HeldWrites(tmp_path / "hal.db")
    provider, pool = make(tmp_path, store, max_size=4)
    provider.gate.set()
    assert await pool.warm(spec_of(tmp_path, 0), 4) == 4
    store.writes.clear()
    store.hold.set()
    first = await pool.claim(spec_of(tmp_path, 1), task_id="t1")
    assert await asyncio.to_thread(store.held.wait, 10)  # its row's write is under way
    store.hold.clear()
    others = [await pool.claim(spec_of(tmp_path, n), task_id=f"t{n}") for n in (2, 3, 4)]
    store.go.set()
    await pool.close()  # the writes left behind land
    leased = [(lease.sandbox.id, "leased") for lease in (first, *others)]
    assert store.writes == [leased[:1], leased[1:]]
    rows = {row.id: (row.state, row.task_id) for row in store.list_sandboxes()}
    assert rows == {
        lease.sandbox.id: ("leased", f"t{n}") for n, lease in enumerate((first, *others), 1)
    }
    store.close()
