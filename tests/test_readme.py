"""The README's numbers come from runs: every generated section is filled, and its generator exists."""

from __future__ import annotations

import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_first_lines_hold_the_two_commands():
    head = README.splitlines()[:6]
    assert any(line.startswith("make demo") for line in head) and any(line.startswith("make test") for line in head)


def test_every_generated_section_is_filled_and_closed():
    names = re.findall(r"<!-- generated:([\w-]+) -->", README)
    assert {"demo", "paper_small", "bench_padding", "ticket_quality_reference"} <= set(names)
    for name in names:
        body = README.split(f"<!-- generated:{name} -->", 1)[1]
        assert f"<!-- /generated:{name} -->" in body, name
        assert body.split(f"<!-- /generated:{name} -->", 1)[0].strip(), f"generated section {name} is empty"


def test_generated_figures_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (REPO / path).is_file(), path
