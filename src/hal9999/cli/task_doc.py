"""``hal task list``'s options and its ``--json`` document, read without click and pydantic.

The full path prints ``[TaskRecord.model_dump(mode="json") ...]`` (:mod:`hal9999.cli.render`)
of the records the store (or the daemon, from the same store) gives: every field in the
model's order, each value as the model's field type takes it. :func:`task_doc` builds the
same dictionary from a row of the ``tasks`` table with the standard library, and raises
:class:`Unsure` for any value the model would convert in a way it does not copy exactly, or
refuse (a text where a number belongs, a list column that is not a list of text, an
``env_keys`` entry that is not a variable name): the full path then prints it, or says what
is wrong. ``tests/cli/test_task_json_thin.py`` keeps :data:`FIELDS` equal to the model's
fields and compares the two paths' documents byte for byte.
"""

from __future__ import annotations

from hal9999.tasks.branchmade import with_branch_made as with_branch_made

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

STR, OPT_STR, FLOAT, OPT_FLOAT, INT, OPT_INT, NAMES, STRS, REPO_KIND = range(9)
"""How a field's value is taken: its type in :class:`hal9999.store.records.TaskRecord`."""

FIELDS = (
    ("id", STR), ("prompt", STR), ("agent", STR), ("provider", STR),
    ("process_manager", STR), ("repo", STR), ("repo_kind", REPO_KIND), ("ref", OPT_STR),
    ("base_commit", OPT_STR), ("branch", STR), ("status", STR), ("created_at", FLOAT),
    ("started_at", OPT_FLOAT), ("finished_at", OPT_FLOAT), ("exit_code", OPT_INT),
    ("error_code", OPT_STR), ("error_message", OPT_STR), ("sandbox_id", OPT_STR),
    ("runner_pid", OPT_INT), ("session_dir", STR), ("agent_session_id", OPT_STR),
    ("timeout_s", OPT_FLOAT), ("input_tokens", INT), ("output_tokens", INT),
    ("cost_usd", OPT_FLOAT), ("files_changed", INT), ("env_keys", NAMES), ("resumes", INT),
    ("priority", INT), ("providers", STRS), ("retries", INT), ("agent_retries", INT),
    ("infra_retries", INT), ("not_before", OPT_FLOAT), ("issue", OPT_STR),
)  # fmt: skip
"""``TaskRecord``'s fields in its order, each with its kind (a test keeps them equal)."""
STORE_ONLY = frozenset({"runner_started"})
"""``TaskRecord``'s fields that the table keeps and no JSON shows (a test keeps them equal)."""
_NAMES = frozenset(name for name, _ in FIELDS)
_COLUMNS = _NAMES | STORE_ONLY
REPO_KINDS = ("local", "url")
"""``records.RepoKind``'s values (a test keeps them equal)."""

TASK_STATES = (
    "queued", "provisioning", "preparing", "running", "collecting", "succeeded", "failed",
    "cancelled", "timed_out", "stopped", "interrupted",
)  # fmt: skip
"""``TaskStatus``'s values, the choices of ``--status`` (a test keeps them equal; the
click-free listing imports neither click nor the enum)."""
LIMIT_MAX = 1_000_000
"""The largest ``--limit`` (``click.IntRange(1, 1_000_000)``)."""


class Unsure(Exception):
    """A row the thin path cannot vouch for: the full path answers."""


class ListArgs:
    """The options of ``hal task list``, as click parses them."""

    __slots__ = ("as_json", "limit", "statuses")

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.limit: int | None = None
        self.as_json = False


