"""Hostile agents against collection, end to end (`hal run --provider bwrap --agent 'sh evil.sh'`).

Each agent here took over something on the host with the code before the fix: it
plants links under the name the host moved the bundle from,
builds a repository that borrows a private host repository's objects, hides work in a nested
repository, or commits a secret.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.support.hal import Hal, events_of, git, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

# Run 1 plants; run 2 (a resume) makes a change, so the host handles a new bundle.
PLANT_LINK = """#!/bin/sh
if [ ! -e "$HOME/.ran" ]; then
  touch "$HOME/.ran"
  ln -s "$1" "$HOME/.hal-result.bundle"
  exit 0
fi
echo "# change" >> calc.py
"""

ALTERNATES = """#!/bin/sh
# $1: a private host repository's object dir, $2: a commit in it.
if [ ! -e "$HOME/.ran" ]; then
  touch "$HOME/.ran"
  branch=$(git branch --show-current)
  git init -q --bare "$HOME/evil.git"
  echo "$1" > "$HOME/evil.git/objects/info/alternates"
  mkdir -p "$(dirname "$HOME/evil.git/refs/heads/$branch")"
  echo "$2" > "$HOME/evil.git/refs/heads/$branch"
  # Resolves from the agent's home (home/home -> .) and from the session root alike.
  ln -s . "$HOME/home"
  ln -s home/evil.git "$HOME/.hal-result.bundle"
  exit 0
fi
echo "# harmless" >> calc.py
"""


def commit_agent(repo: Path, name: str, script: str) -> None:
    (repo / name).write_text(script)
    git(repo, "add", name)
    git(repo, "commit", "-qm", f"add {name}")


def run_twice(hal: Hal, agent: str) -> dict[str, object]:
    first = hal("run", "--provider", "bwrap", "--agent", agent, "go", "--json")
    assert first.returncode == 0, first.stderr + first.stdout
    task_id = json.loads(first.stdout)["id"]
    second = hal("task", "resume", task_id, "--json")
    assert "Traceback" not in second.stderr
    task: dict[str, object] = json.loads(second.stdout)
    return task


def test_a_planted_bundle_link_never_writes_a_host_file(
    hal: Hal, demo_repo: Path, tmp_path: Path
) -> None:
    """The link the agent planted used to be moved into the session, and the
    next run's bundle was then moved through it into any host directory."""
    target = tmp_path / "host-dir"
    target.mkdir()
    commit_agent(demo_repo, "evil.sh", PLANT_LINK)
    task = run_twice(hal, f"sh evil.sh {target}")
    assert list(target.iterdir()) == []
    assert task["status"] == "succeeded", task
    session = Path(str(task["session_dir"]))
    assert session.joinpath("result.bundle").is_file()
    assert not session.joinpath("result.bundle").is_symlink()
    assert "# change" in git(demo_repo, "show", f"{task['branch']}:calc.py")


def test_an_agent_built_repository_cannot_import_a_private_host_repository(
    hal: Hal, demo_repo: Path, tmp_path: Path
) -> None:
    """Host git fetched from the agent's repository, whose alternates borrowed
    a private host repository's objects, into hal/<id> of the source repository."""
    private = tmp_path / "private"
    private.mkdir()
    git(private, "init", "-q")
    (private / "id_rsa").write_text("PRIVATE KEY\n")
    git(private, "add", "-A")
    git(private, "commit", "-qm", "private")
    secret_commit = git(private, "rev-parse", "HEAD")
    commit_agent(demo_repo, "evil.sh", ALTERNATES)
    task = run_twice(hal, f"sh evil.sh {private}/.git/objects {secret_commit}")
    assert subprocess.run(["git", "cat-file", "-e", secret_commit], cwd=demo_repo).returncode != 0
    assert task["status"] == "succeeded", task
    branch = str(task["branch"])
    assert git(demo_repo, "rev-parse", branch) != secret_commit
    assert "# harmless" in git(demo_repo, "show", f"{branch}:calc.py")
    assert "id_rsa" not in git(demo_repo, "ls-tree", "-r", "--name-only", branch)


def test_work_hidden_in_a_nested_repository_fails_the_task_loudly(
    hal: Hal, demo_repo: Path
) -> None:
    """This used to report success with the work nowhere."""
    agent = "sh -c 'mkdir sub && cd sub && git init -q && echo x > f && git add f && "
    agent += "git -c user.name=a -c user.email=a@a commit -qm nested'"
    out = hal("run", "--provider", "bwrap", "--agent", agent, "go", "--json")
    assert "Traceback" not in out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "failed", task
    assert "nested repositories" in task["error_message"] and "sub" in task["error_message"]
    assert "result.patch" in task["error_message"]
    assert out.returncode != 0
    session = Path(task["session_dir"])
    assert (session / "workspace" / "sub" / "f").read_text() == "x\n"


