"""The README's and the docs' numbers come from runs: every generated section is filled and closed, every figure
exists, every link to a document resolves, and the README stays a five-minute read."""

from __future__ import annotations

import re

from conftest import REPO

README = (REPO / "README.md").read_text()
DOCS = {p: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}


def test_the_first_lines_hold_the_two_commands():
    head = README.splitlines()[:6]
    assert any(line.startswith("make demo") for line in head) and any(line.startswith("make test") for line in head)


def test_every_generated_section_is_filled_and_closed():
    seen = set()
    for path, text in DOCS.items():
        for name in re.findall(r"<!-- generated:([\w-]+) -->", text):
            assert name not in seen, f"section {name} is generated in two documents"
            seen.add(name)
            body = text.split(f"<!-- generated:{name} -->", 1)[1]
            assert f"<!-- /generated:{name} -->" in body, (path.name, name)
            assert body.split(f"<!-- /generated:{name} -->", 1)[0].strip(), f"{path.name}: section {name} is empty"
    assert {"demo", "paper_small", "bench_padding", "ticket_quality_reference", "bench_gpu", "driver_load"} <= seen
    assert "paper_small" in re.findall(r"<!-- generated:([\w-]+) -->", README)  # the results table is up front


def test_generated_figures_and_linked_documents_exist():
    for path, text in DOCS.items():
        for link in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", text):
            if link.startswith("http"):
                continue
            assert (path.parent / link).exists(), f"{path.name}: {link}"


def test_the_readme_is_short_and_links_every_document():
    assert len(README.splitlines()) < 200
    for doc in (REPO / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in README, doc.name


def test_the_space_key_reference_is_generated_and_current():
    from search_spaces.loader import TOP_KEYS
    from search_spaces.reference import _top_keys, render

    assert {k for k, _, _ in _top_keys()} == set(TOP_KEYS)  # the loader's table documents every top-level key
    assert (REPO / "docs" / "spaces.md").read_text() == render(), "run: python -m search_spaces.reference > docs/spaces.md"


def test_the_space_the_readme_explains_is_valid(tmp_path):
    from search_spaces.loader import load_space

    block = README.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_space.yaml").write_text(block)
    space = load_space(tmp_path / "readme_space.yaml")
    assert space.stage == "transfer" and len(space.variants) == 3
