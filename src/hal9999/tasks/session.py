"""A task's session directory on the host: everything that outlives its sandboxes.

::

    sessions/<task-id>/
      workspace/     the repository checkout; /workspace inside the sandbox
      home/          the agent's HOME and config; /home/hal inside
      input/         prompt.txt (read-only inside, at /hal)
      agent.log      the agent's output (masked)
      events.jsonl   typed events
      run/           exit status of each run, runner log, branches hal moved
      result.patch   the task's change against its base commit
      result.bundle  the branch as a git bundle (for URL sources)
"""

from pathlib import Path
from typing import NamedTuple

from hal9999.spec import Bind

WORKSPACE_TARGET = "/workspace"
HOME_TARGET = "/home/hal"
INPUT_TARGET = "/hal"


class Session(NamedTuple):
    """Paths of one task's session directory."""

    root: Path

    @property
    def workspace(self) -> Path:
        """The repository checkout."""
        return self.root / "workspace"

    @property
    def home(self) -> Path:
        """The agent's home directory."""
        return self.root / "home"

    @property
    def input(self) -> Path:
        """Read-only inputs for the agent."""
        return self.root / "input"

    @property
    def prompt_file(self) -> Path:
        """The current prompt."""
        return self.input / "prompt.txt"

    @property
    def log(self) -> Path:
        """The agent's combined output."""
        return self.root / "agent.log"

    @property
    def events(self) -> Path:
        """The task's event stream."""
        return self.root / "events.jsonl"

    @property
    def run_dir(self) -> Path:
        """Per-run bookkeeping (exit files, runner log)."""
        return self.root / "run"

    def exit_file(self, attempt: int) -> Path:
        """Where run number ``attempt`` records its exit status."""
        return self.run_dir / f"exit-{attempt}"

    @property
    def runner_log(self) -> Path:
        """Output of a detached runner process."""
        return self.run_dir / "runner.log"

    @property
    def brought_back(self) -> Path:
        """Which branches hal last moved in the source repository, and to which commit."""
        return self.run_dir / "brought-back.json"

    @property
    def patch(self) -> Path:
        """The change as a patch."""
        return self.root / "result.patch"

    @property
    def patch_checked(self) -> Path:
        """Present while ``result.patch`` is the one hal wrote after the result was scanned
        clean of the task's secrets (absent: it may be the agent's, secrets and all)."""
        return self.run_dir / "patch-checked"

    @property
    def bundle(self) -> Path:
        """The branch as a git bundle."""
        return self.root / "result.bundle"

    def create(self) -> None:
        """Create the directory tree (private to the user); its root may be there already
        (``HalPaths.ensure_session`` made it: asking again was an ``mkdir`` and a ``stat``)."""
        below = (self.home, self.input, self.run_dir)
        try:
            for path in below:
                path.mkdir(exist_ok=True, mode=0o700)
        except FileNotFoundError:  # no root yet
            for path in (self.root, *below):
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Readable by a sandbox's own uid (hal as root); the root above keeps others out.
        self.input.chmod(0o755)

    def binds(self) -> tuple[Bind, ...]:
        """The session's mounts besides the workspace."""
        return (
            Bind(source=self.home, target=HOME_TARGET, read_only=False),
            Bind(source=self.input, target=INPUT_TARGET, read_only=True),
        )
