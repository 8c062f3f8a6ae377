"""
Every fact id the repository cites (`[T-02]`, "spec S-PY-08", `(C-06)`, a table cell) is
defined in docs/spec.md, and defined there once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "spec.md"
# This file's ids are examples of the pattern, not citations.
NOT_SCANNED = {SPEC, Path(__file__).resolve()}

# Where citations live: the package, its tests, benchmarks, examples, scripts and prose.
SCANNED = ("imds", "tests", "benchmarks", "examples", "scripts", "docs",
           "README.md", "Dockerfile", "compose.yaml", "compose.roles.yaml", "compose.sts.yaml",
           "compose.ecs.yaml", "compose.pod-identity.yaml")
SKIPPED_DIRS = {".venv", "node_modules", "__pycache__", ".git", ".pytest_cache",
                ".mypy_cache", ".ruff_cache"}

# A fact id: one capital letter (the family), optionally a two-letter SDK (`S-PY`), then a
# two-digit number, standing alone: not inside a word, a longer number or a hyphenated
# name. So dates (`2026-11-28`), character classes (`[1-9]`), status lines (`404 Not
# Found`), headers (`X-Forwarded-For`), `P-256` and `us-east-1a` are not ids.
FACT_ID = re.compile(r"(?<![\w-])[A-Z](?:-[A-Z]{2})?-\d{2}(?![\w-])")
# A range of one family, `[C-01..C-06]`: each id between the ends is cited too.
FACT_RANGE = re.compile(
    r"(?<![\w-])([A-Z](?:-[A-Z]{2})?)-(\d{2})\s*(?:\.\.|…|–)\s*\1-(\d{2})(?![\w-])")
# A whole family, `[M-*]`.
FACT_FAMILY = re.compile(r"(?<![\w-])([A-Z](?:-[A-Z]{2})?)-\*")
# A definition in docs/spec.md: a list item that starts with the bold id.
DEFINITION = re.compile(r"^- \*\*([A-Z](?:-[A-Z]{2})?-\d{2})\*\*")

# Fewer than this many citations means the scan or the pattern broke, not that the code
# stopped citing facts (426 citations when this test was written).
MIN_CITATIONS = 150


def scanned_files() -> Iterator[Path]:
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for child in sorted(path.rglob("*")):
                if (child.is_file() and child.resolve() not in NOT_SCANNED
                        and not SKIPPED_DIRS.intersection(child.relative_to(ROOT).parts)):
                    yield child


def citations(text: str) -> list[str]:
    """The fact ids one line cites, ranges expanded."""
    found = FACT_ID.findall(text)
    for family, first, last in FACT_RANGE.findall(text):
        found += [f"{family}-{n:02d}" for n in range(int(first) + 1, int(last))]
    return found


def cited() -> list[tuple[str, str]]:
    """(`file:line`, id) for every citation in the repository outside docs/spec.md."""
    out: list[tuple[str, str]] = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: no citations
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            out += [(where, fact) for fact in citations(line)]
    return out


def cited_families() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            out += [(where, family) for family in FACT_FAMILY.findall(line)]
    return out


def definitions() -> list[str]:
    """The ids docs/spec.md defines, in order, repeats included."""
    return [m.group(1) for line in SPEC.read_text(encoding="utf-8").splitlines()
            if (m := DEFINITION.match(line))]


def definition_texts() -> dict[str, str]:
    """Each defined id and the text of its list item (continuation lines joined)."""
    texts: dict[str, str] = {}
    current: str | None = None
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        if m := DEFINITION.match(line):
            current = m.group(1)
            texts[current] = line
        elif current is not None and line.startswith("  "):
            texts[current] += " " + line.strip()
        else:
            current = None
    return texts


class TestCitedFactsAreDefined:
    def test_every_cited_fact_id_is_defined_in_docs_spec(self) -> None:
        """A citation of an id docs/spec.md does not define is listed with its file:line."""
        defined = set(definitions())
        undefined = [f"{where}: {fact}" for where, fact in cited() if fact not in defined]
        assert [] == undefined, "cited but not defined in docs/spec.md:\n" + "\n".join(undefined)

    def test_every_cited_fact_family_has_facts(self) -> None:
        """`[M-*]` cites a family; docs/spec.md defines at least one fact of it."""
        families = {fact.rsplit("-", 1)[0] for fact in definitions()}
        unknown = [f"{where}: {family}-*" for where, family in cited_families()
                   if family not in families]
        assert [] == unknown

    def test_the_scan_finds_the_citations_in_use(self) -> None:
        """The pattern and the walk still see the repository's citations."""
        found = cited()
        assert len(found) >= MIN_CITATIONS, f"only {len(found)} citations found"
        by_file = {(where.split(":")[0], fact) for where, fact in found}
        # One of each kind of place and form: a bracketed comment, one in parentheses, a
        # docstring, prose "spec X", a Markdown table cell, a Lua comment.
        assert {
            ("imds/ec2/wire.py", "T-02"),
            ("imds/ec2/answer.py", "S-PY-02"),
            ("tests/e2e/test_sdk.py", "S-PY-03"),
            ("README.md", "S-PY-08"),
            ("docs/rotation-lab.md", "S-GO-04"),
            ("benchmarks/wrk/put.lua", "T-16"),
        } <= by_file


