"""Small builders shared by tests (tiny random models; seconds to make)."""

from __future__ import annotations

from pathlib import Path

from sparsebert.models import tiny_model_dir


def tiny_dir(tmp_path_factory, model_type: str = "bert", **kw) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp(f"tiny-{model_type}"), model_type, **kw)
