"""The supervisor every task starts: it imports no models, nor what a run without
secrets or a parser does not use, and still masks and parses when asked; the agent inherits
none of its descriptors. Counted, not timed. (Moved from tests/tasks/test_hot_path.py.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from hal9999.process.launch import SUPERVISOR


def supervisor_modules(
    tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> set[str]:
    """Run the supervisor as the process managers start it; the modules it had imported."""
    *start, code = SUPERVISOR
    wrapped = (
        f"import sys\ntry:\n    exec({code!r})\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(chr(10) + repr(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [*start, wrapped, "--log", str(tmp_path / "log"), "--exit", str(tmp_path / "exit"),
         *options],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    return set(ast.literal_eval(done.stderr.strip().splitlines()[-1]))


def test_the_supervisor_without_a_parser_imports_no_models(tmp_path: Path) -> None:
    modules = supervisor_modules(tmp_path, "--mask-var", "NOPE", "--", "echo", "hi")
    assert (tmp_path / "exit").read_text().strip() == "0"
    assert "hi" in (tmp_path / "log").read_text()
    heavy = {m for m in modules if m.split(".")[0] in {"pydantic", "pydantic_core"}}
    assert heavy == set()
    assert "hal9999.events.models" not in modules and "hal9999.config" not in modules
    # Nor what a run without secrets or a parser does not use (the
    # supervisor is started per task; `site` alone is a fifth of a bare
    # interpreter's start).
    # `signal` builds its enums with `enum`, `functools` and `collections`, on every task.
    unused = {"argparse", "subprocess", "typing", "pathlib", "logging", "json", "re", "site",
              "runpy", "hal9999.redact", "signal", "enum", "functools", "collections",
              # `os` brings `posixpath` and `_collections_abc`: a sixth of its start
              "os", "posixpath", "_collections_abc", "stat"}  # fmt: skip
    assert modules & unused == set()
    assert len(modules) < 35, len(modules)


def test_the_supervisor_still_masks_and_parses_when_asked(tmp_path: Path) -> None:
    captured = Path(__file__).parents[1] / "agents" / "captured" / "claude" / "stdout.jsonl"
    script = f"import sys; print('tok-abcdef123'); sys.stdout.write(open({str(captured)!r}).read())"
    env = {"PATH": os.environ["PATH"], "SECRET_X": "tok-abcdef123"}
    events = tmp_path / "parsed.jsonl"
    modules = supervisor_modules(
        tmp_path, "--mask-var", "SECRET_X", "--parser", "claude", "--events", str(events),
        "--", sys.executable, "-c", script, env=env,
    )  # fmt: skip
    assert (tmp_path / "exit").read_text().strip() == "0"
    log = (tmp_path / "log").read_text()
    assert "tok-abcdef123" not in log and "[REDACTED]" in log
    assert "hal9999.redact" in modules and "site" in modules  # loaded for the parser
    assert '"type": "usage"' in events.read_text()


def test_the_agent_inherits_no_descriptor_of_the_supervisors(tmp_path: Path) -> None:
    *start, code = SUPERVISOR
    read, write = os.pipe()
    try:
        subprocess.run(
            [*start, code, "--log", str(tmp_path / "log"), "--exit", str(tmp_path / "exit"),
             "--", "ls", "/proc/self/fd"],
            pass_fds=(read, write), timeout=60, check=True,
        )  # fmt: skip
    finally:
        os.close(read)
        os.close(write)
    assert sorted(int(fd) for fd in (tmp_path / "log").read_text().split()) == [0, 1, 2, 3]
