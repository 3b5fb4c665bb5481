"""``hal9999.envvars.is_env_name`` accepts what ``[A-Za-z_][A-Za-z0-9_]*`` matched (it checks
without ``re`` now: the thin ``hal run`` imports none, issue 16)."""

from __future__ import annotations

import re

import pytest

from hal9999.envvars import is_env_name

NAMES = [
    "A", "_", "__", "a1", "A_B", "1A", "", " A", "A ", "A\n", "A-B", "A.B", "é", "Aé", "A\u0660",
    "ª", "if", "None", "A=B", "\u212a", "A\x00", "_0",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_an_env_name_is_what_the_pattern_matched(name: str) -> None:
    assert is_env_name(name) == bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))
