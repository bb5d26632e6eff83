"""The repository's own documentation stays true: links resolve, nothing points outside, kinds and views are all in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rplat import analytics, kinds

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
# What a clone must not depend on: the project's notes outside the repository. Written so that this file does not
# match itself.
OUTSIDE = {
    "the shared notes folder": re.compile(r"\.\./shared"),
    "the design notes": re.compile(r"DESIGN\.md"),
    "the algorithms notes": re.compile(r"\bALGORITHM[S]\b"),
}
SEARCHED = ("platform", "runners", "dashboard", "migrations", "tests", "bench", "docs", ".ci", "README.md",
            "BENCHMARKS.md", "Makefile", "pyproject.toml", "alembic.ini")

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
_KIND_HEADING = re.compile(r"^###\s+`([^`]+)`\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text outside code blocks and code spans, where a bracket is prose and not code."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchor(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(page: Path) -> set[str]:
    return {_anchor(h) for h in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8")))}


def _relative_links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in _LINK.findall(_prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def _searched_files() -> list[Path]:
    files: list[Path] = []
    for name in SEARCHED:
        root = REPO / name
        files += [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def _headings(page: str) -> set[str]:
    return set(_KIND_HEADING.findall((DOCS / page).read_text(encoding="utf-8")))


def test_the_docs_have_their_pages() -> None:
    assert {p.name for p in DOCS.glob("*.md")} >= {
        "index.md", "architecture.md", "rationalyst.md", "tdg.md", "kinds.md", "views.md", "dashboard.md",
        "configuration.md", "postgres.md", "reliability.md", "findings.md", "development.md"}


def test_every_relative_link_resolves_to_a_path_in_the_repository() -> None:
    links = _relative_links()
    assert links, "the pages link to nothing; the link pattern is wrong"
    broken = []
    for page, target in links:
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(REPO) or not resolved.exists():
            broken.append(f"{page.relative_to(REPO)}: {target}")
        elif fragment and (resolved.suffix != ".md" or fragment not in _anchors(resolved)):
            broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def test_every_page_of_the_docs_is_listed_in_the_index() -> None:
    index = DOCS / "index.md"
    listed = {(DOCS / target).resolve() for page, target in _relative_links() if page == index}
    assert [p.name for p in DOCS.glob("*.md") if p != index and p.resolve() not in listed] == []


@pytest.mark.parametrize("what", ["the shared notes folder", "the design notes", "the algorithms notes"])
def test_nothing_in_the_repository_points_outside_it(what: str) -> None:
    files = _searched_files()
    assert len(files) > 100, "the search found too few files; SEARCHED is wrong"
    pattern = OUTSIDE[what]
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if pattern.search(text):
            found.append(str(path.relative_to(REPO)))
    assert found == []


def test_every_job_kind_rplat_ships_is_documented_and_no_other() -> None:
    # Kinds a plugin adds (the tests' own, through RPLAT_PLUGINS) are not rplat's to document.
    shipped = {name for name, kind in kinds.all_kinds().items() if kind.handler.startswith("rplat.")}
    assert shipped >= {"prefilter", "train-nat", "aggregate", "evaluate", "probe"}
    assert _headings("kinds.md") == shipped


def test_every_view_is_documented_and_no_other() -> None:
    assert _headings("views.md") == set(analytics.VIEWS)


def _sections(page: str) -> dict[str, str]:
    r"""Each `### \`name\`` heading of a docs page and the text up to the next heading."""
    text = (DOCS / page).read_text(encoding="utf-8")
    parts = re.split(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE)
    return {m.group(1): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)
            if (m := re.fullmatch(r"`([^`]+)`", heading))}


def test_every_views_columns_are_the_ones_its_section_names(tmp_path: Path) -> None:
    from rplat.migrate import upgrade
    from rplat.store import get_engine

    url = f"sqlite:///{tmp_path / 'rplat.db'}"
    upgrade(get_engine(url))
    con = analytics.connect(url)
    sections = _sections("views.md")
    undocumented = {view: sorted(c for c, _ in columns if f"`{c}`" not in sections[view])
                    for view, columns in analytics.view_columns(con).items()}
    assert {view: cs for view, cs in undocumented.items() if cs} == {}