@pytest.mark.parametrize("source", ["path", "url"])
def test_a_committed_secret_keeps_the_branch_out(
    hal: Hal, demo_repo: Path, hal_env: dict[str, str], source: str
) -> None:
    """The value of a forwarded secret in the result stops the branch."""
    value = "tok-4f9c1e7a2b8d"
    agent = 'sh -c \'mkdir -p conf && printf "%s\\n" "$API_TOKEN" > conf/token\''
    repo = ["--repo", f"file://{demo_repo}"] if source == "url" else []
    out = hal(
        "run", *repo, "--provider", "bwrap", "--env", "API_TOKEN", "--agent", agent, "go",
        "--json", env={"API_TOKEN": value},
    )  # fmt: skip
    assert "Traceback" not in out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["error_code"] == "secret_in_result", task
    assert "conf/token" in task["error_message"]
    assert value not in out.stdout + out.stderr
    assert git(demo_repo, "branch", "--list", task["branch"]) == ""
    [listed] = tasks_json(hal)
    assert listed["id"] == task["id"]
    assert all(value not in json.dumps(event) for event in events_of(hal, task["id"]))


def test_submodules_come_from_inside_the_sandbox_and_dropped_work_fails_loudly(
    hal: Hal, demo_repo: Path, tmp_path: Path
) -> None:
    """A submodule naming a host repository by path is never copied by host
    git; files the agent writes into the empty submodule fail the task instead of vanishing."""
    private = tmp_path / "private-lib"
    private.mkdir()
    git(private, "init", "-q")
    (private / "secret.c").write_text("host only\n")
    git(private, "add", "-A")
    git(private, "commit", "-qm", "lib")
    allow = ["-c", "protocol.file.allow=always"]  # the user's own command may
    git(demo_repo, *allow, "submodule", "add", "-q", str(private), "lib")
    git(demo_repo, "commit", "-qm", "add a submodule")
    agent = "sh -c 'echo fix > lib/new.c'"
    out = hal("run", "--provider", "bwrap", "--agent", agent, "go", "--json")
    assert "Traceback" not in out.stderr
    task = json.loads(out.stdout)
    session = Path(task["session_dir"])
    assert not (session / "workspace" / "lib" / "secret.c").exists()
    assert task["status"] == "failed", task
    assert "lib" in task["error_message"] and "nested" in task["error_message"]
    texts = [e.get("text", "") for e in events_of(hal, task["id"]) if e["type"] == "message"]
    assert any("submodules could not be fetched" in text for text in texts), texts
    assert (session / "workspace" / "lib" / "new.c").read_text() == "fix\n"


