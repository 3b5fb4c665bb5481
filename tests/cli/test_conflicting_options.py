"""Options of a run that contradict each other are refused in one line naming both, on both
paths (in-process and through ``hal serve``), before any task exists: one never silently
wins over the other."""

from __future__ import annotations

import pytest
from tests.support.hal import Hal, no_sessions, one_error_line

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]
AGENT = ("--agent", "true {{prompt_file}}")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ("--egress-only", "none", "--egress", "example.com"),
            "--egress example.com is outside --egress-only none",
        ),
        (
            ("--egress-only", "a.example", "--egress", "b.example"),
            "--egress b.example is outside --egress-only a.example",
        ),
        (("--env", "TERM=dumb"), "--env TERM would be replaced by tmux's own"),
        (("--env", "TERM"), "--env TERM would be replaced by tmux's own"),
    ],
    ids=["egress-none", "egress-outside", "term-literal", "term-forwarded"],
)
def test_contradicting_options_are_one_line(
    hal: Hal, hal_env: dict[str, str], cli_path: str, argv: tuple[str, ...], said: str
) -> None:
    out = hal("run", *AGENT, *argv, "x", env={"HAL_T_X": "1", "TERM": "xterm"})
    line = one_error_line(out)
    assert out.returncode == 2 and said in line, (cli_path, line)
    assert no_sessions(hal_env), "refused before any task exists"


def test_agreeing_options_run(hal: Hal, cli_path: str) -> None:
    # `--env X=VALUE --secret X`: a value given here, masked as a secret.
    for argv in (("--secret", "HAL_T_X", "--env", "HAL_T_X=2"),
                 ("--egress-only", "a.example", "--egress", "a.example"),
                 ("--process-manager", "direct", "--env", "TERM=dumb")):  # fmt: skip
        out = hal("run", *AGENT, *argv, "x", env={"HAL_T_X": "1"})
        assert out.returncode == 0, (cli_path, argv, out.stderr)
