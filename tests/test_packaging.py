"""pyproject.toml and environment.yml declare the same pinned dependencies; the layout the user asked for exists."""

from __future__ import annotations

import tomllib

import yaml

from conftest import REPO


def _norm(req: str) -> str:
    return req.replace(" ", "").lower()


def test_pyproject_and_environment_yml_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_norm(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    in_env = {_norm(r) for r in pip_block if not r.startswith("-e")}
    assert declared == in_env
    assert "torch==2.13.0" in declared  # an unpinned torch pulls GBs of CUDA wheels


def test_layout():
    for name in ["search_spaces", "trainables", "analysis", "tests", "sparsebert", "benchmarks"]:
        assert (REPO / name).is_dir(), name
    for name in ["run_search.py", "environment.yml", "README.md", "Makefile", ".ci/run"]:
        assert (REPO / name).is_file(), name
