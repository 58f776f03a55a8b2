"""Thin trainables over the core package: one per stage. Each reports through a session (:mod:`.session`): Ray
Tune's by default (``ray.tune.report`` with a checkpoint, resuming from ``ray.tune.get_checkpoint()``), or a trial
directory's under the local executor; each returns None. Ray is imported only by the Tune session, when called."""

from .common import stop_deterministic_retries
from .evaluate import evaluate_trainable
from .find import find_trainable
from .transfer import transfer_trainable

#: a deterministic error (TicketError, TaskDataError) is recorded in the trial dir: a retry re-raises it at once
TRAINABLES = {k: stop_deterministic_retries(v) for k, v in
              {"find": find_trainable, "transfer": transfer_trainable, "evaluate": evaluate_trainable}.items()}

__all__ = ["TRAINABLES", "evaluate_trainable", "find_trainable", "transfer_trainable"]
