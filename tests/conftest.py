"""Shared fixtures. Tests run with one torch thread (2-core machines: two busy threads per process are ~80x slower)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPARSEBERT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"benchmark data missing in CI: {path}")
        pytest.skip(f"benchmark data not found: {path} (set SPARSEBERT_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real GLUE/SQuAD/WikiText files). Skips outside CI when absent; fails in CI."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def wikitext2_dir(shared_data) -> Path:
    return _need(shared_data / "wikitext-2-raw")


@pytest.fixture(scope="session")
def tok():
    """The embedded MiniLM's tokenizer (bert-base-uncased's vocabulary)."""
    from sparsebert.models.loading import load_tokenizer

    return load_tokenizer("embedded-minilm")


@pytest.fixture(scope="session")
def bert_tok(tok):
    """The same tokenizer under the name the text-pipeline tests use."""
    return tok


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random 2-layer BERT (hidden 32) with an MLM head and a pooler, as a local HF dir."""
    from sparsebert.models.loading import tiny_model_dir

    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny"), "bert", hidden=32, layers=2))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module (token auth off: nothing listens for other machines)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
