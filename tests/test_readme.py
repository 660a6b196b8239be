"""The command reference is what `--help` says, the README shows the two commands, and every
document the README links to exists."""

from __future__ import annotations

import re
from pathlib import Path

from envoy_lifecycle.reference import render, splice

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference.md"


def test_reference_matches_help() -> None:
    text = REFERENCE.read_text()
    assert splice(text, render()) == text, "docs/reference.md is stale: run `make readme`"


def test_readme_shows_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text


def test_every_linked_document_exists() -> None:
    links = re.findall(r"\]\(([^)#]+\.md)\)", README.read_text())
    assert links, "the README links to its documents"
    for link in links:
        assert (ROOT / link).is_file(), link