def test_resume_never_moves_a_branch_the_user_changed(
    hal: Hal, demo_repo: Path, tmp_path: Path
) -> None:
    """The fetch back used to be forced over the user's commit."""
    commit_agent(demo_repo, "evil.sh", 'echo "# run" >> calc.py\n')
    first = hal("run", "--provider", "bwrap", "--agent", "sh evil.sh", "go", "--json")
    assert first.returncode == 0, first.stderr
    task = json.loads(first.stdout)
    branch = task["branch"]
    check = tmp_path / "check"
    git(demo_repo, "worktree", "add", "-q", str(check), branch)
    (check / "mine.txt").write_text("the user's work\n")
    git(check, "add", "mine.txt")
    git(check, "commit", "-qm", "user commit")
    mine = git(check, "rev-parse", "HEAD")
    resumed = hal("task", "resume", task["id"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert git(demo_repo, "rev-parse", branch) == mine
    assert final["branch"] == f"{branch}-2"
    assert git(demo_repo, "show", f"{branch}-2:calc.py").count("# run") == 2
    texts = [e.get("text", "") for e in events_of(hal, task["id"]) if e["type"] == "message"]
    assert any(f"the result is on {branch}-2" in text for text in texts), texts


def test_a_source_branch_named_hal_still_gets_the_result(hal: Hal, demo_repo: Path) -> None:
    """This run used to be reported "failed (exit 0)" with advice to run
    `git remote prune`."""
    git(demo_repo, "branch", "hal")
    agent = "sh agent.sh {{prompt_file}}"
    out = hal("run", "--provider", "bwrap", "--agent", agent, "go", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    task = json.loads(out.stdout)
    assert task["status"] == "succeeded" and task["branch"] == f"hal-{task['id']}"
    assert "a + b" in git(demo_repo, "show", f"hal-{task['id']}:calc.py")
    texts = [e.get("text", "") for e in events_of(hal, task["id"]) if e["type"] == "message"]
    wanted = (f"cannot hold hal/{task['id']}", f"the result is on hal-{task['id']}")
    assert any(all(w in text for w in wanted) for text in texts), texts


LONG_NAME = r"""#!/bin/sh
# A directory whose name is 70,000 bytes: no file system holds it, git's objects do.
name=$(head -c 70000 /dev/zero | tr '\0' n)
inner=$(printf '100644 blob %s\tenv\n' "$(echo KEY=none | git hash-object -w --stdin)" | git mktree)
top=$( (git ls-tree HEAD; printf '040000 tree %s\t%s\n' "$inner" "$name") | git mktree)
git update-ref HEAD "$(git commit-tree "$top" -p HEAD -m 'a long name')"
"""


def test_a_path_name_past_a_line_limit_is_brought_back(hal: Hal, demo_repo: Path) -> None:
    """The scan of a task with a secret read the result's object list line by line, and a
    path of over 64 KiB was an internal error: a traceback, the task left "interrupted"."""
    commit_agent(demo_repo, "long.sh", LONG_NAME)
    out = hal(
        "run", "--provider", "bwrap", "--env", "API_TOKEN", "--agent", "sh long.sh", "go",
        "--json", env={"API_TOKEN": "tok-4f9c1e7a2b8d"},
    )  # fmt: skip
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "succeeded", task
    # In the agent's commit; collection's own commit after it is of the checkout (no such file).
    assert git(demo_repo, "cat-file", "blob", f"{task['branch']}~1:{'n' * 70000}/env") == "KEY=none"


HEX_IN_GITLINK = """#!/bin/sh
# The token as a submodule's commit id, then the submodule removed again: the diff collection
# reads shows nothing nested, the history keeps the id.
git update-index --add --cacheinfo "160000,$API_TOKEN,vendor"
git -c user.name=a -c user.email=a@a commit -qm "vendor a library"
git rm -q --cached vendor
git -c user.name=a -c user.email=a@a commit -qm "drop it again"
"""


def test_a_hex_secret_hidden_as_a_submodule_id_keeps_the_branch_out(
    hal: Hal, demo_repo: Path
) -> None:
    value = "3f9a1c7e5b2d4086a1f3c5e7d9b0a2c4e6f8d0b1"
    commit_agent(demo_repo, "link.sh", HEX_IN_GITLINK)
    keeps_the_branch_out(hal, demo_repo, "sh link.sh", value, "submodule")


def keeps_the_branch_out(hal: Hal, repo: Path, agent: str, value: str, said: str) -> None:
    """``agent``, run with ``value`` as its secret ``API_TOKEN``, fails its task with
    ``secret_in_result`` (the error naming ``said``) and brings no branch back."""
    out = hal(
        "run", "--provider", "bwrap", "--env", "API_TOKEN", "--agent", agent, "go", "--json",
        env={"API_TOKEN": value},
    )  # fmt: skip
    assert "Traceback" not in out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["error_code"] == "secret_in_result", task
    assert said in task["error_message"]
    assert value not in out.stdout + out.stderr
    assert git(repo, "branch", "--list", task["branch"]) == ""


UTF7_MESSAGE = """import base64, os, subprocess
def git(*args, data=None):
    done = subprocess.run(["git", *args], input=data, capture_output=True, check=True)
    return done.stdout.decode().strip()
shifted = base64.b64encode(os.environ["API_TOKEN"].encode("utf-16-be")).rstrip(b"=")
with open("calc.py", "a") as source:
    source.write("# harmless\\n")
git("add", "calc.py")
who = "a <a@a> 1 -0000"
head = f"tree {git('write-tree')}\\nparent {git('rev-parse', 'HEAD')}\\nauthor {who}\\n"
head += f"committer {who}\\nencoding UTF-7\\n\\n"
message = b"fix: +" + shifted + b"-\\n"
made = git("hash-object", "-t", "commit", "-w", "--stdin", data=head.encode() + message)
git("update-ref", "HEAD", made)
"""


def test_a_secret_in_a_message_git_shows_converted_keeps_the_branch_out(
    hal: Hal, demo_repo: Path
) -> None:
    """A commit message in UTF-7 (every character shifted) held none of the secret's forms
    the scan knows, and the branch came back: `git log` on it printed the secret."""
    commit_agent(demo_repo, "utf7.py", UTF7_MESSAGE)
    keeps_the_branch_out(hal, demo_repo, "python3 utf7.py", "tok-4f9c1e7a2b8d", "the commit")
