"""Options of a run that contradict each other are refused in one line naming both, on both
paths (in-process and through ``hal serve``), before any task exists: one never silently
wins over the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.cli.conftest import Hal, no_sessions, one_error_line

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]
AGENT = ("--agent", "true {{prompt_file}}")


@pytest.fixture(params=["in-process", "served"])
def path(request: pytest.FixtureRequest, hal: Hal) -> Iterator[str]:
    if request.param == "served":
        assert hal("serve", "--detach").returncode == 0
    yield str(request.param)
    if request.param == "served":
        assert hal("serve", "--stop").returncode == 0


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("--secret", "HAL_T_X", "--env", "HAL_T_X=2"), "--secret HAL_T_X and --env HAL_T_X=VALUE"),
        (("--egress-only", "none", "--egress", "example.com"),
         "--egress example.com is outside --egress-only none"),
        (("--egress-only", "a.example", "--egress", "b.example"),
         "--egress b.example is outside --egress-only a.example"),
        (("--env", "TERM=dumb"), "--env TERM would be replaced by tmux's own"),
        (("--env", "TERM"), "--env TERM would be replaced by tmux's own"),
    ],
    ids=["secret-and-env", "egress-none", "egress-outside", "term-literal", "term-forwarded"],
)
def test_contradicting_options_are_one_line(
    hal: Hal, hal_env: dict[str, str], path: str, argv: tuple[str, ...], said: str
) -> None:
    out = hal("run", *AGENT, *argv, "x", env={"HAL_T_X": "1", "TERM": "xterm"})
    line = one_error_line(out)
    assert out.returncode == 2 and said in line, (path, line)
    assert no_sessions(hal_env), "refused before any task exists"


def test_agreeing_options_run(hal: Hal, path: str) -> None:
    for argv in (("--secret", "HAL_T_X"), ("--egress-only", "a.example", "--egress", "a.example"),
                 ("--process-manager", "direct", "--env", "TERM=dumb")):  # fmt: skip
        out = hal("run", *AGENT, *argv, "x", env={"HAL_T_X": "1"})
        assert out.returncode == 0, (path, argv, out.stderr)
