"""The docs are self-contained: README.md and docs/*.md link only to files of this repository that exist.

A clone has nothing outside its own tree, so a path that climbs out of it
(``../shared/...``) or names a missing file is a dead end for the reader.
Checked: Markdown links and link definitions, their ``#anchors`` (GitHub's
heading slugs), and any path in backticks that climbs out of the repository.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_LINK_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fenced = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """Every link target of a Markdown file (inline links, images and link definitions)."""
    found: list[tuple[int, str]] = []
    for n, line in _prose_lines(path):
        prose = _CODE_SPAN.sub("", line)
        found += [(n, m.group(1)) for m in _INLINE_LINK.finditer(prose)]
        m = _LINK_DEF.match(prose)
        if m:
            found.append((n, m.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file (repeated headings get -1, -2, ... like GitHub's)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in _prose_lines(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def problems(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the links of one file under ``root`` (empty when nothing)."""
    rel = path.relative_to(root)
    bad: list[str] = []
    for n, target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(root):
            bad.append(f"{rel}:{n}: {target} leaves the repository")
            continue
        if not dest.exists():
            bad.append(f"{rel}:{n}: {target} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{rel}:{n}: {target}: no heading with anchor #{anchor} in {dest.relative_to(root)}")
    for n, line in _prose_lines(path):
        for m in _CODE_SPAN.finditer(line):
            span = m.group(1).strip()
            if "../" in span and not _EXTERNAL.match(span):
                # Prose paths are read from the file's folder or from the repository root.
                name = span.split()[0]
                found = [d for d in ((path.parent / name).resolve(), (root / name).resolve()) if d.is_relative_to(root)]
                if not any(d.exists() for d in found):
                    bad.append(f"{rel}:{n}: `{span}` is not a file of the repository")
    return bad


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_docs_link_only_inside_the_repository(path: Path) -> None:
    assert problems(path) == []


def test_the_checker_reports_escaping_missing_and_unanchored_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Idempotency: `event_id`\n")
    doc = tmp_path / "docs" / "a.md"
    doc.write_text(
        "[fine](b.md#idempotency-event_id) [web](https://example.org/x) [self](#top)\n"
        "# Top\n"
        "[out](../../outside.md) [gone](nope.md) [anchor](b.md#nowhere) see `../../shared/DESIGN.md`\n"
        "beyond `../shared/DESIGN.md`, unlike `../docs/b.md`\n"
        "```\n[in a code block](ignored.md) ../../x\n```\n"
    )
    assert problems(doc, tmp_path) == [
        "docs/a.md:3: ../../outside.md leaves the repository",
        "docs/a.md:3: nope.md does not exist",
        "docs/a.md:3: b.md#nowhere: no heading with anchor #nowhere in docs/b.md",
        "docs/a.md:3: `../../shared/DESIGN.md` is not a file of the repository",
        "docs/a.md:4: `../shared/DESIGN.md` is not a file of the repository",
    ]


def test_license_and_changelog_match_the_distribution() -> None:
    """LICENSE is the MIT text pyproject declares; CHANGELOG.md has a section for pyproject's version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "MIT" in str(project["license"])
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the Binormal authors" in license_text
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[?{re.escape(project['version'])}\]?", changelog, re.MULTILINE)
    assert re.search(r"^## \[?Unreleased\]?", changelog, re.MULTILINE)
