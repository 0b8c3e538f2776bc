"""The documentation: every page the project promises, links that resolve, a configuration
reference that is exactly what the argument parser says."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

PAGES = ["quickstart", "configuration", "semantics", "architecture", "benchmarks", "troubleshooting", "coming-from"]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_configuration_reference_is_generated_from_the_parser():
    res = subprocess.run([sys.executable, ROOT / "scripts/configuration-reference", "--check"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_configuration_reference_matches_help():
    """Each option of 's3fuse --help' has its entry, with its help text, and no entry is for an option that is gone."""
    res = subprocess.run([sys.executable, "-m", "s3fuse", "--help"], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "10000", "PATH": "/usr/bin:/bin"}, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0
    options_part = res.stdout.split("options:\n", 1)[1]  # after the usage and the positional arguments
    in_help: dict[str, str] = {}
    current = None
    for line in options_part.splitlines():
        if m := re.match(r"^  (-\w, )?(--[a-z-]+|-o)\b\S*(?: \S+)?(?:  +(\S.*))?$", line):
            current = m.group(2)
            in_help[current] = m.group(3) or ""
        elif line.startswith("    ") and current:
            in_help[current] += " " + line.strip()
        else:
            current = None  # a blank line or a group's title
    in_help = {option: " ".join(text.split()) for option, text in in_help.items()}
    documented = (ROOT / "docs/configuration.md").read_text()
    headings = set(re.findall(r"^### `(?:-\w, )?(--[a-z-]+|-o)\b", documented, re.MULTILINE))
    assert set(in_help) - {"--help", "--version"} == headings
    for option, text in in_help.items():
        if option not in ("--help", "--version"):
            assert text in documented, option


@pytest.mark.parametrize("page", PAGES)
def test_page_exists_and_readme_links_it(page):
    path = ROOT / "docs" / f"{page}.md"
    assert path.read_text().startswith("# ")
    assert f"(docs/{page}.md)" in (ROOT / "README.md").read_text()


def test_relative_links_resolve():
    broken = []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target, _ in LINK.findall(doc.read_text()):
            if "://" not in target and not target.startswith("mailto:") and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken
