"""Every citation of the documentation points at something that exists.

Code, tests and documents cite the docs as a path from the repository's root, ``docs/…``,
optionally with an anchor (``docs/errors.md#exit-codes``) or a quoted section title
(``docs/design.md, "Packages and import rules"``). An invariant of the design is cited as
``docs/design.md#I3``, or, where the text has already named that file, as ``invariant I3`` /
``invariants I4 and I5`` (the top of docs/design.md says so). Markdown links inside the
README and docs/ are checked as well, relative to their file.

This test fails for a cited path that does not exist, an anchor or section title that its
file does not have, an invariant that docs/design.md does not define, and any mention of the
old design file, whose name is the upper-case ``DESIGN`` followed by ``.md`` (it is not in this
repository; the design is docs/design.md). This file is not scanned: its self-tests feed the
checker bad citations on purpose.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve()
DESIGN = ROOT / "docs" / "design.md"

# Where citations are looked for: the packages, the tests, the docs and the deployment files.
SCANNED = (
    "jobs",
    "workers",
    "model",
    "storage",
    "bench",
    "migrations",
    "tests",
    "docs",
    ".ci",
    "README.md",
    "docker-compose.yml",
    "Dockerfile",
    "pyproject.toml",
)
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = {".pyc", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".pdf", ".sqlite3"}

# ``docs/path`` not preceded by a path or URL character (so ``…/docs/x`` in a URL is not ours);
# then an optional ``#anchor``, then an optional quoted section title: ``, "Title"`` or
# `` ("Title")``.
CITATION = re.compile(
    r"(?<![\w./-])docs/(?P<path>[\w./-]*\w)"
    r"(?:#(?P<anchor>[\w-]+))?"
    r"(?:(?:,\s*|\s*\(\s*)\"(?P<title>[^\"\n]+)\")?"
)
# ``invariant I3``, ``invariants I4 and I5``, ``invariants I1, I2 and I9``.
INVARIANT_WORDS = re.compile(
    r"\binvariants?\s+(I\d+(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s*&\s*)I\d+)*)\b", re.IGNORECASE
)
INVARIANT_ID = re.compile(r"^I\d+$")
OLD_DESIGN = re.compile("DESIGN" + r"\.md")
MD_LINK = re.compile(r"\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)


def _outside_fences(text: str) -> list[str]:
    """The lines of a markdown text that are not inside a fenced code block."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _plain(heading: str) -> str:
    """A heading's text as shown: links reduced to their text, inline markup removed."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("`", "").replace("**", "").strip()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _plain(heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings_of(text: str) -> list[str]:
    return [_plain(m.group(2)) for line in _outside_fences(text) if (m := HEADING.match(line))]


def anchors_of(text: str) -> set[str]:
    """Every anchor a markdown text defines: its headings' slugs (numbered when repeated, as
    GitHub numbers them) and its explicit ``<a id="…">`` anchors."""
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for line in _outside_fences(text):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def invariants_of(text: str) -> set[str]:
    """The invariants a design text defines: a heading ``### I3. …`` with its ``<a id="I3">``."""
    headed = {
        m.group(1)
        for line in _outside_fences(text)
        if (m := re.match(r"^#{2,4}\s+(I\d+)\.\s", line))
    }
    return headed & set(HTML_ANCHOR.findall(text))


@cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _anchors_at(path: Path) -> set[str]:
    return anchors_of(_read(path)) if path.suffix == ".md" else set()


def problems_in(
    text: str, where: str, *, root: Path = ROOT, base: Path | None = None, markdown: bool = False
) -> list[str]:
    """What is wrong with the citations in ``text`` (the content of ``where``).

    ``root``: the repository the ``docs/…`` paths are read from; ``base``: the folder that
    relative markdown links start from (with ``markdown``)."""
    problems: list[str] = []
    design = root / "docs" / "design.md"
    defined = invariants_of(_read(design)) if design.is_file() else set()

    def check_target(target: Path, anchor: str | None, title: str | None, cited: str) -> None:
        if not target.exists():
            problems.append(f"{where}: {cited}: no such file")
            return
        if anchor is not None:
            if target == design and INVARIANT_ID.match(anchor):
                if anchor not in defined:
                    problems.append(f"{where}: {cited}: docs/design.md defines no {anchor}")
            elif anchor not in _anchors_at(target):
                problems.append(f"{where}: {cited}: no anchor #{anchor} in {target.name}")
        if title is not None and target.suffix == ".md" and title not in headings_of(_read(target)):
            problems.append(f'{where}: {cited}: no section "{title}" in {target.name}')

    for match in CITATION.finditer(text):
        path = root / "docs" / match.group("path")
        check_target(path, match.group("anchor"), match.group("title"), match.group(0))
    for match in INVARIANT_WORDS.finditer(text):
        for number in re.findall(r"I\d+", match.group(1)):
            if number not in defined:
                problems.append(f"{where}: {match.group(0)!r}: docs/design.md defines no {number}")
    for match in OLD_DESIGN.finditer(text):
        number = text.count("\n", 0, match.start()) + 1
        problems.append(f"{where}:{number}: cites {match.group(0)}; the design is docs/design.md")
    if markdown and base is not None:
        for line in _outside_fences(text):
            for link in MD_LINK.finditer(line):
                target = link.group("target")
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                path_part, _, anchor = target.partition("#")
                resolved = (base / path_part).resolve() if path_part else None
                if resolved is None:  # a link within this very file
                    if anchor and anchor not in anchors_of(text):
                        problems.append(f"{where}: ({target}): no anchor #{anchor} here")
                    continue
                check_target(resolved, anchor or None, None, f"({target})")
    return problems


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        top = ROOT / name
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            files += sorted(
                path
                for path in top.rglob("*")
                if path.is_file()
                and not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)
                and path.suffix.lower() not in SKIPPED_SUFFIXES
            )
    return [path for path in files if path.resolve() != SELF]


