"""`--ref` values that look like options are refused before any task exists
(`--ref=-f` "succeeded" at HEAD and was recorded as "@ -f")."""

from __future__ import annotations

import pytest
from tests.support.hal import Hal, tasks_json


@pytest.mark.parametrize("ref", ["-f", "--orphan=x", "--upload-pack=touch /tmp/hal-x"])
def test_a_ref_that_looks_like_an_option_is_refused(hal: Hal, ref: str) -> None:
    out = hal("run", f"--ref={ref}", "--agent", "sh agent.sh {{prompt_file}}", "go")
    assert out.returncode == 4, out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    assert "invalid --ref" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert tasks_json(hal) == []


@pytest.mark.parametrize(
    ("ref", "why"),
    # A blank ref made a task, which failed at its clone ("ref ' ' not found").
    [("", "it is empty"), ("a\tb", "a ref cannot hold control characters"), ("  ", "it is blank")],
)
def test_an_empty_or_odd_ref_is_refused_for_what_it_is(hal: Hal, ref: str, why: str) -> None:
    out = hal("run", f"--ref={ref}", "--agent", "sh agent.sh {{prompt_file}}", "go")
    assert out.returncode == 4, out.stderr + out.stdout
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"hal: error: invalid --ref {ref!r}: {why} (")
    assert "'-'" not in line
    assert tasks_json(hal) == []
