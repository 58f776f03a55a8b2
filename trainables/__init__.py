"""Thin Ray Tune wrappers over the core package: one trainable per stage. The only package that imports Ray Tune
besides run_search.py. Each reports through ``ray.tune.report`` (with a checkpoint) and resumes from
``ray.tune.get_checkpoint()``; each returns None."""

from .evaluate import evaluate_trainable
from .find import find_trainable
from .transfer import transfer_trainable

TRAINABLES = {"find": find_trainable, "transfer": transfer_trainable, "evaluate": evaluate_trainable}

__all__ = ["TRAINABLES", "evaluate_trainable", "find_trainable", "transfer_trainable"]
