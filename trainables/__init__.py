"""Thin trainables over the core package: one per stage. Each reports through a session (:mod:`.session`): Ray
Tune's by default (``ray.tune.report`` with a checkpoint, resuming from ``ray.tune.get_checkpoint()``), or a trial
directory's under the local executor; each returns None. Ray is imported only by the Tune session, when called."""

from .evaluate import evaluate_trainable
from .find import find_trainable
from .transfer import transfer_trainable

TRAINABLES = {"find": find_trainable, "transfer": transfer_trainable, "evaluate": evaluate_trainable}

__all__ = ["TRAINABLES", "evaluate_trainable", "find_trainable", "transfer_trainable"]
