"""A new task's id is checked against the store one candidate at a time: submitting a task
reads one row, not every task id the store ever held (that read grew with the history, and
a daemon takes a thousand submissions in a burst)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.support.tasks import git_repo, make_task, pooled_service

from hal9999.tasks import request as request_module
from hal9999.tasks.request import RunRequest, new_task_id


def test_a_taken_id_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # One read of 40 random bits a candidate, five a letter (a read a letter).
    reads: list[int] = []
    draws = iter([bytes(5), bytes([0x08, 0x42, 0x10, 0x84, 0x21])])

    def token_bytes(count: int) -> bytes:
        reads.append(count)
        return next(draws)

    monkeypatch.setattr(request_module.secrets, "token_bytes", token_bytes)
    asked: list[str] = []

    def taken(candidate: str) -> bool:
        asked.append(candidate)
        return candidate == "00000000"

    assert new_task_id(taken) == "11111111"
    assert asked == ["00000000", "11111111"]
    assert reads == [5, 5]


def test_every_letter_of_an_id_is_drawn_alike() -> None:
    seen: list[set[str]] = [set() for _ in range(8)]
    for _ in range(2000):
        for place, letter in enumerate(new_task_id(lambda candidate: False)):
            seen[place].add(letter)
    assert all(len(letters) == 32 for letters in seen)  # each place takes every letter


async def test_submitting_a_task_reads_no_other_tasks_row(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store, service, _, _ = pooled_service(home, "fake")
    for n in range(300):
        store.insert_task(make_task(home, f"old{n:05d}", "succeeded"))
    assert store.has_task("old00007") and not store.has_task("old0000")
    request = RunRequest(
        prompt="p", repo=str(git_repo(tmp_path / "repo")), ref=None, agent="true {{prompt_file}}",
        provider="fake", process_manager="direct", timeout_s=None,
    )  # fmt: skip
    read_ids: list[int] = []
    real = store._query

    def query(sql: str, params: object = ()) -> list[sqlite3.Row]:
        found = real(sql, params)  # type: ignore[arg-type]
        if "FROM tasks" in sql:
            read_ids.append(len(found))
        return found

    store._query = query  # type: ignore[method-assign]
    task = await service.create(request)
    assert store.get_task(task.id).status == "queued"
    assert read_ids and max(read_ids) <= 1, f"rows of tasks read per query: {read_ids}"
    store.close()
