"""The docs stay a guide: every relative link resolves, every test a page names exists, the
guide pages stay short, and no source, test or doc line tells the history of the work (that
lives in git log)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
"""A markdown link's target (images left out: none of the docs has one)."""
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
HISTORY = re.compile(r"\b(stop|issue) [0-9]+", re.I)
HISTORY_MOST = 10
"""Lines naming a work session or an issue that the whole tree may hold (quoted names of
third-party issues, say); anything more is history that belongs in git log."""
TEST_REF = re.compile(r"((?:tests/)?[\w/]*test_\w+\.py)::\s*(\w+(?:\{[\w,]+\}\w*)?(?:\.\.\.)?)")
"""A test a page names: ``file.py::name``, its name maybe cut by a line break, spelled with
``{a,b}`` for several or ending in ``...`` for those it begins."""
TEST_FILE = re.compile(r"\btests/[\w/]+\.py\b")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".c", ".h", ".js", ".css", ".pl", ".toml", ".txt"}


def anchors(page: Path) -> set[str]:
    """The GitHub anchors of ``page``'s headings."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = set()
    for line in text.splitlines():
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


SOURCE = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
IN_SOURCE = f"{SOURCE}/blob/main/"
"""How the README links to the docs: absolute, so that they work where its text is shown
apart from the repository (the package index's page)."""


def links(page: Path) -> list[str]:
    """The relative link targets of ``page``, outside code blocks (a link into the project's
    own source tree is taken as the relative path it names)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    targets = [t.removeprefix(IN_SOURCE) for t in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_readme_links_to_the_docs_absolutely() -> None:
    text = FENCE.sub("", (ROOT / "README.md").read_text(encoding="utf-8"))
    relative = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    assert not relative, f"the package index shows these broken: {relative}"
    assert any(t.startswith(f"{IN_SOURCE}docs/") for t in LINK.findall(text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def named_tests(name: str) -> list[str]:
    """The test names (or, ending in ``...``, name prefixes) a reference spells."""
    brace = re.search(r"\{([\w,]+)\}", name)
    if brace is None:
        return [name]
    head, tail = name[: brace.start()], name[brace.end() :]
    return [f"{head}{part}{tail}" for part in brace.group(1).split(",")]


def defines(source: str, name: str) -> bool:
    """Whether a test module's ``source`` defines test ``name`` (a prefix, ending ``...``)."""
    prefix = name.endswith("...")
    word = re.escape(name.removesuffix("...")) + (r"\w*" if prefix else r"\b")
    return re.search(rf"^\s*(?:async )?(?:def|class) {word}", source, re.M) is not None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_test_a_page_names_exists(page: Path) -> None:
    # docs/security.md names the tests that hold each guarantee: a renamed or moved test
    # leaves a guarantee held by nothing the reader can find.
    text = page.read_text(encoding="utf-8")
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if "__pycache__" not in p.parts]
    missing = []
    for module, name in TEST_REF.findall(text):
        found = [p for p in tests if f"/{p.relative_to(ROOT).as_posix()}".endswith(f"/{module}")]
        if not found:
            missing.append(f"{module}: no such test module")
            continue
        sources = [p.read_text(encoding="utf-8") for p in found]
        missing += [
            f"{module}::{one}" for one in named_tests(name)
            if not any(defines(source, one) for source in sources)
        ]  # fmt: skip
    if page.name == "security.md":
        missing += [
            f"{f}: no such file" for f in TEST_FILE.findall(text) if not (ROOT / f).exists()
        ]
    assert not missing, f"{page.relative_to(ROOT)}: {missing}"


def test_the_guide_pages_stay_short() -> None:
    sizes = {
        name: len((ROOT / "docs" / name).read_text(encoding="utf-8").splitlines())
        for name in ("architecture.md", "benchmarks.md")
    }
    assert sizes["architecture.md"] <= 500, sizes
    assert sizes["benchmarks.md"] <= 400, sizes


def test_no_line_tells_the_history_of_the_work() -> None:
    places = [ROOT / d for d in ("src", "tests", "docs", "benchmarks", "scripts")]
    files = [ROOT / "README.md"]
    for place in places:
        files += [
            p for p in place.rglob("*")
            if p.suffix in TEXT_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
        ]  # fmt: skip
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert len(found) <= HISTORY_MOST, found
