"""The README and docs/ as a reader meets them: a short README with contents, links that lead
somewhere in the repository, sources cited rather than pointed at files a clone does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mnist_lab.config.schema import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    headings = [
        line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")
    ]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_readme_is_short_and_starts_with_its_contents_and_first_hour():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Contents", "## Your first hour"]
    first_hour = text.split("## Your first hour")[1].split("\n## ")[0]
    for command in ("python3 -m venv .venv", "python experiments/run.py\n", "python -m pytest -q"):
        assert command in first_hour


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_file_and_heading_of_the_repository(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists() and linked.is_relative_to(REPO_ROOT), (page.name, target)
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), (page.name, target)


def test_sources_are_cited_not_pointed_at_outside_the_repository():
    texts = [
        *PAGES,
        *(REPO_ROOT / "conf").rglob("*.yaml"),
        *(REPO_ROOT / "mnist_lab").rglob("*.py"),
    ]
    for path in texts:
        assert "shared/seeds" not in path.read_text(), path
