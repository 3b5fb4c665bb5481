"""Imports point down the layers of docs/architecture.md: a module of ``src/hal9999`` imports
nothing from a higher layer (lazy imports inside functions and type-only imports count: they
are dependencies all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hal9999"

LAYERS: list[set[str]] = [
    # contracts and small utilities
    {"errors", "lighttyping", "plainjson", "envvars", "values", "spec", "workdir", "unixsock",
     "home", "pymodule", "entrypoints", "configfile", "config_origin", "config", "trust",
     "redact", "agentfs", "procs", "children", "hostchild", "flock", "visible", "allowlist",
     "fs", "plugins", "bounds", "runoptions", "hostread", "statuses",
     "hivesettings", "hostlimits"},
    {"events", "store", "failures"},  # records
    # adapters
    {"providers", "process", "agents", "credentials", "images", "auth", "gateway", "forges"},
    {"pool"},
    {"tasks"},
    {"hive"},
    {"server", "dashboard", "app"},  # surfaces and the composition root
    {"cli", "__main__", "__init__"},
]  # fmt: skip
"""Top-level packages and modules of ``hal9999``, lowest layer first (docs/architecture.md)."""

PENDING: set[tuple[str, str]] = set()
"""Upward edges not fixed yet, each to go: none may be added, and a fixed one must leave."""


def _rank(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    found = [i for i, layer in enumerate(LAYERS) if top in layer]
    assert found, f"{top} is in no layer of tests/test_layers.py (add it where it belongs)"
    return found[0]


def upward_edges() -> set[tuple[str, str]]:
    """Every (importer, imported) pair of ``hal9999`` modules that points up a layer."""
    edges = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("hal9999.") and _rank(name) > _rank(module):
                    edges.add((module, name))
    return edges


def test_no_module_imports_from_a_higher_layer() -> None:
    edges = upward_edges()
    assert edges - PENDING == set(), "imports from a higher layer (see docs/architecture.md)"
    assert PENDING - edges == set(), "fixed: take these out of PENDING"
