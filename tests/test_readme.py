"""The README's reference is what `--help` says, and the README shows the two commands."""

from __future__ import annotations

from pathlib import Path

from envoy_lifecycle.reference import render, splice

README = Path(__file__).resolve().parent.parent / "README.md"


def test_reference_matches_help() -> None:
    text = README.read_text()
    assert splice(text, render()) == text, "README reference is stale: run `make readme`"


def test_readme_shows_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text
