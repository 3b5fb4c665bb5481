"""``hal task list --json`` (and its filters, and the table with ``HAL_PROVIDER`` and the
other name variables set) is answered without click and pydantic when the store alone
answers, and prints byte for byte what the full path prints."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from tests.support.cli import IMPORTED
from tests.support.hal import Hal
from tests.support.tasks import make_task
from tests.support.thin import FULL, HEAVY, _env, _hal, _plain

from hal9999.cli import task_doc
from hal9999.cli.echo import _finite
from hal9999.cli.options import TASK_STATES
from hal9999.cli.task_list import list_
from hal9999.cli.task_rows import thin_tasks
from hal9999.home import DB_NAME
from hal9999.store import Store
from hal9999.store.records import _ENV_NAME, RepoKind, TaskRecord

KINDS = {
    str: task_doc.STR, str | None: task_doc.OPT_STR, float: task_doc.FLOAT,
    float | None: task_doc.OPT_FLOAT, int: task_doc.INT, int | None: task_doc.OPT_INT,
    RepoKind: task_doc.REPO_KIND,
}  # fmt: skip
FORMS = [
    ("--json",),
    ("--json", "--status", "failed", "--status=running"),
    ("--limit", "3", "--json"),
    ("--status", "queued", "--json", "--limit=1000000"),
    ("--status", "cancelled"),
    ("--limit=2",),
]


def test_the_fields_are_the_records() -> None:
    # The fields a dump of the record shows (one the store alone keeps is in no JSON).
    fields = {name: f for name, f in TaskRecord.model_fields.items() if not f.exclude}
    assert [name for name, _ in task_doc.FIELDS] == list(fields)
    kept = {name for name, f in TaskRecord.model_fields.items() if f.exclude}
    assert task_doc.STORE_ONLY == kept
    for name, kind in task_doc.FIELDS:
        annotation = fields[name].annotation
        if kind in (task_doc.NAMES, task_doc.STRS):
            assert annotation == list[str], name
            assert (name == "env_keys") == (kind == task_doc.NAMES)  # its validator: names only
        else:
            assert KINDS[annotation] == kind, name  # type: ignore[index]
    assert task_doc.REPO_KINDS == typing.get_args(RepoKind)
    assert task_doc.TASK_STATES == TASK_STATES
    assert task_doc.LIMIT_MAX == list_.params[1].type.max  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name", ["A", "_", "a_1", "HAL_X", "", "1A", "A-B", "A=B", "É", "A\n", " A", "A B", "\uff41"]
)
def test_env_names_are_told_apart_as_the_record_does(name: str) -> None:
    assert task_doc._env_name(name) == bool(_ENV_NAME.fullmatch(name))


@pytest.mark.parametrize(
    "argv",
    [*FORMS, (), ("--json", "--json"), ("--limit", "1", "--limit", "7"), ("--status", "x"),
     ("--limit", "0"), ("--limit", "1000001"), ("--limit", "٣"), ("--limit", " 3"),
     ("--limit", "+3"), ("--limit", "03"), ("--lim", "3"), ("--json=1",), ("--status",),
     ("--help",), ("-h",), ("--", "--json"), ("x",), ("--status", "--json")],
)  # fmt: skip
def test_options_are_read_as_click_reads_them_or_left_to_it(argv: tuple[str, ...]) -> None:
    thin = task_doc.list_args(argv)
    if thin is None:
        return  # click's to parse (or refuse)
    params = list_.make_context("list", list(argv)).params
    assert (list(params["statuses"]), params["limit"], params["as_json"]) == (
        thin.statuses,
        thin.limit,
        thin.as_json,
    )


@pytest.mark.parametrize(
    "data",
    [[], {}, [{}], [[]], None, True, False, 0, -7, 2**70, 0.1 + 0.2, -0.0, 1e20, 1e-7, 5e-324,
     float("inf"), float("-inf"), float("nan"), "", "é\u2028\x00\x1b[2J🚀\"\\/",
     [{"a": [1, [2, {"b": None}]], "c": {"d": []}, "é": "x"}, {"e": 1.5}],
     {"k": [None, True, "s", 3, 4.25, [], {}]}],
)  # fmt: skip
def test_the_json_text_is_emit_jsons(data: object) -> None:
    assert task_doc.json_text(data) == json.dumps(
        _finite(data), indent=2, default=str, allow_nan=False
    )


@pytest.mark.parametrize("form", FORMS)
def test_the_thin_document_is_the_full_paths_byte_for_byte(
    home: Path, form: tuple[str, ...]
) -> None:
    thin, loaded = _hal(home, "task", "list", *form)
    assert loaded & HEAVY == set(), thin.stderr
    full, full_loaded = _hal(home, "task", "list", *form, **FULL)
    assert "pydantic" in full_loaded  # it did take the full path
    assert (thin.returncode, thin.stdout, thin.stderr) == (full.returncode, full.stdout, "")
    if "--json" in form:
        assert json.loads(thin.stdout)


def test_every_name_variable_keeps_the_thin_path(home: Path) -> None:
    names = {"HAL_AGENT": "true {{prompt_file}}", "HAL_PROCESS_MANAGER": "direct",
             "HAL_NO_DAEMON": "1", "HAL_PROVIDER": "local,bwrap"}  # fmt: skip
    for form in ((), ("--json",)):
        thin, loaded = _hal(home, "task", "list", *form, **names)
        assert loaded & HEAVY == set()
        assert thin.stdout == _hal(home, "task", "list", *form, **names, **FULL)[0].stdout


@pytest.mark.parametrize(
    "extra",
    [{"HAL_PROVIDER": "  "}, {"HAL_AGENT": ""}, {"HAL_NO_DAEMON": "maybe"},
     {"HAL_PROVIDER": "bwräp"}, {"HAL_PROCESS_MANAGER": "\t"}],
)  # fmt: skip
def test_a_name_the_config_refuses_is_refused_as_before(home: Path, extra: dict[str, str]) -> None:
    # HAL_NO_DAEMON=maybe was printed a table, status 0, by the thin path (the full path
    # refuses it): the thin path now leaves every value it cannot vouch for to the full one.
    for form in ((), ("--json",)):
        thin = _plain(home, "task", "list", *form, **extra)
        full = _plain(home, "task", "list", *form, **extra, **FULL)
        assert (thin.returncode, thin.stdout, thin.stderr) == (
            full.returncode,
            full.stdout,
            full.stderr,
        )
        if extra != {"HAL_PROVIDER": "bwräp"}:  # accepted by the full path, not vouched for
            assert thin.returncode == 2 and thin.stderr.startswith("hal: error: HAL_"), extra


@pytest.mark.parametrize(
    ("column", "value"),
    [("env_keys", '["A=secret"]'), ("providers", '["a", 1]'), ("providers", "nope"),
     ("created_at", "soon"), ("exit_code", 1.5), ("repo_kind", "ftp"), ("prompt", b"7")],
)  # fmt: skip
def test_a_row_the_model_would_not_take_as_it_is_goes_to_the_full_path(
    home: Path, column: str, value: object
) -> None:
    with sqlite3.connect(home / DB_NAME) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute(f"UPDATE tasks SET {column} = ? WHERE id = 'full0001'", (value,))
    conn.close()
    assert thin_tasks(_env(home), home.parent / "here", (), None) is None
    _, loaded = _hal(home, "task", "list", "--json")
    assert "pydantic" in loaded
    thin = _plain(home, "task", "list", "--json")
    full = _plain(home, "task", "list", "--json", **FULL)
    assert (thin.returncode, _crash(thin.stdout), _crash(thin.stderr)) == (
        full.returncode,
        _crash(full.stdout),
        _crash(full.stderr),
    )


def _crash(text: str) -> str:
    """``text`` with the name of a crash log (each a new one) left out."""
    return re.sub(r"hal-crash-\w+\.log", "hal-crash-X.log", text)


def test_through_a_running_daemon_the_document_is_the_full_clients(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, runner: int
) -> None:
    # The full path asks the daemon (GET /v1/tasks), whose records come from the same store.
    home = Path(hal_env["HAL_HOME"])
    with Store.open(home) as store:
        for n, status in enumerate(("succeeded", "failed", "cancelled", "timed_out")):
            store.insert_task(make_task(home, f"d{n:07d}", status, created_at=10.0 + n))
        store.insert_task(make_task(
            home, "full0001", "failed", created_at=5_000.5, prompt="ü \x07 " * 1000,
            exit_code=3, error_message="e", env_keys=["K"], providers=["bwrap"],
            cost_usd=1 / 3, sandbox_id="sb1", runner_pid=runner,
        ))  # fmt: skip
    assert hal("serve", "--detach").returncode == 0
    try:
        for form in (*FORMS, ("--json",)):
            args = [sys.executable, "-c", IMPORTED, "task", "list", *form]
            run = {"cwd": demo_repo, "capture_output": True, "text": True, "timeout": 60}
            thin = subprocess.run(args, env=hal_env, check=False, **run)  # type: ignore[call-overload]
            full = subprocess.run(args, env={**hal_env, **FULL}, check=False, **run)  # type: ignore[call-overload]
            loaded = set(json.loads(thin.stderr.splitlines()[-1]))
            full_loaded = set(json.loads(full.stderr.splitlines()[-1]))
            assert {m.split(".")[0] for m in loaded} & HEAVY == set(), form
            assert "hal9999.server.client" in full_loaded  # the full path asked the daemon
            assert thin.stdout == full.stdout, form
        assert [task["id"] for task in json.loads(thin.stdout)] == [
            "full0001", "d0000003", "d0000002", "d0000001", "d0000000"
        ]  # fmt: skip  # the last form's: every task
        for form in (("full0001",), ("--json", "d0000001")):
            # `hal task show` is the click command's through a daemon (its thin client).
            args = [sys.executable, "-c", IMPORTED, "task", "show", *form]
            thin = subprocess.run(args, env=hal_env, check=False, **run)  # type: ignore[call-overload]
            full = subprocess.run(args, env={**hal_env, **FULL}, check=False, **run)  # type: ignore[call-overload]
            assert "click" in json.loads(thin.stderr.splitlines()[-1])
            assert thin.stdout == full.stdout and form[-1] in thin.stdout
    finally:
        assert hal("serve", "--stop").returncode == 0
