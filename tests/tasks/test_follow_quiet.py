"""A run with nothing new to read costs two ``stat`` calls a look, and its output is still
emitted in log order once it comes (100 idle agents used a fifth of a core)."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from hal9999.events.models import Event, Message, Output
from hal9999.redact import SecretMasker
from hal9999.spec import ProcessSpec, ShellCommand
from hal9999.tasks.output import OutputFollower


def follower(tmp_path: Path) -> tuple[OutputFollower, list[Event], Path, Path]:
    log, parsed = tmp_path / "agent.log", tmp_path / "parsed.jsonl"
    ctx: Any = types.SimpleNamespace(
        session=types.SimpleNamespace(log=log), masker=SecretMasker(), on_output=None,
        on_event=None, task=types.SimpleNamespace(id="t1"),
    )  # fmt: skip
    pspec = ProcessSpec(
        name="p", command=ShellCommand(script="true"), log_path=log,
        exit_path=tmp_path / "exit", events_path=parsed,
    )  # fmt: skip
    emitted: list[Event] = []
    follow = OutputFollower(ctx, pspec, 0, 0, emit=lambda _c, e: emitted.append(e))
    return follow, emitted, log, parsed


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Output | Message)]


def test_nothing_new_is_seen_without_opening_either_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    follow, emitted, log, _ = follower(tmp_path)
    log.write_bytes(b"hello\n")
    assert follow.pump() is False
    assert texts(emitted) == ["hello\n"]
    assert follow.pump() is False  # nothing new: read once more, then known quiet
    opened: list[Path] = []
    real_open = Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    for _ in range(5):
        assert follow.pump() is False
    assert opened == []
    with log.open("ab") as fh:
        fh.write(b"world\n")
    follow.pump()
    assert texts(emitted) == ["hello\n", "world\n"]
    assert log in opened


def test_a_parsed_event_held_for_its_log_comes_when_the_log_grows(tmp_path: Path) -> None:
    follow, emitted, log, parsed = follower(tmp_path)
    log.write_bytes(b"abc")
    follow.pump()
    # The parser's record covers log bytes not written yet: held, and the pumps that follow
    # (nothing new in either file) must not lose it.
    record = {"log_end": 6, "event": Message(level="info", text="parsed").model_dump(mode="json")}
    parsed.write_text(json.dumps(record) + "\n")
    for _ in range(3):
        follow.pump()
    assert texts(emitted) == ["abc"]
    with log.open("ab") as fh:
        fh.write(b"def")
    follow.pump()
    assert texts(emitted) == ["abc", "parsed", "def"]


def test_a_split_utf8_character_is_completed_after_a_quiet_look(tmp_path: Path) -> None:
    follow, emitted, log, _ = follower(tmp_path)
    snowman = "☃".encode()
    log.write_bytes(b"x" + snowman[:1])
    follow.pump()
    follow.pump()
    follow.pump()
    with log.open("ab") as fh:
        fh.write(snowman[1:])
    follow.pump()
    assert "".join(texts(emitted)) == "x☃"
    # The end takes whatever is left, quiet or not.
    with log.open("ab") as fh:
        fh.write(b"\xe2")
    follow.pump(final=True)
    assert "".join(texts(emitted)) == "x☃�"


def test_a_whole_character_at_the_end_of_a_burst_is_not_held_back(tmp_path: Path) -> None:
    # It was held until more output came (or the run ended): an agent that printed "ok ✓"
    # and then thought for a minute showed "ok " all that minute.
    follow, emitted, log, _ = follower(tmp_path)
    log.write_bytes("ok ✓".encode())
    follow.pump()
    assert texts(emitted) == ["ok ✓"]
    with log.open("ab") as fh:
        fh.write("😀".encode()[:3])
    follow.pump()
    assert texts(emitted) == ["ok ✓"]  # three bytes of four: held
    with log.open("ab") as fh:
        fh.write("😀".encode()[3:])
    follow.pump()
    assert texts(emitted) == ["ok ✓", "😀"]


@pytest.mark.bwrap
async def test_a_quiet_run_is_looked_at_less_often_until_it_speaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.tasks import git_repo, pooled_service, trivial_request

    from hal9999.tasks import follow

    monkeypatch.setattr(follow, "_QUIET_AFTER_S", 0.3)
    naps: list[tuple[float, int]] = []  # (asked for, output events so far)
    real_nap = follow._EndedSignal.nap
    outputs: list[str] = []

    async def nap(self: follow._EndedSignal, seconds: float) -> None:
        naps.append((seconds, len(outputs)))
        await real_nap(self, seconds)

    monkeypatch.setattr(follow._EndedSignal, "nap", nap)
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    request = trivial_request(git_repo(tmp_path / "repo")).model_copy(
        update={"agent": "sh -c 'sleep 1.5; echo late; sleep 1.5' {{prompt_file}}"}
    )
    task = await service.create(request)
    emit = follow.RunFollower.emit

    def spy(self: Any, ctx: Any, event: Event) -> None:
        if isinstance(event, Output) and event.text:
            outputs.append(event.text)
        emit(self, ctx, event)

    monkeypatch.setattr(follow.RunFollower, "emit", spy)
    done = await service.run(task.id)
    store.close()
    assert done.status == "succeeded", done.error_message
    assert "late" in "".join(outputs)
    before = [s for s, heard in naps if heard == 0]
    after = [s for s, heard in naps if heard > 0]
    # Quiet before the output: the looks spread out; once it came, fast again, then quiet.
    assert follow._QUIET_POLL_S in before, before
    assert after[0] <= follow._POLL_S, after
    assert follow._QUIET_POLL_S in after, after
    # The end is seen through the pidfd, not at the next quiet look: the task's time is
    # its agent's 3 s plus far less than a quiet poll's worth of looks.
    assert len(naps) < 3 / follow._POLL_S, len(naps)


def test_a_large_backlog_is_recorded_a_bounded_piece_a_step(tmp_path: Path) -> None:
    # Each step's output event is masked on the daemon's loop when it is recorded, in one
    # regular expression call that holds the GIL; 4 MiB a step stalled every task and client
    # (by what the agent printed) as long as a backlog lasted.
    follow, emitted, log, _ = follower(tmp_path)
    log.write_bytes(b"x" * (5 << 20))
    steps = 1
    while follow.pump(final=True):
        steps += 1
    sizes = [len(text) for text in texts(emitted)]
    assert sum(sizes) == 5 << 20
    assert max(sizes) <= 1 << 20 and steps >= 5