class TestFactIdPattern:
    @pytest.mark.parametrize(
        "text, expected",
        [
            pytest.param("# [T-02] inclusive bounds", ["T-02"], id="bracketed"),
            pytest.param("[T-03] [T-04]: not", ["T-03", "T-04"], id="two-brackets"),
            pytest.param("(spec S-PY-07, S-PY-08).", ["S-PY-07", "S-PY-08"], id="prose"),
            pytest.param('"""S-PY-03: with IMDSv1', ["S-PY-03"], id="docstring-start"),
            pytest.param("| P-03, P-04, S-GO-04 |", ["P-03", "P-04", "S-GO-04"], id="table"),
            pytest.param("Without the L-04 mode", ["L-04"], id="bare-word"),
            pytest.param("credentials [C-01..C-06]",
                         ["C-01", "C-06", "C-02", "C-03", "C-04", "C-05"], id="range"),
        ],
    )
    def test_citations_are_found(self, text: str, expected: list[str]) -> None:
        assert expected == citations(text)

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param('"LastUpdated" : "2026-11-28T07:48:13Z"', id="iso-date"),
            pytest.param("[1-9][0-9]*", id="character-class"),
            pytest.param("HTTP/1.1 404 Not Found", id="status-line"),
            pytest.param("X-Forwarded-For, X-aws-ec2-metadata-token", id="header-names"),
            pytest.param("ECDSA P-256 over SHA-256", id="curve-and-hash"),
            pytest.param("us-east-1a use1-az4 ip-10-0-0-1", id="aws-names"),
            pytest.param("T-1000 AT-02 T-02x T-02-b", id="longer-tokens"),
            pytest.param("AES-128-GCM, UTF-8", id="algorithms"),
        ],
    )
    def test_other_text_is_not_taken_for_a_citation(self, text: str) -> None:
        assert [] == citations(text)


class TestSpecDefinitions:
    def test_every_id_is_defined_once(self) -> None:
        repeated = sorted(fact for fact, n in Counter(definitions()).items() if n > 1)
        assert [] == repeated

    def test_every_fact_names_its_source(self) -> None:
        """Open questions (Q) aside, each definition says where the fact comes from."""
        missing = sorted(fact for fact, text in definition_texts().items()
                         if not fact.startswith("Q-") and "Source:" not in text)
        assert [] == missing

    def test_ids_are_defined_in_one_form(self) -> None:
        """An id in bold is a definition: a list item that starts with it."""
        bold = re.compile(r"\*\*[A-Z](?:-[A-Z]{2})?-\d{2}\*\*")
        lines = SPEC.read_text(encoding="utf-8").splitlines()
        other = [line for line in lines
                 if len(bold.findall(line)) != (1 if DEFINITION.match(line) else 0)]
        assert [] == other
