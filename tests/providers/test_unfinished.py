"""Notes of steps a kill could cut in two (:mod:`hal9999.providers.unfinished`): one held by
a live process, this one included, is never taken; one whose step failed or whose process
died is, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal9999.providers import unfinished


def test_a_note_held_by_its_step_is_not_taken_and_goes_when_the_step_finishes(
    tmp_path: Path,
) -> None:
    with unfinished.noted(tmp_path, "abc", "allocating") as note:
        note.record("2000000001")
        assert unfinished.pending(tmp_path) == ["abc"]
        with unfinished.taken(tmp_path, "abc") as other:
            assert other is None, "taken from under a live step"
    assert unfinished.pending(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_note_whose_step_failed_is_taken_once_with_what_it_noted(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), unfinished.noted(tmp_path, "abc", "allocating") as note:
        note.record("2000000001")
        raise RuntimeError("engine refused")
    assert unfinished.pending(tmp_path) == ["abc"]
    with unfinished.taken(tmp_path, "abc") as left:
        assert left is not None and left.text() == "2000000001"
        with unfinished.taken(tmp_path, "abc") as again:
            assert again is None, "two hals undoing one step"
        left.done()
    with unfinished.taken(tmp_path, "abc") as gone:
        assert gone is None
    assert list(tmp_path.iterdir()) == []
