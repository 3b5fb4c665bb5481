"""How a run's exit file is read: on every look of the follower and twice more
when the agent ends, so with one ``open``, ``read`` and ``close`` and no file object (which
made nine system calls); anything but a regular file there is never waited on. Counted,
not timed."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hal9999.process.base import read_exit_status


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The file calls made (``os.open``, ``os.read``, ``os.close``; ``io.open`` is a file
    object's)."""
    made: list[str] = []

    def counted(name: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            made.append(name)
            return original(*args, **kwargs)

        return call

    for module, name in ((os, "open"), (os, "read"), (os, "close"), (io, "open")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, counted(f"{module.__name__}.{name}", original))
    return made


@pytest.mark.parametrize(("text", "status"), [("0\n", 0), ("137\n", 137), (" 3 ", 3)])
def test_a_status_is_one_open_one_read_one_close(
    tmp_path: Path, calls: list[str], text: str, status: int
) -> None:
    exit_file = tmp_path / "exit-0"
    exit_file.write_text(text)
    calls.clear()
    assert read_exit_status(exit_file) == status
    assert calls == ["os.open", "os.read", "os.close"]


def test_no_file_is_one_open_and_no_status(tmp_path: Path, calls: list[str]) -> None:
    assert read_exit_status(tmp_path / "exit-0") is None
    assert calls == ["os.open"]


@pytest.mark.parametrize("data", [b"", b"x\n", b"\xff\xfe\n", b"1" * 5000])
def test_what_is_no_status_reads_as_none(tmp_path: Path, data: bytes) -> None:
    exit_file = tmp_path / "exit-0"
    exit_file.write_bytes(data)
    assert read_exit_status(exit_file) is None


def test_a_long_file_is_read_whole_as_before(tmp_path: Path) -> None:
    exit_file = tmp_path / "exit-0"
    exit_file.write_bytes(b" " * 5000 + b"7\n")  # past one read: its status still found
    assert read_exit_status(exit_file) == 7


@pytest.mark.parametrize("held", [False, True])
def test_a_fifo_there_is_never_waited_on(tmp_path: Path, held: bool) -> None:
    exit_file = tmp_path / "exit-0"
    os.mkfifo(exit_file)
    # Held open for writing (nothing written) or by no one: neither blocks the reader.
    holder = os.open(exit_file, os.O_RDWR) if held else None
    found: list[int | None] = []
    reader = threading.Thread(target=lambda: found.append(read_exit_status(exit_file)), daemon=True)
    reader.start()
    reader.join(10)
    try:
        assert not reader.is_alive(), "read_exit_status waited on a FIFO"
        assert found == [None]
    finally:
        if holder is not None:
            os.close(holder)
        elif reader.is_alive():  # let the blocked open go (a writer appears)
            os.close(os.open(exit_file, os.O_WRONLY | os.O_NONBLOCK))