def list_args(argv: Sequence[str]) -> ListArgs | None:
    """``argv`` (after ``task list``) when it is a form this parser reads exactly as click
    does: ``--json``, ``--status STATE`` and ``--limit N`` (also ``--opt=value``), a state
    being one of ``--status``' choices and ``N`` plain digits in range. None for anything
    else (``--help``, a bad value, an abbreviation, ``--``): click answers it."""
    args = ListArgs()
    at = 0
    while at < len(argv):
        word = argv[at]
        at += 1
        if word == "--json":
            args.as_json = True
            continue
        name, equals, value = word.partition("=")
        if name not in ("--status", "--limit"):
            return None
        if not equals:
            if at == len(argv):
                return None
            value = argv[at]
            at += 1
        if name == "--status":
            if value not in TASK_STATES:
                return None
            args.statuses.append(value)
        elif value.isascii() and value.isdigit() and 1 <= int(value) <= LIMIT_MAX:
            args.limit = int(value)
        else:
            return None
    return args


def task_doc(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """``task_json(record)`` of the record the store's row (``names``: its columns) holds;
    :class:`Unsure` when the row is not exactly such a record."""
    if len(names) != len(_COLUMNS) or _COLUMNS.difference(names):
        raise Unsure  # another schema: the model refuses (or fills) what it does not know
    row = dict(zip(names, values, strict=True))
    return with_branch_made({name: _value(kind, row[name]) for name, kind in FIELDS})


def _value(kind: int, value: Any) -> Any:
    if value is None and kind in (OPT_STR, OPT_FLOAT, OPT_INT):
        return None
    shape = type(value)
    if kind in (STR, OPT_STR):
        if shape is str:
            return value
    elif kind in (FLOAT, OPT_FLOAT):
        if shape is float:
            return value
        if shape is int and -(2**53) <= value <= 2**53:
            return float(value)  # as pydantic's float takes an int: exactly
    elif kind in (INT, OPT_INT):
        if shape is int:
            return value
    elif kind == REPO_KIND:
        if value in REPO_KINDS and shape is str:
            return value
    elif shape is str:  # NAMES, STRS: JSON text (the store's _loads)
        items = [] if value == "[]" else _loads(value)
        if type(items) is list and all(type(item) is str for item in items):
            if kind == STRS or all(map(_env_name, items)):
                return items
    raise Unsure


def _loads(text: str) -> Any:
    import json  # here: the table's path has no JSON to read

    try:
        return json.loads(text)
    except ValueError:
        raise Unsure from None


def _env_name(name: str) -> bool:
    # records._ENV_NAME, [A-Za-z_][A-Za-z0-9_]*, without `re` (a test keeps them equal).
    return (
        name.isascii()
        and (name[:1].isalpha() or name[:1] == "_")
        and name.replace("_", "a").isalnum()
    )


def json_text(data: Any) -> str:
    """``echo.emit_json``'s text of ``data`` (``json.dumps`` of it, non-finite numbers as
    null, indented by 2, ASCII), for the dictionaries, lists, text, numbers and None of these
    documents, without :mod:`json`: its decoder compiles regular expressions at import,
    a large share of a thin ``--json`` start. :class:`Unsure` for any other
    value (a test compares the two texts)."""
    from _json import encode_basestring_ascii  # json's own encoder of text

    parts: list[str] = []
    _encode(data, "\n", parts.append, encode_basestring_ascii)
    return "".join(parts)


def _encode(
    value: Any, newline: str, put: Callable[[str], Any], text: Callable[[str], str]
) -> None:
    shape = type(value)
    if value is None:
        put("null")
    elif value is True or value is False:
        put("true" if value else "false")
    elif shape is str:
        put(text(value))
    elif shape is int:
        put(int.__repr__(value))
    elif shape is float:
        finite = value == value and value not in (float("inf"), float("-inf"))
        put(float.__repr__(value) if finite else "null")
    elif shape is list or shape is dict:
        if not value:
            put("[]" if shape is list else "{}")
            return
        inner = newline + "  "
        put("[" if shape is list else "{")
        items = value if shape is list else value.items()
        for at, item in enumerate(items):
            put(inner if at == 0 else "," + inner)
            if shape is dict:
                key, item = item
                if type(key) is not str:
                    raise Unsure
                put(text(key) + ": ")
            _encode(item, inner, put, text)
        put(newline + ("]" if shape is list else "}"))
    else:
        raise Unsure
