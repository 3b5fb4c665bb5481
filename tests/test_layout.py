"""The tests' own layout: a test module imports no other test module; what tests share lives
in ``tests/support/`` (helpers) or in a ``conftest.py`` (fixtures)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def _is_test_module(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].startswith("test_")


def imported_test_modules(source: str) -> list[str]:
    """The test modules ``source`` imports, as written (``from .test_x``, ``tests.a.test_x``,
    ``from tests.a import test_x``, ``import test_x``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.module and _is_test_module(node.module):
                found.append(module)
            else:
                found += [
                    f"{module}.{alias.name}".replace("..", ".")
                    for alias in node.names
                    if alias.name.startswith("test_")
                ]
    return found


@pytest.mark.parametrize(
    ("source", "imported"),
    [
        ("from tests.cli.test_daemon import poll", ["tests.cli.test_daemon"]),
        ("from .test_daemon import poll", [".test_daemon"]),
        ("from test_daemon import poll", ["test_daemon"]),
        ("from tests.gateway import test_proxy", ["tests.gateway.test_proxy"]),
        ("import tests.cli.test_daemon as d", ["tests.cli.test_daemon"]),
        ("def f():\n    from tests.tasks.test_halt import git_repo\n", ["tests.tasks.test_halt"]),
        ("from tests.support.daemon import poll\nimport pytest", []),
        ("from tests.cli.conftest import hal\nfrom hal9999 import testing", []),
    ],
    ids=["from", "relative", "top", "from-package", "import", "nested", "support", "conftest"],
)
def test_the_scan_finds_every_form_of_importing_a_test_module(
    source: str, imported: list[str]
) -> None:
    assert imported_test_modules(source) == imported


def test_no_module_under_tests_imports_a_test_module() -> None:
    offenders = {
        str(path.relative_to(TESTS)): names
        for path in sorted(TESTS.rglob("*.py"))
        if (names := imported_test_modules(path.read_text()))
    }
    assert offenders == {}, (
        "move what these import into tests/support/ (helpers) or a conftest.py (fixtures)"
    )