def _text_of(path: Path) -> str | None:
    try:
        return _read(path)
    except UnicodeDecodeError:  # a binary file: it cites nothing
        return None


# --- the repository -----------------------------------------------------------------------


def test_the_design_defines_its_invariants_each_with_an_anchor() -> None:
    text = _read(DESIGN)
    headed = {
        m.group(1)
        for line in _outside_fences(text)
        if (m := re.match(r"^#{2,4}\s+(I\d+)\.\s", line))
    }
    assert headed, "docs/design.md numbers no invariant"
    assert headed == invariants_of(text), "an invariant heading without its <a id> anchor"
    numbers = sorted(int(i[1:]) for i in headed)
    assert numbers == list(range(1, len(numbers) + 1)), f"invariants not numbered 1..n: {numbers}"


def test_every_citation_in_the_repository_resolves() -> None:
    problems: list[str] = []
    for path in scanned_files():
        text = _text_of(path)
        if text is None:
            continue
        where = str(path.relative_to(ROOT))
        problems += problems_in(text, where, base=path.parent, markdown=path.suffix == ".md")
    assert not problems, "\n".join(problems)


def test_the_scan_covers_the_docs_and_the_code() -> None:
    scanned = {str(path.relative_to(ROOT)) for path in scanned_files()}
    for expected in ("README.md", "docs/design.md", "jobs/errors.py", "docker-compose.yml"):
        assert expected in scanned


# --- the checker catches what it must (so the test above cannot pass vacuously) ----------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see docs/nowhere.md for more", "no such file"),
        ("see docs/errors.md#no-such-anchor", "no anchor #no-such-anchor"),
        ("kept by docs/design.md#I999", "defines no I999"),
        ("the invariant I998 of the design", "defines no I998"),
        ("invariants I1 and I997 hold", "defines no I997"),
        ('docs/design.md, "No such section"', 'no section "No such section"'),
        ('docs/design.md ("No such section either")', 'no section "No such section either"'),
        ("as " + "DESIGN" + ".md says", "the design is docs/design.md"),
    ],
)
def test_the_checker_catches_a_bad_citation(text: str, expected: str) -> None:
    problems = problems_in(text, "example.py")
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    "text",
    [
        "see docs/errors.md#exit-codes and docs/kinds/extract.md#writing-a-schema.",
        "kept by docs/design.md#I3; invariants I4 and I5 too",
        'the layering in docs/design.md ("Packages and import rules")',
        "https://example.org/docs/whatever.md is someone else's",
    ],
)
def test_the_checker_accepts_a_good_citation(text: str) -> None:
    assert problems_in(text, "example.py") == []


def test_the_checker_follows_markdown_links_relative_to_their_file() -> None:
    base = ROOT / "docs" / "kinds"
    good = (
        "## Results\n[errors](../errors.md#item-error-codes), [up](#results), [w](https://x.org/a)"
    )
    assert problems_in(good, "docs/kinds/caption.md", base=base, markdown=True) == []
    bad = "[gone](../gone.md) and [bad anchor](../errors.md#nope)"
    problems = problems_in(bad, "docs/kinds/caption.md", base=base, markdown=True)
    assert len(problems) == 2, problems


def test_slugs_are_githubs() -> None:
    assert slug("Inside a worker: the overlap rule") == "inside-a-worker-the-overlap-rule"
    assert slug("`run`: one process, as it goes") == "run-one-process-as-it-goes"
    assert slug("Item error codes (in `items.error_code`)") == "item-error-codes-in-itemserror_code"
    assert anchors_of("## A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
